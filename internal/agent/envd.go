package agent

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"connectrpc.com/connect"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/errdefs/errconnect"
	"wrenn.dev/wrenn/internal/gen/filesystem/filesystemconnect"
	"wrenn.dev/wrenn/internal/gen/process/processconnect"
	"wrenn.dev/wrenn/internal/sandbox"
)

// envdClient talks to the envd of one sandbox.
type envdClient struct {
	base  string // http://host:port
	token string
	http  *http.Client
	// own is the sandbox's own transport, closed with it; nil when the
	// configured client is shared.
	own  *http.Transport
	proc processconnect.ProcessClient
	fs   filesystemconnect.FilesystemClient
}

// Header names of envd's contract.
const (
	headerAccessToken = "X-Access-Token"
	headerAuth        = "Authorization"
)

func newEnvdClient(base, token string, shared *http.Client) *envdClient {
	c := &envdClient{base: base, token: token, http: shared}
	if c.http == nil {
		c.own = newEnvdTransport()
		c.http = &http.Client{Transport: c.own}
	}
	c.proc = processconnect.NewProcessClient(c.http, base, connect.WithInterceptors(tokenInterceptor(token)))
	c.fs = filesystemconnect.NewFilesystemClient(c.http, base, connect.WithInterceptors(tokenInterceptor(token)))
	return c
}

// newEnvdTransport returns a transport speaking HTTP/2 without TLS (h2c)
// to envd: one connection per sandbox carries every stream, and dead
// connections (a VM that went away) are noticed by pings.
func newEnvdTransport() *http.Transport {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Transport{
		Protocols:           &p,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		IdleConnTimeout:     90 * time.Second,
		MaxIdleConnsPerHost: 4,
		HTTP2: &http.HTTP2Config{
			SendPingTimeout: 30 * time.Second,
			PingTimeout:     15 * time.Second,
		},
	}
}

// close drops the sandbox's idle connections. Streams in flight end when
// envd goes away.
func (c *envdClient) close() {
	if c != nil && c.own != nil {
		c.own.CloseIdleConnections()
	}
}

// tokenInterceptor adds the access token to every RPC.
type tokenInterceptor string

func (t tokenInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set(headerAccessToken, string(t))
		return next(ctx, req)
	}
}

func (t tokenInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		conn.RequestHeader().Set(headerAccessToken, string(t))
		return conn
	}
}

func (t tokenInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// basicUser is envd's way of naming the Unix user a request acts as.
func basicUser(user string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"))
}

// setUser sets the request's user on h; "" leaves envd's default user.
func setUser(h http.Header, user string) {
	if user != "" {
		h.Set(headerAuth, basicUser(user))
	}
}

func (c *envdClient) newRequest(ctx context.Context, method, path string, q url.Values, body io.Reader) (*http.Request, error) {
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set(headerAccessToken, c.token)
	return req, nil
}

// do sends req and returns the response when its status is want, or the
// error envd answered with (classified by status) otherwise.
func (c *envdClient) do(req *http.Request, want int) (*http.Response, error) {
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("envd %s %s: %w", req.Method, req.URL.Path, transportError(req.Context(), err))
	}
	if resp.StatusCode == want {
		return resp, nil
	}
	defer resp.Body.Close()
	return nil, statusError(resp)
}

// transportError classifies a failure to reach envd: the caller's context
// keeps its meaning, anything else means envd is not reachable.
func transportError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return err
	}
	return fmt.Errorf("%w: %w", errdefs.ErrUnavailable, err)
}

// envdStatusClasses maps envd's HTTP statuses to error classes; statuses
// not listed are internal errors.
var envdStatusClasses = map[int]func(string, ...any) error{
	http.StatusBadRequest:                   errdefs.InvalidArgument,
	http.StatusUnauthorized:                 errdefs.PermissionDenied,
	http.StatusForbidden:                    errdefs.PermissionDenied,
	http.StatusNotFound:                     errdefs.NotFound,
	http.StatusConflict:                     errdefs.AlreadyExists,
	http.StatusPreconditionFailed:           errdefs.FailedPrecondition,
	http.StatusRequestEntityTooLarge:        errdefs.InvalidArgument,
	http.StatusRequestedRangeNotSatisfiable: errdefs.InvalidArgument,
	http.StatusTooManyRequests:              errdefs.ResourceExhausted,
	http.StatusInsufficientStorage:          errdefs.ResourceExhausted,
	http.StatusNotImplemented:               errdefs.NotImplemented,
	http.StatusServiceUnavailable:           errdefs.Unavailable,
}

