package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"wrenn.dev/wrenn/internal/control"
	"wrenn.dev/wrenn/internal/control/db"
	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/httpjson"
	"wrenn.dev/wrenn/internal/sandbox"
)

func seconds(n int64, field string) (time.Duration, error) {
	if n < 0 || n > int64(control.MaxTimeout/time.Second) {
		return 0, errdefs.InvalidArgument("%s must be between 1 and %d", field, int64(control.MaxTimeout/time.Second))
	}
	return time.Duration(n) * time.Second, nil
}

type createSandboxBody struct {
	Template       string            `json:"template"`
	VCPUs          int               `json:"vcpus"`
	MemoryMiB      int               `json:"memory_mib"`
	TimeoutSeconds int64             `json:"timeout_seconds"`
	Metadata       map[string]string `json:"metadata"`
	EnvVars        map[string]string `json:"env_vars"`
	Egress         *bool             `json:"egress"`
}

func (a *api) createSandbox(w http.ResponseWriter, r *http.Request) {
	var b createSandboxBody
	if err := decode(w, r, &b, false); err != nil {
		a.fail(w, r, err)
		return
	}
	timeout, err := seconds(b.TimeoutSeconds, "timeout_seconds")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	sb, err := a.svc.CreateSandbox(r.Context(), principal(r), control.CreateSandbox{
		Template: b.Template, VCPUs: b.VCPUs, MemoryMiB: b.MemoryMiB, Timeout: timeout,
		Metadata: b.Metadata, EnvVars: b.EnvVars, Egress: b.Egress,
	})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusCreated, sandboxJSON(sb))
}

func (a *api) listSandboxes(w http.ResponseWriter, r *http.Request) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		a.fail(w, r, errdefs.InvalidArgument("the query string is malformed: %v", err))
		return
	}
	f := control.SandboxFilter{Cursor: q.Get("cursor")}
	for k, vs := range q {
		switch {
		case k == "state":
			if err := f.State.UnmarshalText([]byte(q.Get("state"))); err != nil || f.State == sandbox.StateUnknown {
				a.fail(w, r, errdefs.InvalidArgument("state %q is not a sandbox state", q.Get("state")))
				return
			}
		case k == "limit":
			n, err := strconv.Atoi(q.Get("limit"))
			if err != nil {
				a.fail(w, r, errdefs.InvalidArgument("limit must be a number between 1 and %d", control.MaxPageSize))
				return
			}
			f.Limit = n
			if n == 0 {
				f.Limit = -1 // explicit 0 is out of range, not "default"
			}
		case strings.HasPrefix(k, "metadata."):
			if f.Metadata == nil {
				f.Metadata = map[string]string{}
			}
			f.Metadata[strings.TrimPrefix(k, "metadata.")] = vs[0]
		case k == "cursor":
		default:
			a.fail(w, r, errdefs.InvalidArgument("unknown query parameter %q (known: state, limit, cursor, metadata.<key>)", k))
			return
		}
	}
	list, next, err := a.svc.ListSandboxes(r.Context(), principal(r), f)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := make([]sandboxView, len(list))
	for i, s := range list {
		out[i] = sandboxJSON(s)
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"sandboxes": out, "next_cursor": next})
}

func (a *api) getSandbox(w http.ResponseWriter, r *http.Request) {
	sb, err := a.svc.GetSandbox(r.Context(), principal(r), chi.URLParam(r, "id"))
	a.answerSandbox(w, r, sb, err)
}

func (a *api) answerSandbox(w http.ResponseWriter, r *http.Request, sb db.Sandbox, err error) {
	if err != nil {
		a.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, sandboxJSON(sb))
}

