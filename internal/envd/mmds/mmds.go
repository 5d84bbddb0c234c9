// Package mmds reads the sandbox's metadata from Firecracker's microVM
// metadata service (MMDS) and publishes it inside the guest.
//
// MMDS is used in its V2 mode, which, like AWS IMDSv2, requires a session
// token: PUT /latest/api/token with an X-metadata-token-ttl-seconds header
// returns a token, and every GET must carry it in X-metadata-token. The
// host writes one JSON object at the root of the store: the sandbox id
// (instanceID), template id (envID), the log collector address and the
// hex SHA-256 of the envd access token (accessTokenHash).
package mmds

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"wrenn.dev/wrenn/internal/errdefs"
)

// DefaultBaseURL is the link-local address Firecracker serves MMDS on.
const DefaultBaseURL = "http://169.254.169.254"

// Header names and limits of the token flow.
const (
	HeaderTokenTTL = "X-metadata-token-ttl-seconds"
	HeaderToken    = "X-metadata-token"

	tokenTTLSeconds = 60
	maxBody         = 64 << 10
	defaultTimeout  = 5 * time.Second
)

// Log keys.
const (
	logKeyErr     = "err"
	logKeyAttempt = "attempt"
)

// Metadata is what the host puts into MMDS for a sandbox.
type Metadata struct {
	SandboxID       string `json:"instanceID"`
	TemplateID      string `json:"envID"`
	Address         string `json:"address"`         // log collector
	AccessTokenHash string `json:"accessTokenHash"` // hex sha256 of the envd access token
}

// Client fetches metadata. The zero value talks to DefaultBaseURL.
type Client struct {
	// BaseURL is the MMDS address; default DefaultBaseURL.
	BaseURL string
	// HTTP is the client to use; default one that ignores proxy settings,
	// keeps no idle connections and times out after 5 s.
	HTTP *http.Client
	// Logger receives Poll's retry logs; default discards.
	Logger *slog.Logger
}

func (c *Client) baseURL() string {
	if c.BaseURL == "" {
		return DefaultBaseURL
	}
	return strings.TrimRight(c.BaseURL, "/")
}

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	// MMDS is link-local: never go through a proxy, and keep no
	// connections (and so no goroutines) between calls.
	return &http.Client{
		Timeout: defaultTimeout,
		Transport: &http.Transport{
			Proxy:             nil,
			DialContext:       (&net.Dialer{Timeout: defaultTimeout}).DialContext,
			DisableKeepAlives: true,
		},
	}
}

func (c *Client) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Logger
}

// Fetch gets a session token and reads the metadata with it. Metadata
// without a sandbox id is not ready yet and is errdefs.ErrUnavailable.
func (c *Client) Fetch(ctx context.Context) (*Metadata, error) {
	hc := c.httpClient()
	token, err := c.token(ctx, hc)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.baseURL()+"/", nil)
	if err != nil {
		return nil, fmt.Errorf("mmds: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set(HeaderToken, token)
	body, err := do(hc, req)
	if err != nil {
		return nil, err
	}
	var md Metadata
	if err := json.Unmarshal(body, &md); err != nil {
		return nil, fmt.Errorf("mmds: decode metadata: %w", err)
	}
	if md.SandboxID == "" {
		return nil, errdefs.Unavailable("mmds: metadata has no instanceID yet")
	}
	return &md, nil
}

func (c *Client) token(ctx context.Context, hc *http.Client) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, c.baseURL()+"/latest/api/token", nil)
	if err != nil {
		return "", fmt.Errorf("mmds: %w", err)
	}
	req.Header.Set(HeaderTokenTTL, strconv.Itoa(tokenTTLSeconds))
	body, err := do(hc, req)
	if err != nil {
		return "", err
	}
	token := strings.TrimSpace(string(body))
	if token == "" {
		return "", errdefs.Unavailable("mmds: empty session token")
	}
	return token, nil
}

