-- name: CreateTemplate :one
INSERT INTO templates (id, team_id, name, vcpus, memory_mib, source_sandbox_id, host_id)
VALUES (@id, @team_id, @name, @vcpus, @memory_mib, sqlc.narg('source_sandbox_id'), sqlc.narg('host_id'))
RETURNING *;

-- GetTemplate finds a team's template by name, or a built-in one.
-- name: GetTemplate :one
SELECT * FROM templates
WHERE name = @name AND (team_id = @team_id OR team_id IS NULL)
ORDER BY team_id NULLS LAST
LIMIT 1;

-- name: ListTemplates :many
SELECT * FROM templates
WHERE team_id = @team_id OR team_id IS NULL
ORDER BY name;

-- name: DeleteTemplate :one
DELETE FROM templates
WHERE name = @name AND team_id = @team_id
RETURNING *;
