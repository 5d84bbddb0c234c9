// Package files serves envd's HTTP file transfer endpoints, wire
// compatible with E2B's envd:
//
//	GET  /files?path=&username=   download one file (Range, gzip)
//	POST /files?path=&username=   upload: multipart/form-data or a raw body
//	POST /files/compose           concatenate uploaded chunks into one file
//
// Access is normally guarded by the server's X-Access-Token middleware.
// A GET or POST /files request may instead carry a signed URL (signature,
// signature_expiration): the middleware lets those through and this
// handler verifies them (see [Sign]). Before an access token is set the
// sandbox is open, so a signature has nothing to be checked against and is
// accepted as it is. Signed URLs do not work for /files/compose.
//
// The request user is the username query parameter, else the Basic auth
// user, else the default user; for a signed request only the username
// parameter counts, since that is what was signed. Relative paths resolve
// against that user's home, and files and directories an upload creates
// are owned by that user.
package files

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"wrenn.dev/wrenn/internal/envd/identity"
	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/httpjson"
)

// Log attribute keys.
const (
	logKeyPath  = "path"
	logKeyUser  = "user"
	logKeyBytes = "bytes"
	logKeyErr   = "err"
)

// Signature operations.
const (
	opRead  = "read"
	opWrite = "write"
)

// Config configures a Handler.
type Config struct {
	// Users resolves request users and paths. Required.
	Users *identity.Resolver
	// Token returns the current access token, "" when none is set. It is
	// what signed URLs are checked against; nil means no token.
	Token func() string
	// Logger receives the handler's logs; nil discards them.
	Logger *slog.Logger
}

// Handler serves /files and /files/compose. Mount it on both paths; any
// other path is 404.
type Handler struct {
	users *identity.Resolver
	token func() string
	log   *slog.Logger
	now   func() time.Time // for signature expiry; tests replace it
}

// New returns a Handler.
func New(cfg Config) *Handler {
	if cfg.Users == nil {
		panic("files.New: Config.Users is required")
	}
	if cfg.Token == nil {
		cfg.Token = func() string { return "" }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Handler{users: cfg.Users, token: cfg.Token, log: cfg.Logger, now: time.Now}
}

// ServeHTTP routes a request to download, upload or compose.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/files":
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			h.download(w, r)
		case http.MethodPost:
			h.upload(w, r)
		default:
			methodNotAllowed(w, r, "GET, HEAD, POST")
		}
	case "/files/compose":
		if r.Method != http.MethodPost {
			methodNotAllowed(w, r, "POST")
			return
		}
		h.compose(w, r)
	default:
		httpjson.Error(w, r, h.log, errdefs.NotFound("no route for %s %s", r.Method, r.URL.Path))
	}
}

func methodNotAllowed(w http.ResponseWriter, r *http.Request, allow string) {
	w.Header().Set("Allow", allow)
	httpjson.Write(w, http.StatusMethodNotAllowed, httpjson.ErrorBody{
		Message: "method " + r.Method + " is not allowed on " + r.URL.Path + "; use " + allow,
		Code:    http.StatusMethodNotAllowed,
	})
}

// Sign returns the signature E2B SDKs put in signed /files URLs: "v1_" and
// the unpadded standard base64 of sha256("path:operation:username:token"),
// with ":expiration" appended when expiration (unix seconds) is not 0.
// operation is "read" or "write"; username is "" for the default user;
// path is the path query parameter exactly as sent.
func Sign(path, operation, username, token string, expiration int64) string {
	raw := path + ":" + operation + ":" + username + ":" + token
	if expiration != 0 {
		raw += ":" + strconv.FormatInt(expiration, 10)
	}
	sum := sha256.Sum256([]byte(raw))
	return "v1_" + base64.RawStdEncoding.EncodeToString(sum[:])
}

// authorize checks a request's signed URL, if it has one, for operation op
// and reports whether it had one.
//
// With no access token set there is nothing to check a signature against
// and the sandbox is open anyway, so any signature is accepted. A request
// that also carries the valid X-Access-Token is accepted as the middleware
// would. Otherwise the signature must match and its expiration, if any,
// must not have passed; anything else is ErrUnauthenticated.
func (h *Handler) authorize(r *http.Request, op string) (signed bool, err error) {
	q := r.URL.Query()
	if !q.Has("signature") {
		return false, nil
	}
	token := h.token()
	if token == "" || h.hasToken(r, token) {
		return true, nil
	}
	var exp int64
	if s := q.Get("signature_expiration"); s != "" {
		exp, err = strconv.ParseInt(s, 10, 64)
		if err != nil {
			return true, errdefs.Unauthenticated("invalid signature_expiration %q: want unix seconds", s)
		}
	}
	want := Sign(q.Get("path"), op, q.Get("username"), token, exp)
	if subtle.ConstantTimeCompare([]byte(q.Get("signature")), []byte(want)) != 1 {
		return true, errdefs.Unauthenticated("invalid signature for %s access to this path", op)
	}
	if exp != 0 && h.now().Unix() > exp {
		return true, errdefs.Unauthenticated("signature expired at %s", time.Unix(exp, 0).UTC().Format(time.RFC3339))
	}
	return true, nil
}

func (h *Handler) hasToken(r *http.Request, token string) bool {
	got := r.Header.Get("X-Access-Token")
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1
}

// user resolves the request user; see the package doc.
func (h *Handler) user(r *http.Request, signed bool) (*identity.User, error) {
	if name := r.URL.Query().Get("username"); name != "" || signed {
		return h.users.Lookup(name)
	}
	return h.users.FromHeader(r.Header)
}
