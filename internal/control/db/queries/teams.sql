-- name: CreateTeam :one
INSERT INTO teams (name) VALUES (@name)
RETURNING *;

-- name: GetTeam :one
SELECT * FROM teams WHERE id = @id;

-- name: ListTeams :many
SELECT * FROM teams ORDER BY created_at, id;