// do sends req and returns the body of a 2xx answer.
func do(hc *http.Client, req *http.Request) ([]byte, error) {
	what := req.Method + " " + req.URL.Path
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("mmds: %s: %w", what, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, fmt.Errorf("mmds: %s: read body: %w", what, err)
	}
	if resp.StatusCode/100 != 2 {
		msg := strings.TrimSpace(string(body))
		if len(msg) > 200 {
			msg = msg[:200]
		}
		class := errdefs.ErrUnavailable
		if resp.StatusCode == http.StatusUnauthorized {
			class = errdefs.ErrUnauthenticated
		}
		return nil, fmt.Errorf("mmds: %s: status %d %q: %w", what, resp.StatusCode, msg, class)
	}
	return body, nil
}

// Poll calls Fetch every interval until it succeeds or ctx is done, in
// which case it returns ctx's error joined with the last error Fetch gave
// before ctx ended (the reason metadata was not there).
func (c *Client) Poll(ctx context.Context, every time.Duration) (*Metadata, error) {
	if every <= 0 {
		every = 100 * time.Millisecond
	}
	log := c.logger()
	t := time.NewTicker(every)
	defer t.Stop()
	var last error
	for attempt := 1; ; attempt++ {
		md, err := c.Fetch(ctx)
		if err == nil {
			return md, nil
		}
		if ctx.Err() == nil || last == nil {
			last = err
		}
		log.Debug("mmds not ready", logKeyAttempt, attempt, logKeyErr, err)
		select {
		case <-ctx.Done():
			return nil, errors.Join(ctx.Err(), last)
		case <-t.C:
		}
	}
}

// Publish writes the ids as files for processes in the guest to read and
// returns the environment variables every process should get. Under dir
// (envd uses "/run") it writes wrenn/.WRENN_SANDBOX_ID,
// wrenn/.WRENN_TEMPLATE_ID, and E2B's e2b/.E2B_SANDBOX_ID and
// e2b/.E2B_TEMPLATE_ID. The environment is E2B_SANDBOX=true,
// E2B_SANDBOX_ID, E2B_TEMPLATE_ID, WRENN_SANDBOX_ID and WRENN_TEMPLATE_ID.
// On a write error the environment is still returned, with the error.
func Publish(md *Metadata, dir string) (map[string]string, error) {
	if md == nil {
		return nil, errdefs.InvalidArgument("mmds: no metadata to publish")
	}
	env := map[string]string{
		"E2B_SANDBOX":       "true",
		"E2B_SANDBOX_ID":    md.SandboxID,
		"E2B_TEMPLATE_ID":   md.TemplateID,
		"WRENN_SANDBOX_ID":  md.SandboxID,
		"WRENN_TEMPLATE_ID": md.TemplateID,
	}
	files := []struct{ sub, name, value string }{
		{"wrenn", ".WRENN_SANDBOX_ID", md.SandboxID},
		{"wrenn", ".WRENN_TEMPLATE_ID", md.TemplateID},
		{"e2b", ".E2B_SANDBOX_ID", md.SandboxID},
		{"e2b", ".E2B_TEMPLATE_ID", md.TemplateID},
	}
	var errs []error
	for _, f := range files {
		if err := writeFileAtomic(filepath.Join(dir, f.sub), f.name, f.value); err != nil {
			errs = append(errs, err)
		}
	}
	return env, errors.Join(errs...)
}

// writeFileAtomic replaces dir/name with value so that readers see the old
// or the new content, never a partial one.
func writeFileAtomic(dir, name, value string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("mmds: publish: %w", err)
	}
	tmp, err := os.CreateTemp(dir, name+".tmp*")
	if err != nil {
		return fmt.Errorf("mmds: publish: %w", err)
	}
	_, werr := tmp.WriteString(value)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr, os.Chmod(tmp.Name(), 0o644)); err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("mmds: publish %s: %w", filepath.Join(dir, name), err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("mmds: publish: %w", err)
	}
	return nil
}