func (a *api) killSandbox(w http.ResponseWriter, r *http.Request) {
	if err := a.svc.KillSandbox(r.Context(), principal(r), chi.URLParam(r, "id")); err != nil {
		a.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *api) setTimeout(w http.ResponseWriter, r *http.Request) {
	var b struct {
		TimeoutSeconds int64 `json:"timeout_seconds"`
	}
	if err := decode(w, r, &b, false); err != nil {
		a.fail(w, r, err)
		return
	}
	d, err := seconds(b.TimeoutSeconds, "timeout_seconds")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	sb, err := a.svc.SetTimeout(r.Context(), principal(r), chi.URLParam(r, "id"), d)
	a.answerSandbox(w, r, sb, err)
}

func (a *api) refresh(w http.ResponseWriter, r *http.Request) {
	var b struct {
		DurationSeconds int64 `json:"duration_seconds"`
	}
	if err := decode(w, r, &b, false); err != nil {
		a.fail(w, r, err)
		return
	}
	d, err := seconds(b.DurationSeconds, "duration_seconds")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	sb, err := a.svc.Refresh(r.Context(), principal(r), chi.URLParam(r, "id"), d)
	a.answerSandbox(w, r, sb, err)
}

func (a *api) pause(w http.ResponseWriter, r *http.Request) {
	var b struct{}
	if err := decode(w, r, &b, true); err != nil {
		a.fail(w, r, err)
		return
	}
	sb, err := a.svc.Pause(r.Context(), principal(r), chi.URLParam(r, "id"))
	a.answerSandbox(w, r, sb, err)
}

func (a *api) resume(w http.ResponseWriter, r *http.Request) {
	var b struct {
		TimeoutSeconds int64 `json:"timeout_seconds"`
	}
	if err := decode(w, r, &b, true); err != nil {
		a.fail(w, r, err)
		return
	}
	d, err := seconds(b.TimeoutSeconds, "timeout_seconds")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	sb, err := a.svc.Resume(r.Context(), principal(r), chi.URLParam(r, "id"), d)
	a.answerSandbox(w, r, sb, err)
}

type execBody struct {
	Cmd            string            `json:"cmd"`
	Args           []string          `json:"args"`
	Envs           map[string]string `json:"envs"`
	Cwd            string            `json:"cwd"`
	User           string            `json:"user"`
	Stdin          string            `json:"stdin"`
	TimeoutSeconds int64             `json:"timeout_seconds"`
}

func (a *api) execRequest(w http.ResponseWriter, r *http.Request) (control.ExecRequest, error) {
	var b execBody
	if err := decode(w, r, &b, false); err != nil {
		return control.ExecRequest{}, err
	}
	d, err := seconds(b.TimeoutSeconds, "timeout_seconds")
	if err != nil {
		return control.ExecRequest{}, err
	}
	return control.ExecRequest{Cmd: b.Cmd, Args: b.Args, Envs: b.Envs, Cwd: b.Cwd, User: b.User, Stdin: []byte(b.Stdin), Timeout: d}, nil
}

// maxExecOutput caps each stream of a synchronous exec's answer.
const maxExecOutput = 16 << 20

type execResult struct {
	ExitCode int    `json:"exit_code"`
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
	Status   string `json:"status"`
	Error    string `json:"error"`
}

func (a *api) exec(w http.ResponseWriter, r *http.Request) {
	req, err := a.execRequest(w, r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var stdout, stderr bytes.Buffer
	var res execResult
	err = a.svc.Exec(r.Context(), principal(r), chi.URLParam(r, "id"), req, func(ev control.ExecEvent) error {
		switch {
		case ev.Stdout != nil:
			stdout.Write(ev.Stdout)
		case ev.Stderr != nil:
			stderr.Write(ev.Stderr)
		case ev.Exit != nil:
			res.ExitCode, res.Status, res.Error = ev.Exit.Code, ev.Exit.Status, ev.Exit.Error
		}
		if stdout.Len() > maxExecOutput || stderr.Len() > maxExecOutput {
			return errdefs.TooLarge("the command wrote more than %d MiB to one stream; use /exec/stream for large output", maxExecOutput>>20)
		}
		return nil
	})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	res.Stdout, res.Stderr = stdout.String(), stderr.String()
	httpjson.Write(w, http.StatusOK, res)
}

type execEventJSON struct {
	Type     string `json:"type"`
	PID      uint32 `json:"pid,omitempty"`
	Data     []byte `json:"data,omitempty"`
	ExitCode *int   `json:"exit_code,omitempty"`
	Status   string `json:"status,omitempty"`
	Error    string `json:"error,omitempty"`
	Message  string `json:"message,omitempty"`
	Code     int    `json:"code,omitempty"`
}

func (a *api) execStream(w http.ResponseWriter, r *http.Request) {
	req, err := a.execRequest(w, r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	started := false
	write := func(ev execEventJSON) error {
		if !started {
			w.Header().Set("Content-Type", "application/x-ndjson")
			w.Header().Set("X-Content-Type-Options", "nosniff")
			w.WriteHeader(http.StatusOK)
			started = true
		}
		if err := enc.Encode(ev); err != nil {
			return err
		}
		return rc.Flush()
	}
	err = a.svc.Exec(r.Context(), principal(r), chi.URLParam(r, "id"), req, func(ev control.ExecEvent) error {
		switch {
		case ev.Started:
			return write(execEventJSON{Type: "started", PID: ev.PID})
		case ev.Stdout != nil:
			return write(execEventJSON{Type: "stdout", Data: ev.Stdout})
		case ev.Stderr != nil:
			return write(execEventJSON{Type: "stderr", Data: ev.Stderr})
		case ev.Exit != nil:
			code := ev.Exit.Code
			return write(execEventJSON{Type: "exit", ExitCode: &code, Status: ev.Exit.Status, Error: ev.Exit.Error})
		}
		return nil
	})
	switch {
	case err == nil:
	case !started:
		a.fail(w, r, err)
	case r.Context().Err() == nil:
		status := errdefs.HTTPStatus(err)
		write(execEventJSON{Type: "error", Message: errdefs.PublicMessage(err), Code: status}) //nolint:errcheck // best effort
	}
}

// fileQuery reads ?path= and ?user=.
func fileQuery(r *http.Request) (string, string, error) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return "", "", errdefs.InvalidArgument("the query string is malformed: %v", err)
	}
	for k := range q {
		if k != "path" && k != "user" {
			return "", "", errdefs.InvalidArgument("unknown query parameter %q (known: path, user)", k)
		}
	}
	if q.Get("path") == "" {
		return "", "", errdefs.InvalidArgument("the path query parameter is required")
	}
	return q.Get("path"), q.Get("user"), nil
}

func (a *api) upload(w http.ResponseWriter, r *http.Request) {
	path, user, err := fileQuery(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	body := io.Reader(r.Body)
	mt, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch mt {
	case "multipart/form-data":
		part, err := filePart(multipart.NewReader(r.Body, params["boundary"]))
		if err != nil {
			a.fail(w, r, err)
			return
		}
		defer part.Close()
		body = part
	case "application/octet-stream", "":
	default:
		a.fail(w, r, errdefs.InvalidArgument("upload with multipart/form-data (a part named \"file\") or application/octet-stream, not %q", mt))
		return
	}
	written, size, err := a.svc.WriteFile(r.Context(), principal(r), chi.URLParam(r, "id"), path, user, body)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"path": written, "size": size})
}

