-- name: CreateSandbox :one
INSERT INTO sandboxes (id, team_id, host_id, template, state, vcpus, memory_mib, metadata, egress, expires_at)
VALUES (@id, @team_id, sqlc.narg('host_id'), @template, @state, @vcpus, @memory_mib, @metadata, @egress, sqlc.narg('expires_at'))
RETURNING *;

-- name: GetSandbox :one
SELECT * FROM sandboxes WHERE id = @id;

-- ListSandboxes pages through a team's sandboxes newest first. The cursor
-- is the (created_at, id) of the last row of the previous page.
-- name: ListSandboxes :many
SELECT * FROM sandboxes
WHERE team_id = @team_id
  AND (sqlc.narg('state')::text IS NULL OR state = sqlc.narg('state')::text)
  AND (sqlc.narg('state')::text IS NOT NULL OR NOT @live_only::boolean OR state NOT IN ('stopped', 'dead'))
  AND metadata @> @metadata::jsonb
  AND (sqlc.narg('after_created_at')::timestamptz IS NULL
       OR (created_at, id) < (sqlc.narg('after_created_at')::timestamptz, sqlc.narg('after_id')::text))
ORDER BY created_at DESC, id DESC
LIMIT @max_rows;

-- UpdateSandboxState moves a sandbox to a state, only from from_state when
-- that is given. Entering stopped or dead records ended_at.
-- name: UpdateSandboxState :one
UPDATE sandboxes SET
    state      = @state,
    reason     = @reason,
    updated_at = now(),
    ended_at   = CASE WHEN @state::text IN ('stopped', 'dead') THEN coalesce(ended_at, now()) ELSE ended_at END
WHERE id = @id
  AND (sqlc.narg('from_state')::text IS NULL OR state = sqlc.narg('from_state')::text)
RETURNING *;

-- name: ListLiveSandboxes :many
SELECT * FROM sandboxes
WHERE state NOT IN ('stopped', 'dead')
ORDER BY id;

-- name: CountLiveSandboxesOnHost :one
SELECT count(*) FROM sandboxes
WHERE host_id = @host_id AND state NOT IN ('stopped', 'dead');

-- name: SetSandboxExpiry :one
UPDATE sandboxes SET expires_at = sqlc.narg('expires_at'), updated_at = now()
WHERE id = @id
RETURNING *;

-- LiveUsageByHost sums the vCPUs and memory of each host's live sandboxes,
-- paused ones left out (they hold files, not VMs): what placement counts
-- as taken.
-- name: LiveUsageByHost :many
SELECT host_id::text AS host_id, sum(vcpus)::bigint AS vcpus, sum(memory_mib)::bigint AS memory_mib
FROM sandboxes
WHERE host_id IS NOT NULL AND state NOT IN ('stopped', 'dead', 'paused')
GROUP BY host_id;
