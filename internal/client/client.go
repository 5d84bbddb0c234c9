// Package client is a typed Go client for the control plane's REST and
// WebSocket API (docs/api.md, api/openapi.yaml).
//
// Every method takes a context and maps one route. A non-2xx answer is a
// [*Error] carrying the status and the server's message, which unwraps to
// the matching errdefs class (errors.Is(err, errdefs.ErrNotFound)); a
// server that cannot be reached at all is an [*UnreachableError]. File
// transfers stream in both directions, and [Client.OpenPTY] attaches to a
// terminal over a WebSocket.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/version"
)

// Client talks to one control plane with one credential. It is safe for
// concurrent use.
type Client struct {
	base      *url.URL
	apiKey    string
	bearer    string
	hc        *http.Client
	userAgent string
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient makes the client send its requests with hc instead of
// http.DefaultClient.
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.hc = hc } }

// WithBearer authenticates with a session token (a JWT from
// [Client.Login]) instead of an API key.
func WithBearer(jwt string) Option { return func(c *Client) { c.bearer = jwt } }

// WithUserAgent sets the User-Agent header of every request.
func WithUserAgent(ua string) Option { return func(c *Client) { c.userAgent = ua } }

// New returns a client for the control plane at baseURL (scheme, host and
// an optional path prefix; "/v1" is added by the client) that sends apiKey
// as X-API-Key. apiKey may be empty for the public routes ([Client.Login],
// [Client.Health]) or when [WithBearer] is given.
func New(baseURL, apiKey string, opts ...Option) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	if err != nil {
		return nil, fmt.Errorf("server URL %q: %w", baseURL, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("server URL %q: want http://host[:port] or https://host[:port]", baseURL)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("server URL %q: must not have a query or fragment", baseURL)
	}
	c := &Client{
		base:      u,
		apiKey:    apiKey,
		hc:        http.DefaultClient,
		userAgent: "wrenn-client/" + version.Version,
	}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// BaseURL returns the server URL the client was made with.
func (c *Client) BaseURL() string { return c.base.String() }

// Error is a non-2xx answer from the server. Its text is the server's
// message. It unwraps to the errdefs class of its status, so callers test
// with errors.Is(err, errdefs.ErrNotFound) and the like.
type Error struct {
	// Status is the HTTP status code (or, for an error event inside an
	// exec stream, the code the event carried).
	Status int
	// Message is the server's message.
	Message string
}

func (e *Error) Error() string {
	if e.Message != "" {
		return e.Message
	}
	if t := http.StatusText(e.Status); t != "" {
		return fmt.Sprintf("%d %s", e.Status, strings.ToLower(t))
	}
	return fmt.Sprintf("status %d", e.Status)
}

// Unwrap returns the errdefs class of the status, or nil for statuses
// without one (500 and the like: internal errors).
func (e *Error) Unwrap() error { return classOf(e.Status) }

// classOf maps an HTTP status back to an errdefs class. It is the inverse
// of errdefs.HTTPStatus (the forward map, which the server uses); where two
// classes share a status (409: conflict and already exists) the broader
// one is returned. Statuses the server writes outside that map (413, 429)
// get the nearest class.
func classOf(status int) error {
	switch status {
	case http.StatusBadRequest:
		return errdefs.ErrInvalidArgument
	case http.StatusUnauthorized:
		return errdefs.ErrUnauthenticated
	case http.StatusForbidden:
		return errdefs.ErrPermissionDenied
	case http.StatusNotFound:
		return errdefs.ErrNotFound
	case http.StatusConflict:
		return errdefs.ErrConflict
	case http.StatusPreconditionFailed:
		return errdefs.ErrFailedPrecondition
	case http.StatusRequestEntityTooLarge, http.StatusTooManyRequests, http.StatusInsufficientStorage:
		return errdefs.ErrResourceExhausted
	case 499:
		return errdefs.ErrCanceled
	case http.StatusNotImplemented:
		return errdefs.ErrNotImplemented
	case http.StatusBadGateway, http.StatusServiceUnavailable:
		return errdefs.ErrUnavailable
	case http.StatusGatewayTimeout:
		return errdefs.ErrDeadlineExceeded
	}
	return nil
}

// UnreachableError is a request that never reached the server: nothing
// listens at the URL, the name does not resolve, or the connection broke.
// It is of class errdefs.ErrUnavailable.
type UnreachableError struct {
	URL string
	Err error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("the Wrenn server at %s is unreachable (%v); start one with `wrenn dev`, or check the URL (-url, WRENN_URL)", e.URL, e.Err)
}

// Unwrap returns the network error and errdefs.ErrUnavailable.
func (e *UnreachableError) Unwrap() []error { return []error{e.Err, errdefs.ErrUnavailable} }

// transportError turns a failed round trip into an UnreachableError when
// the server could not be reached, and otherwise names the request.
func (c *Client) transportError(ctx context.Context, method, path string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s %s: %w", method, path, ctx.Err())
	}
	var opErr *net.OpError
	var dnsErr *net.DNSError
	if errors.As(err, &opErr) && opErr.Op == "dial" || errors.As(err, &dnsErr) {
		return &UnreachableError{URL: c.base.String(), Err: unwrapURLError(err)}
	}
	return fmt.Errorf("%s %s: %w", method, path, unwrapURLError(err))
}

