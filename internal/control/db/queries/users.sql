-- name: CreateUser :one
INSERT INTO users (team_id, email, password_hash, role)
VALUES (@team_id, @email, @password_hash, @role)
RETURNING *;

-- name: GetUserByEmail :one
SELECT * FROM users WHERE lower(email) = lower(@email);

-- name: GetUser :one
SELECT * FROM users WHERE id = @id;

-- name: ListUsers :many
SELECT * FROM users
WHERE team_id = @team_id
ORDER BY created_at, id;
