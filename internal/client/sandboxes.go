package client

import (
	"context"
	"fmt"
	"iter"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// seconds converts d to whole seconds for the API, rounding up so a
// positive duration never becomes 0.
func seconds(d time.Duration) int {
	return int((d + time.Second - 1) / time.Second)
}

// CreateSandbox creates a sandbox and returns it (usually "starting" or
// already "running").
func (c *Client) CreateSandbox(ctx context.Context, req CreateSandboxRequest) (*Sandbox, error) {
	var sb Sandbox
	if err := c.do(ctx, http.MethodPost, "/v1/sandboxes", nil, req, &sb); err != nil {
		return nil, err
	}
	return &sb, nil
}

// ListSandboxes returns one page of the team's sandboxes, newest first, and
// the cursor of the next page ("" on the last page).
func (c *Client) ListSandboxes(ctx context.Context, f SandboxFilter) ([]Sandbox, string, error) {
	q := url.Values{}
	if f.State != "" {
		q.Set("state", f.State)
	}
	for k, v := range f.Metadata {
		q.Set("metadata."+k, v)
	}
	if f.Limit != 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	if f.Cursor != "" {
		q.Set("cursor", f.Cursor)
	}
	var page struct {
		Sandboxes  []Sandbox `json:"sandboxes"`
		NextCursor string    `json:"next_cursor"`
	}
	if err := c.do(ctx, http.MethodGet, "/v1/sandboxes", q, nil, &page); err != nil {
		return nil, "", err
	}
	return page.Sandboxes, page.NextCursor, nil
}

// AllSandboxes iterates over every sandbox f selects, fetching page after
// page from f.Cursor on. An error ends the iteration after being yielded.
func (c *Client) AllSandboxes(ctx context.Context, f SandboxFilter) iter.Seq2[Sandbox, error] {
	return func(yield func(Sandbox, error) bool) {
		seen := map[string]bool{}
		for {
			page, next, err := c.ListSandboxes(ctx, f)
			if err != nil {
				yield(Sandbox{}, err)
				return
			}
			for _, sb := range page {
				if !yield(sb, nil) {
					return
				}
			}
			if next == "" {
				return
			}
			if seen[next] {
				yield(Sandbox{}, fmt.Errorf("GET /v1/sandboxes: the server repeated cursor %q", next))
				return
			}
			seen[next] = true
			f.Cursor = next
		}
	}
}

// GetSandbox returns one sandbox.
func (c *Client) GetSandbox(ctx context.Context, id string) (*Sandbox, error) {
	var sb Sandbox
	if err := c.do(ctx, http.MethodGet, "/v1/sandboxes/"+seg(id), nil, nil, &sb); err != nil {
		return nil, err
	}
	return &sb, nil
}

// KillSandbox destroys a sandbox's VM; the sandbox is then "stopped" with
// reason "killed".
func (c *Client) KillSandbox(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/v1/sandboxes/"+seg(id), nil, nil, nil)
}

// sandboxPost posts in to a sandbox's sub-route and decodes the sandbox.
func (c *Client) sandboxPost(ctx context.Context, id, sub string, in any) (*Sandbox, error) {
	var sb Sandbox
	if err := c.do(ctx, http.MethodPost, "/v1/sandboxes/"+seg(id)+"/"+sub, nil, in, &sb); err != nil {
		return nil, err
	}
	return &sb, nil
}

// SetTimeout makes the sandbox expire d from now (whole seconds, rounded
// up), earlier or later than before.
func (c *Client) SetTimeout(ctx context.Context, id string, d time.Duration) (*Sandbox, error) {
	return c.sandboxPost(ctx, id, "timeout", map[string]int{"timeout_seconds": seconds(d)})
}

// Refresh makes the sandbox live at least d from now; it never shortens the
// sandbox's life.
func (c *Client) Refresh(ctx context.Context, id string, d time.Duration) (*Sandbox, error) {
	return c.sandboxPost(ctx, id, "refresh", map[string]int{"duration_seconds": seconds(d)})
}

// Pause snapshots a running sandbox's memory and stops its VM.
func (c *Client) Pause(ctx context.Context, id string) (*Sandbox, error) {
	return c.sandboxPost(ctx, id, "pause", nil)
}

// Resume restarts a paused sandbox. timeout > 0 also sets its expiry to
// that long from now; 0 keeps the server's rule.
func (c *Client) Resume(ctx context.Context, id string, timeout time.Duration) (*Sandbox, error) {
	var in any
	if timeout > 0 {
		in = map[string]int{"timeout_seconds": seconds(timeout)}
	}
	return c.sandboxPost(ctx, id, "resume", in)
}

// Metrics returns a running sandbox's latest resource sample. A sandbox
// sampled not yet is errdefs.ErrUnavailable; try again in a few seconds.
func (c *Client) Metrics(ctx context.Context, id string) (*Metrics, error) {
	var m Metrics
	if err := c.do(ctx, http.MethodGet, "/v1/sandboxes/"+seg(id)+"/metrics", nil, nil, &m); err != nil {
		return nil, err
	}
	return &m, nil
}