// unwrapURLError drops net/http's *url.Error wrapper, whose text repeats
// the method and URL.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// endpoint returns the absolute URL of path (already escaped, starting
// with "/") with query q.
func (c *Client) endpoint(path string, q url.Values) string {
	s := strings.TrimRight(c.base.String(), "/") + path
	if len(q) > 0 {
		s += "?" + q.Encode()
	}
	return s
}

// seg escapes one path segment (an id or a name).
func seg(s string) string { return url.PathEscape(s) }

// authorize sets the credential headers on h.
func (c *Client) authorize(h http.Header) {
	if c.bearer != "" {
		h.Set("Authorization", "Bearer "+c.bearer)
	} else if c.apiKey != "" {
		h.Set("X-API-Key", c.apiKey)
	}
	if c.userAgent != "" {
		h.Set("User-Agent", c.userAgent)
	}
}

// token is the credential as the WebSocket routes accept it in ?token=.
func (c *Client) token() string {
	if c.bearer != "" {
		return c.bearer
	}
	return c.apiKey
}

// send performs a request and returns the response when its status is
// 2xx; otherwise it returns the *Error the body describes. body, when not
// nil, is sent with contentType.
func (c *Client) send(ctx context.Context, method, path string, q url.Values, body io.Reader, contentType string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.endpoint(path, q), body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	c.authorize(req.Header)
	if body != nil && contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, c.transportError(ctx, method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	return resp, nil
}

// decodeError reads an error answer. A body that is not the API's error
// shape (a proxy's HTML page, say) still yields the status.
func decodeError(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var body struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(data, &body) == nil && body.Message != "" {
		return &Error{Status: resp.StatusCode, Message: body.Message}
	}
	return &Error{Status: resp.StatusCode}
}

// do sends in (when not nil) as JSON and decodes the answer into out (when
// not nil).
func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	var body io.Reader
	if in != nil {
		data, err := marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: encode request: %w", method, path, err)
		}
		body = bytes.NewReader(data)
	}
	resp, err := c.send(ctx, method, path, q, body, "application/json")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// marshal encodes v as JSON without escaping <, > and & (commands are
// full of them; the escapes are valid but unreadable in logs).
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// Health asks GET /healthz; nil means the server and its database answer.
func (c *Client) Health(ctx context.Context) error {
	var out struct {
		Status string `json:"status"`
	}
	if err := c.do(ctx, http.MethodGet, "/healthz", nil, nil, &out); err != nil {
		return err
	}
	if out.Status != "ok" {
		return fmt.Errorf("GET /healthz: status %q, want \"ok\"", out.Status)
	}
	return nil
}
