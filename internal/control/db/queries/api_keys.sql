-- name: CreateAPIKey :one
INSERT INTO api_keys (team_id, name, prefix, hash, role)
VALUES (@team_id, @name, @prefix, @hash, @role)
RETURNING *;

-- LookupAPIKeyByHash finds a key that has not been revoked.
-- name: LookupAPIKeyByHash :one
SELECT * FROM api_keys
WHERE hash = @hash AND revoked_at IS NULL;

-- TouchAPIKey records a use, at most once a minute per key so that every
-- request does not write.
-- name: TouchAPIKey :exec
UPDATE api_keys SET last_used_at = now()
WHERE id = @id AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute');

-- name: RevokeAPIKey :execrows
UPDATE api_keys SET revoked_at = now()
WHERE id = @id AND team_id = @team_id AND revoked_at IS NULL;

-- name: ListAPIKeys :many
SELECT * FROM api_keys
WHERE team_id = @team_id
ORDER BY created_at DESC, id DESC;
