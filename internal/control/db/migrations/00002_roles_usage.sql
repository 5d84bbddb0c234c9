-- API keys get a role like users have; hosts record the usage their agent
-- last reported, which placement needs.

-- +goose Up
ALTER TABLE api_keys ADD COLUMN role text NOT NULL DEFAULT 'member'
    CHECK (role IN ('admin', 'member'));
ALTER TABLE hosts ADD COLUMN vcpus_used integer NOT NULL DEFAULT 0 CHECK (vcpus_used >= 0);
ALTER TABLE hosts ADD COLUMN memory_mib_used bigint NOT NULL DEFAULT 0 CHECK (memory_mib_used >= 0);
ALTER TABLE hosts ADD COLUMN sandboxes integer NOT NULL DEFAULT 0 CHECK (sandboxes >= 0);
CREATE INDEX sandboxes_live_idx ON sandboxes (state) WHERE state NOT IN ('stopped', 'dead');
CREATE INDEX templates_team_idx ON templates (team_id);

-- +goose Down
DROP INDEX templates_team_idx;
DROP INDEX sandboxes_live_idx;
ALTER TABLE hosts DROP COLUMN sandboxes;
ALTER TABLE hosts DROP COLUMN memory_mib_used;
ALTER TABLE hosts DROP COLUMN vcpus_used;
ALTER TABLE api_keys DROP COLUMN role;