// statusError turns envd's error response into an error. envd answers
// 401 only for an unknown user once the agent's token is right, so that
// becomes PermissionDenied: the agent's caller is authenticated.
func statusError(resp *http.Response) error {
	var body struct {
		Message string `json:"message"`
	}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 8<<10))
	if json.Unmarshal(raw, &body) != nil || body.Message == "" {
		body.Message = string(bytes.TrimSpace(raw))
	}
	if ctor, ok := envdStatusClasses[resp.StatusCode]; ok {
		return ctor("envd: %s", body.Message)
	}
	return fmt.Errorf("envd answered %s: %s", resp.Status, body.Message)
}

// rpcError turns an error of an envd RPC into a classified one, never
// passing envd's *connect.Error on (errconnect.ToConnect would forward it
// as it is).
func rpcError(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	peer := errconnect.FromConnect(err)
	switch {
	case errors.Is(peer, errdefs.ErrUnauthenticated):
		return errdefs.PermissionDenied("envd: %s", peer.Error())
	case errdefs.Class(peer) != nil:
		return peer
	}
	return fmt.Errorf("envd: %v", err)
}

// health reports whether envd answers GET /health.
func (c *envdClient) health(ctx context.Context) error {
	req, err := c.newRequest(ctx, http.MethodGet, "/health", nil, nil)
	if err != nil {
		return err
	}
	resp, err := c.do(req, http.StatusNoContent)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// initRequest is the body of envd's POST /init.
type initRequest struct {
	EnvVars        map[string]string `json:"envVars,omitempty"`
	AccessToken    string            `json:"accessToken"`
	Timestamp      time.Time         `json:"timestamp"`
	DefaultUser    string            `json:"defaultUser,omitempty"`
	DefaultWorkdir string            `json:"defaultWorkdir,omitempty"`
}

// initAs sends /init authorised by token (the token envd knows now, when
// the body rotates it).
func (c *envdClient) initAs(ctx context.Context, body initRequest, token string) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := c.newRequest(ctx, http.MethodPost, "/init", nil, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set(headerAccessToken, token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.do(req, http.StatusNoContent)
	if err != nil {
		return fmt.Errorf("envd /init: %w", err)
	}
	resp.Body.Close()
	return nil
}

// envdMetrics is the body of envd's GET /metrics.
type envdMetrics struct {
	CPUCount    int     `json:"cpu_count"`
	CPUUsedPct  float64 `json:"cpu_used_pct"`
	MemTotalMiB uint64  `json:"mem_total_mib"`
	MemUsedMiB  uint64  `json:"mem_used_mib"`
	DiskUsed    uint64  `json:"disk_used"`
	DiskTotal   uint64  `json:"disk_total"`
}

func (c *envdClient) metrics(ctx context.Context) (*sandbox.Metrics, error) {
	req, err := c.newRequest(ctx, http.MethodGet, "/metrics", nil, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.do(req, http.StatusOK)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var m envdMetrics
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&m); err != nil {
		return nil, fmt.Errorf("envd /metrics: %w", err)
	}
	return &sandbox.Metrics{
		CPUCount: m.CPUCount, CPUUsedPct: m.CPUUsedPct,
		MemTotalMiB: m.MemTotalMiB, MemUsedMiB: m.MemUsedMiB,
		DiskUsed: m.DiskUsed, DiskTotal: m.DiskTotal,
	}, nil
}

// fileQuery is the query of /files for path as user.
func fileQuery(path, user string) url.Values {
	q := url.Values{"path": {path}}
	if user != "" {
		q.Set("username", user)
	}
	return q
}

// upload streams r into the file at path and returns the path envd wrote
// (absolute, resolved for the user).
func (c *envdClient) upload(ctx context.Context, path, user string, r io.Reader) (string, error) {
	req, err := c.newRequest(ctx, http.MethodPost, "/files", fileQuery(path, user), r)
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.do(req, http.StatusOK)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var entries []struct {
		Path string `json:"path"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&entries); err != nil {
		return "", fmt.Errorf("envd upload answer: %w", err)
	}
	if len(entries) != 1 {
		return "", fmt.Errorf("envd upload answered %d entries, want 1", len(entries))
	}
	return entries[0].Path, nil
}

// download streams the file at path into w.
func (c *envdClient) download(ctx context.Context, path, user string, w io.Writer) (int64, error) {
	req, err := c.newRequest(ctx, http.MethodGet, "/files", fileQuery(path, user), nil)
	if err != nil {
		return 0, err
	}
	// The slot is a local link: compressing costs the guest CPU for nothing.
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := c.do(req, http.StatusOK)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("download %s: %w", path, err)
	}
	return n, nil
}