// filePart returns the multipart part named "file".
func filePart(mr *multipart.Reader) (*multipart.Part, error) {
	if mr == nil {
		return nil, errdefs.InvalidArgument("multipart body without a boundary")
	}
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return nil, errdefs.InvalidArgument("the multipart body has no part named \"file\"")
		}
		if err != nil {
			return nil, errdefs.InvalidArgument("the multipart body is malformed: %v", err)
		}
		if p.FormName() == "file" {
			return p, nil
		}
		p.Close()
	}
}

func (a *api) download(w http.ResponseWriter, r *http.Request) {
	path, user, err := fileQuery(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.sendFile(w, r, path, user)
}

func (a *api) downloadPost(w http.ResponseWriter, r *http.Request) {
	var b struct {
		Path string `json:"path"`
		User string `json:"user"`
	}
	if err := decode(w, r, &b, false); err != nil {
		a.fail(w, r, err)
		return
	}
	a.sendFile(w, r, b.Path, b.User)
}

func (a *api) sendFile(w http.ResponseWriter, r *http.Request, path, user string) {
	f, err := a.svc.OpenFile(r.Context(), principal(r), chi.URLParam(r, "id"), path, user)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	defer f.Close()
	name := path[strings.LastIndexByte(path, '/')+1:]
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": name}))
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	if _, err := io.Copy(w, f); err != nil && r.Context().Err() == nil {
		// The status is sent; breaking the connection tells the client the
		// body is incomplete.
		a.log.Warn("download broke off", logKeyPath, path, logKeyErr, err)
		panic(http.ErrAbortHandler)
	}
}

func (a *api) listDir(w http.ResponseWriter, r *http.Request) {
	path, user, err := fileQuery(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	entries, err := a.svc.ListDir(r.Context(), principal(r), chi.URLParam(r, "id"), path, user)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	type entry struct {
		Name       string     `json:"name"`
		Path       string     `json:"path"`
		Type       string     `json:"type"`
		Size       uint64     `json:"size"`
		Mode       string     `json:"mode"`
		ModifiedAt *time.Time `json:"modified_at"`
	}
	out := make([]entry, len(entries))
	for i, e := range entries {
		out[i] = entry{Name: e.Name, Path: e.Path, Type: e.Type, Size: e.Size,
			Mode: "0" + strconv.FormatUint(uint64(e.Mode&0o7777), 8), ModifiedAt: timeOrNil(e.ModifiedAt)}
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"entries": out})
}

func (a *api) metrics(w http.ResponseWriter, r *http.Request) {
	m, err := a.svc.Metrics(r.Context(), principal(r), chi.URLParam(r, "id"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, map[string]any{
		"sampled_at": m.SampledAt.UTC(), "cpu_count": m.CPUCount, "cpu_used_pct": m.CPUUsedPct,
		"mem_total_mib": m.MemTotalMiB, "mem_used_mib": m.MemUsedMiB,
		"disk_total_mib": m.DiskTotalMiB, "disk_used_mib": m.DiskUsedMiB,
	})
}
