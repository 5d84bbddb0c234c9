package envd

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"golang.org/x/sys/unix"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/httpjson"
	"wrenn.dev/wrenn/internal/version"
)

// InitRequest is the body of POST /init, sent by the host after every boot
// and resume. Every field is optional.
type InitRequest struct {
	EnvVars        map[string]string `json:"envVars,omitempty"`
	AccessToken    *string           `json:"accessToken,omitempty"`
	Timestamp      *time.Time        `json:"timestamp,omitempty"`
	DefaultUser    string            `json:"defaultUser,omitempty"`
	DefaultWorkdir string            `json:"defaultWorkdir,omitempty"`
}

// maxInitBody bounds /init bodies; env vars are small.
const maxInitBody = 1 << 20

// handleInit applies host-provided settings. Once a token is set, /init
// must prove it knows it: the X-Access-Token header or the body's token
// equals the current token, or the body's token hashes to the value the
// host put in MMDS (how a token is rotated on resume without a trusted
// channel).
func (s *Server) handleInit(w http.ResponseWriter, r *http.Request) {
	var req InitRequest
	body := http.MaxBytesReader(w, r.Body, maxInitBody)
	if err := decodeJSON(body, &req); err != nil {
		httpjson.Error(w, r, s.log, err)
		return
	}
	if err := s.authorizeInit(r, req); err != nil {
		httpjson.Error(w, r, s.log, err)
		return
	}
	if req.DefaultUser != "" {
		if _, err := s.users.Lookup(req.DefaultUser); err != nil {
			httpjson.Error(w, r, s.log, errdefs.InvalidArgument("defaultUser %q does not exist in the sandbox", req.DefaultUser))
			return
		}
	}
	if req.Timestamp != nil && s.cfg.SetClock {
		if err := setClock(*req.Timestamp); err != nil {
			s.log.Warn("set clock from /init", "err", err)
		}
	}
	s.mu.Lock()
	for k, v := range req.EnvVars {
		s.envVars[k] = v
	}
	if req.AccessToken != nil {
		s.token = *req.AccessToken
	}
	s.mu.Unlock()
	s.users.SetDefaults(req.DefaultUser, req.DefaultWorkdir)
	w.Header().Set("X-Envd-Version", version.EnvdCompat)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) authorizeInit(r *http.Request, req InitRequest) error {
	s.mu.RLock()
	current, hash := s.token, s.tokenHash
	s.mu.RUnlock()
	if current == "" && hash == "" {
		return nil
	}
	if current != "" && constantTimeEqual(r.Header.Get("X-Access-Token"), current) {
		return nil
	}
	if req.AccessToken != nil {
		if current != "" && constantTimeEqual(*req.AccessToken, current) {
			return nil
		}
		if hash != "" && constantTimeEqual(tokenHashOf(*req.AccessToken), hash) {
			return nil
		}
	}
	return errdefs.Unauthenticated("/init needs the current access token, or a token matching the host's hash")
}

// decodeJSON decodes one JSON value, classifying malformed input as
// InvalidArgument with the decoder's position-bearing message.
func decodeJSON(r io.Reader, v any) error {
	dec := json.NewDecoder(r)
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		switch {
		case errors.As(err, &tooBig):
			return errdefs.InvalidArgument("request body larger than %d bytes", tooBig.Limit)
		case errors.Is(err, io.EOF):
			return errdefs.InvalidArgument("request body is empty; expected a JSON object")
		default:
			return errdefs.InvalidArgument("malformed JSON body: %v", err)
		}
	}
	if dec.More() {
		return errdefs.InvalidArgument("malformed JSON body: trailing data after the object")
	}
	return nil
}

// setClock sets the realtime clock when it is more than 50 ms off.
func setClock(t time.Time) error {
	if d := time.Since(t); d < 50*time.Millisecond && d > -50*time.Millisecond {
		return nil
	}
	ts := unix.NsecToTimespec(t.UnixNano())
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return fmt.Errorf("clock_settime: %w", err)
	}
	return nil
}
