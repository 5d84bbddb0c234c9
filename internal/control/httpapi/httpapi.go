// Package httpapi is the control plane's REST and WebSocket API (see
// docs/api.md and api/openapi.yaml): a chi router that authenticates each
// request into a control.Principal, decodes and checks its input, calls
// the control.Service, and encodes the answer. Errors become HTTP statuses
// in one place, errdefs.HTTPStatus, through httpjson.Error.
//
// Authentication: REST routes take a credential only from headers
// (X-API-Key, or Authorization: Bearer <session JWT>). WebSocket routes sit
// in their own group and also accept ?token=, since browsers cannot set
// headers on WebSockets; no other route looks at ?token=, and an Upgrade
// header changes nothing on a REST route.
package httpapi

import (
	"context"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"wrenn.dev/wrenn/internal/control"
	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/httpjson"
)

// Log attribute keys.
const (
	logKeyMethod = "method"
	logKeyPath   = "path"
	logKeyErr    = "err"
	logKeyPanic  = "panic"
)

// Header names.
const (
	headerAPIKey = "X-API-Key"
	headerAuth   = "Authorization"
)

// Options configures the API.
type Options struct {
	Logger *slog.Logger
	// OpenAPI is the document served at /openapi.yaml.
	OpenAPI []byte
	// Docs serves Swagger UI under /docs; Dashboard serves everything not
	// otherwise routed. Either may be nil (404).
	Docs      http.Handler
	Dashboard http.Handler
}

type api struct {
	svc *control.Service
	log *slog.Logger
}

// New returns the API's handler.
func New(svc *control.Service, opts Options) http.Handler {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &api{svc: svc, log: log}
	r := chi.NewRouter()
	r.Use(a.recoverer)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		a.fail(w, r, errdefs.NotFound("no route %s %s", r.Method, r.URL.Path))
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		httpjson.Write(w, http.StatusMethodNotAllowed, httpjson.ErrorBody{
			Message: "method " + r.Method + " is not allowed on " + r.URL.Path, Code: http.StatusMethodNotAllowed,
		})
	})

	// Public.
	r.Get("/healthz", a.health)
	r.Post("/v1/auth/login", a.login)
	if opts.OpenAPI != nil {
		doc := opts.OpenAPI
		r.Get("/openapi.yaml", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/yaml")
			w.Write(doc) //nolint:errcheck // the client went away
		})
	}
	if opts.Docs != nil {
		r.Handle("/docs", opts.Docs)
		r.Handle("/docs/*", opts.Docs)
	}

	// REST: header credentials only.
	r.Group(func(r chi.Router) {
		r.Use(a.authenticate(false))
		r.Get("/v1/me", a.me)

		r.Post("/v1/sandboxes", a.createSandbox)
		r.Get("/v1/sandboxes", a.listSandboxes)
		r.Get("/v1/sandboxes/{id}", a.getSandbox)
		r.Delete("/v1/sandboxes/{id}", a.killSandbox)
		r.Post("/v1/sandboxes/{id}/timeout", a.setTimeout)
		r.Post("/v1/sandboxes/{id}/refresh", a.refresh)
		r.Post("/v1/sandboxes/{id}/pause", a.pause)
		r.Post("/v1/sandboxes/{id}/resume", a.resume)
		r.Post("/v1/sandboxes/{id}/exec", a.exec)
		r.Post("/v1/sandboxes/{id}/exec/stream", a.execStream)
		r.Post("/v1/sandboxes/{id}/files", a.upload)
		r.Get("/v1/sandboxes/{id}/files", a.download)
		r.Post("/v1/sandboxes/{id}/files/download", a.downloadPost)
		r.Get("/v1/sandboxes/{id}/files/list", a.listDir)
		r.Get("/v1/sandboxes/{id}/metrics", a.metrics)

		r.Get("/v1/templates", a.listTemplates)
		r.Post("/v1/snapshots", a.createSnapshot)
		r.Get("/v1/snapshots", a.listSnapshots)
		r.Delete("/v1/snapshots/{name}", a.deleteSnapshot)

		r.Get("/v1/api-keys", a.listAPIKeys)
		r.Post("/v1/api-keys", a.createAPIKey)
		r.Delete("/v1/api-keys/{id}", a.revokeAPIKey)
		r.Get("/v1/users", a.listUsers)
		r.Post("/v1/users", a.createUser)
		r.Get("/v1/teams", a.listTeams)
		r.Post("/v1/teams", a.createTeam)
		r.Get("/v1/hosts", a.listHosts)
		r.Post("/v1/hosts", a.registerHost)
		r.Delete("/v1/hosts/{id}", a.removeHost)
	})

	// WebSockets: header credentials or ?token=.
	r.Group(func(r chi.Router) {
		r.Use(a.authenticate(true))
		r.Get("/v1/sandboxes/{id}/pty", a.pty(false))
		r.Get("/v1/admin/sandboxes/{id}/pty", a.pty(true))
	})

	if opts.Dashboard != nil {
		r.Handle("/*", opts.Dashboard)
	}
	return r
}

// fail answers err.
func (a *api) fail(w http.ResponseWriter, r *http.Request, err error) {
	httpjson.Error(w, r, a.log, err)
}

// recoverer turns a panic into a 500 with a fixed message, logged with its
// stack; no panic reaches a client.
func (a *api) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				a.log.ErrorContext(r.Context(), "panic in handler", logKeyMethod, r.Method, logKeyPath, r.URL.Path,
					logKeyPanic, v, "stack", string(debug.Stack()))
				httpjson.Write(w, http.StatusInternalServerError, httpjson.ErrorBody{Message: "internal error", Code: http.StatusInternalServerError})
			}
		}()
		next.ServeHTTP(w, r)
	})
}

type principalKey struct{}

func principal(r *http.Request) control.Principal {
	p, _ := r.Context().Value(principalKey{}).(control.Principal)
	return p
}

// authenticate checks the request's credential. With query, ?token= is
// accepted as well (WebSocket routes only).
func (a *api) authenticate(query bool) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p, err := a.credential(r, query)
			if err != nil {
				a.fail(w, r, err)
				return
			}
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
		})
	}
}

func (a *api) credential(r *http.Request, query bool) (control.Principal, error) {
	ctx := r.Context()
	if k := r.Header.Get(headerAPIKey); k != "" {
		return a.svc.AuthenticateAPIKey(ctx, k)
	}
	if h := r.Header.Get(headerAuth); h != "" {
		scheme, tok, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
			return control.Principal{}, errdefs.Unauthenticated("the Authorization header must be \"Bearer <token>\"")
		}
		return a.bearer(ctx, tok)
	}
	if query {
		if tok := r.URL.Query().Get("token"); tok != "" {
			return a.bearer(ctx, tok)
		}
	}
	return control.Principal{}, errdefs.Unauthenticated("no credential: send an API key in the X-API-Key header or a session token as Authorization: Bearer")
}

// bearer accepts either kind of token where the kind is not said: an API
// key (by its prefix) or a session JWT.
func (a *api) bearer(ctx context.Context, tok string) (control.Principal, error) {
	if strings.HasPrefix(tok, "wrn_") {
		return a.svc.AuthenticateAPIKey(ctx, tok)
	}
	return a.svc.AuthenticateSession(ctx, tok)
}

func (a *api) health(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	if err := a.svc.Ready(ctx); err != nil {
		a.fail(w, r, errdefs.Unavailable("database: %v", errdefs.PublicMessage(err)))
		return
	}
	httpjson.Write(w, http.StatusOK, map[string]string{"status": "ok"})
}
