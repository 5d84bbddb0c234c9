package agentapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"

	"connectrpc.com/connect"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/errdefs/errconnect"
)

const headerAuthorization = "Authorization"

// authInterceptor admits a call only when it carries
// "Authorization: Bearer <secret>". The comparison is of SHA-256 digests
// in constant time, so neither the secret's bytes nor its length leak
// through timing.
type authInterceptor struct {
	want [sha256.Size]byte
}

// NewAuthInterceptor returns the server-side interceptor that checks the
// shared secret on every call, unary and streaming; a call without it, or
// with another, fails with CodeUnauthenticated before any handler runs.
func NewAuthInterceptor(secret string) connect.Interceptor {
	return &authInterceptor{want: sha256.Sum256([]byte(secret))}
}

func (a *authInterceptor) check(h http.Header) error {
	v := h.Get(headerAuthorization)
	scheme, token, ok := strings.Cut(v, " ")
	if v == "" || !ok || !strings.EqualFold(scheme, "Bearer") {
		return errconnect.ToConnect(errdefs.Unauthenticated("the host agent needs Authorization: Bearer <secret>"))
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(token)))
	if subtle.ConstantTimeCompare(got[:], a.want[:]) != 1 {
		return errconnect.ToConnect(errdefs.Unauthenticated("the bearer token is not this host agent's secret"))
	}
	return nil
}

func (a *authInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if !req.Spec().IsClient {
			if err := a.check(req.Header()); err != nil {
				return nil, err
			}
		}
		return next(ctx, req)
	}
}

func (a *authInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (a *authInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if err := a.check(conn.RequestHeader()); err != nil {
			return err
		}
		return next(ctx, conn)
	}
}

// bearer is the client side: it sends the secret with every call.
type bearer string

// WithSecret returns a client option that authenticates every call
// (unary and streaming) with the shared secret.
func WithSecret(secret string) connect.ClientOption {
	return connect.WithInterceptors(bearer(secret))
}

func (b bearer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			req.Header().Set(headerAuthorization, "Bearer "+string(b))
		}
		return next(ctx, req)
	}
}

func (b bearer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		conn.RequestHeader().Set(headerAuthorization, "Bearer "+string(b))
		return conn
	}
}

func (b bearer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
