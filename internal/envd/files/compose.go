package files

import (
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"os"

	"wrenn.dev/wrenn/internal/envd/filesystem"
	"wrenn.dev/wrenn/internal/envd/identity"
	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/httpjson"
)

// maxComposeBody bounds the JSON body of a compose request.
const maxComposeBody = 1 << 20

// composeRequest is the body of POST /files/compose.
type composeRequest struct {
	SourcePaths []string `json:"source_paths"`
	Destination string   `json:"destination"`
	Username    string   `json:"username"`
}

// compose concatenates source files, in order, into the destination (the
// SDK's chunked upload), then deletes the sources. The destination appears
// whole or not at all: it is assembled in a temporary file and renamed
// into place. Relative paths resolve for the body's username (else the
// Basic auth user, else the default user), who owns the result and any
// parent directories created for it.
func (h *Handler) compose(w http.ResponseWriter, r *http.Request) {
	e, err := h.composeFiles(w, r)
	if err != nil {
		httpjson.Error(w, r, h.log, err)
		return
	}
	httpjson.Write(w, http.StatusOK, e)
}

func (h *Handler) composeFiles(w http.ResponseWriter, r *http.Request) (*entryJSON, error) {
	// Signed URLs are for /files only; the middleware lets them through,
	// so a signed compose request must still present the token.
	if r.URL.Query().Has("signature") {
		if token := h.token(); token != "" && !h.hasToken(r, token) {
			return nil, errdefs.Unauthenticated("signed URLs are not accepted by /files/compose; send X-Access-Token")
		}
	}
	var req composeRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxComposeBody)).Decode(&req); err != nil {
		return nil, errdefs.InvalidArgument("invalid compose request body: %v", err)
	}
	if len(req.SourcePaths) == 0 {
		return nil, errdefs.InvalidArgument("source_paths must not be empty")
	}
	if req.Destination == "" {
		return nil, errdefs.InvalidArgument("destination is required")
	}
	var u *identity.User
	var err error
	if req.Username != "" {
		u, err = h.users.Lookup(req.Username)
	} else {
		u, err = h.users.FromHeader(r.Header)
	}
	if err != nil {
		return nil, err
	}
	dest, err := h.users.ResolvePath(u, req.Destination)
	if err != nil {
		return nil, err
	}
	sources := make([]string, len(req.SourcePaths))
	for i, p := range req.SourcePaths {
		src, err := h.users.ResolvePath(u, p)
		if err != nil {
			return nil, err
		}
		if src == dest {
			return nil, errdefs.InvalidArgument("source %s is also the destination", src)
		}
		fi, err := os.Stat(src)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nil, errdefs.NotFound("source %s does not exist", src)
		case err != nil:
			return nil, filesystem.ClassifyOSError(err)
		case !fi.Mode().IsRegular():
			return nil, errdefs.InvalidArgument("source %s is not a regular file", src)
		}
		sources[i] = src
	}

	f, dest, err := createTemp(u, dest)
	if err != nil {
		return nil, err
	}
	sf := &stagedFile{tmp: f.Name(), path: dest}
	defer sf.discard()
	for _, src := range sources {
		n, err := appendFile(f, src)
		sf.size += n
		if err != nil {
			f.Close()
			return nil, err
		}
	}
	if err := f.Close(); err != nil {
		return nil, filesystem.ClassifyOSError(err)
	}
	if err := sf.commit(); err != nil {
		return nil, err
	}
	for _, src := range sources {
		if err := os.Remove(src); err != nil && !errors.Is(err, fs.ErrNotExist) {
			h.log.WarnContext(r.Context(), "compose: cannot remove source", logKeyPath, src, logKeyErr, err)
		}
	}
	h.log.DebugContext(r.Context(), "files composed", logKeyPath, dest, logKeyUser, u.Name, logKeyBytes, sf.size)
	e := entryOf(dest)
	return &e, nil
}

// appendFile copies the file at src onto the end of dst (copy_file_range
// where the kernel can).
func appendFile(dst *os.File, src string) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, filesystem.ClassifyOSError(err)
	}
	defer in.Close()
	n, err := dst.ReadFrom(in)
	return n, filesystem.ClassifyOSError(err)
}
