package client

import (
	"context"
	"net/http"
)

// ListTemplates returns the templates sandboxes can be created from: the
// base images and the team's snapshots.
func (c *Client) ListTemplates(ctx context.Context) ([]Template, error) {
	var out struct {
		Templates []Template `json:"templates"`
	}
	if err := c.do(ctx, http.MethodGet, "/v1/templates", nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Templates, nil
}

// CreateSnapshot snapshots a sandbox into a template called name.
func (c *Client) CreateSnapshot(ctx context.Context, sandboxID, name string) (*Template, error) {
	in := struct {
		SandboxID string `json:"sandbox_id"`
		Name      string `json:"name"`
	}{sandboxID, name}
	var t Template
	if err := c.do(ctx, http.MethodPost, "/v1/snapshots", nil, in, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// ListSnapshots returns the team's snapshot templates.
func (c *Client) ListSnapshots(ctx context.Context) ([]Template, error) {
	var out struct {
		Snapshots []Template `json:"snapshots"`
	}
	if err := c.do(ctx, http.MethodGet, "/v1/snapshots", nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Snapshots, nil
}

// DeleteSnapshot deletes the snapshot template called name.
func (c *Client) DeleteSnapshot(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/snapshots/"+seg(name), nil, nil, nil)
}

// Login exchanges an email and password for a session token (12 h). It
// needs no credential; use the token with [WithBearer].
func (c *Client) Login(ctx context.Context, email, password string) (*Session, error) {
	in := struct {
		Email    string `json:"email"`
		Password string `json:"password"`
	}{email, password}
	var s Session
	if err := c.do(ctx, http.MethodPost, "/v1/auth/login", nil, in, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// Me returns the team, role and user or API key the credential speaks for.
func (c *Client) Me(ctx context.Context) (*Identity, error) {
	var id Identity
	if err := c.do(ctx, http.MethodGet, "/v1/me", nil, nil, &id); err != nil {
		return nil, err
	}
	return &id, nil
}

// ListAPIKeys returns the team's API keys (never the keys themselves).
func (c *Client) ListAPIKeys(ctx context.Context) ([]APIKey, error) {
	var out struct {
		APIKeys []APIKey `json:"api_keys"`
	}
	if err := c.do(ctx, http.MethodGet, "/v1/api-keys", nil, nil, &out); err != nil {
		return nil, err
	}
	return out.APIKeys, nil
}

// CreateAPIKey creates an API key with a role ("member" or "admin"; "" is
// the server's default). The answer's Key is shown only here.
func (c *Client) CreateAPIKey(ctx context.Context, name, role string) (*APIKeyCreated, error) {
	in := struct {
		Name string `json:"name"`
		Role string `json:"role,omitempty"`
	}{name, role}
	var k APIKeyCreated
	if err := c.do(ctx, http.MethodPost, "/v1/api-keys", nil, in, &k); err != nil {
		return nil, err
	}
	return &k, nil
}

// RevokeAPIKey revokes an API key; it stops working at once.
func (c *Client) RevokeAPIKey(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/v1/api-keys/"+seg(id), nil, nil, nil)
}

// ListUsers returns the team's users.
func (c *Client) ListUsers(ctx context.Context) ([]User, error) {
	var out struct {
		Users []User `json:"users"`
	}
	if err := c.do(ctx, http.MethodGet, "/v1/users", nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Users, nil
}

// CreateUser creates a user (admin only).
func (c *Client) CreateUser(ctx context.Context, req CreateUserRequest) (*User, error) {
	var u User
	if err := c.do(ctx, http.MethodPost, "/v1/users", nil, req, &u); err != nil {
		return nil, err
	}
	return &u, nil
}

// ListTeams returns every team (admin only).
func (c *Client) ListTeams(ctx context.Context) ([]Team, error) {
	var out struct {
		Teams []Team `json:"teams"`
	}
	if err := c.do(ctx, http.MethodGet, "/v1/teams", nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Teams, nil
}

// CreateTeam creates a team (admin only).
func (c *Client) CreateTeam(ctx context.Context, name string) (*Team, error) {
	in := struct {
		Name string `json:"name"`
	}{name}
	var t Team
	if err := c.do(ctx, http.MethodPost, "/v1/teams", nil, in, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// ListHosts returns the registered hosts (admin only).
func (c *Client) ListHosts(ctx context.Context) ([]Host, error) {
	var out struct {
		Hosts []Host `json:"hosts"`
	}
	if err := c.do(ctx, http.MethodGet, "/v1/hosts", nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Hosts, nil
}

// RegisterHost registers the host agent at address, e.g.
// "http://10.0.0.5:5008" (admin only). The server checks that the agent
// answers first.
func (c *Client) RegisterHost(ctx context.Context, address string) (*Host, error) {
	in := struct {
		Address string `json:"address"`
	}{address}
	var h Host
	if err := c.do(ctx, http.MethodPost, "/v1/hosts", nil, in, &h); err != nil {
		return nil, err
	}
	return &h, nil
}

// RemoveHost removes a host without live sandboxes (admin only).
func (c *Client) RemoveHost(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/v1/hosts/"+seg(id), nil, nil, nil)
}
