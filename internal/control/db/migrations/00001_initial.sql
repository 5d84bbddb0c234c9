-- The control plane's first schema: teams and their users and API keys,
-- the hosts that run sandboxes, sandboxes, and templates (named snapshots).

-- +goose Up
CREATE TABLE teams (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name       text NOT NULL CHECK (name <> ''),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    team_id       uuid NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    email         text NOT NULL CHECK (email <> ''),
    password_hash text NOT NULL,
    role          text NOT NULL CHECK (role IN ('admin', 'member')),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE INDEX users_team_id_idx ON users (team_id);

-- An API key is stored as the SHA-256 of the whole key, never the key;
-- prefix is its first characters, shown so people can tell keys apart.
CREATE TABLE api_keys (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    team_id      uuid NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    name         text NOT NULL,
    prefix       text NOT NULL,
    hash         bytea NOT NULL UNIQUE CHECK (octet_length(hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_team_id_idx ON api_keys (team_id);

CREATE TABLE hosts (
    id                  text PRIMARY KEY,
    address             text NOT NULL,
    driver              text NOT NULL,
    accelerator         text NOT NULL,
    capacity_vcpus      integer NOT NULL CHECK (capacity_vcpus >= 0),
    capacity_memory_mib bigint NOT NULL CHECK (capacity_memory_mib >= 0),
    state               text NOT NULL CHECK (state IN ('ready', 'draining', 'down')),
    last_heartbeat_at   timestamptz NOT NULL DEFAULT now(),
    created_at          timestamptz NOT NULL DEFAULT now()
);

-- States are sandbox.State's names.
CREATE TABLE sandboxes (
    id         text PRIMARY KEY,
    team_id    uuid NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    host_id    text REFERENCES hosts (id) ON DELETE SET NULL,
    template   text NOT NULL,
    state      text NOT NULL CHECK (state IN (
                   'starting', 'running', 'pausing', 'paused', 'resuming',
                   'stopping', 'stopped', 'dead')),
    vcpus      integer NOT NULL CHECK (vcpus > 0),
    memory_mib integer NOT NULL CHECK (memory_mib > 0),
    metadata   jsonb NOT NULL DEFAULT '{}',
    egress     boolean NOT NULL DEFAULT true,
    reason     text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    ended_at   timestamptz
);
-- Listing pages through a team's sandboxes newest first.
CREATE INDEX sandboxes_team_page_idx ON sandboxes (team_id, created_at DESC, id DESC);
CREATE INDEX sandboxes_host_live_idx ON sandboxes (host_id) WHERE state NOT IN ('stopped', 'dead');

-- A template is a named snapshot. team_id NULL means built in, for everyone.
CREATE TABLE templates (
    id                text PRIMARY KEY,
    team_id           uuid REFERENCES teams (id) ON DELETE CASCADE,
    name              text NOT NULL CHECK (name <> ''),
    vcpus             integer NOT NULL CHECK (vcpus > 0),
    memory_mib        integer NOT NULL CHECK (memory_mib > 0),
    source_sandbox_id text,
    host_id           text REFERENCES hosts (id) ON DELETE SET NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX templates_team_name_key
    ON templates (coalesce(team_id, '00000000-0000-0000-0000-000000000000'), name);

-- +goose Down
DROP TABLE templates;
DROP TABLE sandboxes;
DROP TABLE hosts;
DROP TABLE api_keys;
DROP TABLE users;
DROP TABLE teams;
