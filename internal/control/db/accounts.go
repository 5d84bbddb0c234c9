package db

import (
	"context"
	"fmt"
	"time"

	"wrenn.dev/wrenn/internal/control/db/dbq"
)

// GetTeam loads team id.
func (d *DB) GetTeam(ctx context.Context, id string) (Team, error) {
	row, err := d.q.GetTeam(ctx, d.pool, id)
	if err != nil {
		return Team{}, interpret(err, fmt.Sprintf("team %q", id))
	}
	return Team(row), nil
}

// ListTeams returns every team, oldest first.
func (d *DB) ListTeams(ctx context.Context) ([]Team, error) {
	rows, err := d.q.ListTeams(ctx, d.pool)
	if err != nil {
		return nil, interpret(err, "teams")
	}
	out := make([]Team, len(rows))
	for i, r := range rows {
		out[i] = Team(r)
	}
	return out, nil
}

// User is a person who signs in to a team.
type User struct {
	ID     string
	TeamID string
	Email  string
	// PasswordHash is the bcrypt hash of the password.
	PasswordHash string
	// Role is "admin" or "member".
	Role      string
	CreatedAt time.Time
}

// CreateUser stores a user. An email already in use (in any case) is
// ErrAlreadyExists; an unknown team ErrFailedPrecondition.
func (d *DB) CreateUser(ctx context.Context, u User) (User, error) {
	row, err := d.q.CreateUser(ctx, d.pool, dbq.CreateUserParams{
		TeamID: u.TeamID, Email: u.Email, PasswordHash: u.PasswordHash, Role: u.Role,
	})
	if err != nil {
		return User{}, interpret(err, fmt.Sprintf("user %q", u.Email))
	}
	return User(row), nil
}

// GetUserByEmail finds a user by email, ignoring case.
func (d *DB) GetUserByEmail(ctx context.Context, email string) (User, error) {
	row, err := d.q.GetUserByEmail(ctx, d.pool, email)
	if err != nil {
		return User{}, interpret(err, "user")
	}
	return User(row), nil
}

// GetUser loads user id.
func (d *DB) GetUser(ctx context.Context, id string) (User, error) {
	row, err := d.q.GetUser(ctx, d.pool, id)
	if err != nil {
		return User{}, interpret(err, fmt.Sprintf("user %q", id))
	}
	return User(row), nil
}

// ListUsers returns a team's users, oldest first.
func (d *DB) ListUsers(ctx context.Context, teamID string) ([]User, error) {
	rows, err := d.q.ListUsers(ctx, d.pool, teamID)
	if err != nil {
		return nil, interpret(err, "users")
	}
	out := make([]User, len(rows))
	for i, r := range rows {
		out[i] = User(r)
	}
	return out, nil
}
