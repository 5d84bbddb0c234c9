//go:build linux

package process

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/goleak"

	"wrenn.dev/wrenn/internal/envd/identity"
	rpc "wrenn.dev/wrenn/internal/gen/process"
	"wrenn.dev/wrenn/internal/gen/process/processconnect"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every wait in a test, so a bug fails instead of hanging.
const testTimeout = 60 * time.Second

// flavor is a transport and codec combination the SDKs use.
type flavor struct {
	name string
	h2c  bool // HTTP/2 without TLS; else HTTP/1.1
	json bool // Connect JSON codec; else binary protobuf
}

var flavors = []flavor{
	{name: "http1-json", json: true},
	{name: "h2c-binary", h2c: true},
}

// h2cBinary is the flavor for tests that need only one.
var h2cBinary = flavors[1]

// forEachFlavor runs f as a subtest per flavor.
func forEachFlavor(t *testing.T, f func(t *testing.T, fl flavor)) {
	for _, fl := range flavors {
		t.Run(fl.name, func(t *testing.T) { f(t, fl) })
	}
}

// harness is a Service served over HTTP with a generated client.
type harness struct {
	t      *testing.T
	svc    *Service
	client processconnect.ProcessClient

	url        string
	httpClient *http.Client
}

type tLogWriter struct{ t *testing.T }

func (w tLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// newHarness serves a new Service. configure, if not nil, adjusts the
// Service (its cfg, drainGrace, hooks) before it serves anything.
func newHarness(t *testing.T, fl flavor, configure func(*Service)) *harness {
	t.Helper()
	cfg := Config{
		Users:  identity.NewResolver("root"),
		Logger: slog.New(slog.NewTextHandler(tLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	svc := New(cfg)
	svc.drainGrace = 500 * time.Millisecond
	if configure != nil {
		configure(svc)
	}

	mux := http.NewServeMux()
	mux.Handle(processconnect.NewProcessHandler(svc))
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()

	transport := &http.Transport{Protocols: new(http.Protocols)}
	if fl.h2c {
		transport.Protocols.SetUnencryptedHTTP2(true)
	} else {
		transport.Protocols.SetHTTP1(true)
	}
	h := &harness{t: t, svc: svc, url: srv.URL, httpClient: &http.Client{Transport: transport}}
	h.client = h.newClient(fl)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if err := svc.Close(ctx); err != nil {
			t.Errorf("Close() = %v", err)
		}
		srv.Close()
		transport.CloseIdleConnections()
	})
	return h
}

// newClient returns another client of the harness's server.
func (h *harness) newClient(fl flavor, opts ...connect.ClientOption) processconnect.ProcessClient {
	if fl.json {
		opts = append(opts, connect.WithProtoJSON())
	}
	return processconnect.NewProcessClient(h.httpClient, h.url, opts...)
}

// ctx returns a context bounded by testTimeout.
func (h *harness) ctx() context.Context {
	ctx, cancel := context.WithTimeout(h.t.Context(), testTimeout)
	h.t.Cleanup(cancel)
	return ctx
}

func basicAuth(user string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"))
}

// command returns a StartRequest for cmd with args.
func command(cmd string, args ...string) *rpc.StartRequest {
	return &rpc.StartRequest{Process: &rpc.ProcessConfig{Cmd: cmd, Args: args}}
}

// shell returns a StartRequest running script with /bin/sh.
func shell(script string) *rpc.StartRequest {
	return command("/bin/sh", "-c", script)
}

// events reads one process's event stream and checks its shape: start
// first, then data and keepalives, then exactly one end, then nothing.
type events[T any] struct {
	t      *testing.T
	stream *connect.ServerStreamForClient[T]
	pid    uint32

	stdout, stderr, pty bytes.Buffer
	keepalives          int
	end                 *rpc.ProcessEvent_EndEvent
}

type eventMsg interface{ GetEvent() *rpc.ProcessEvent }

// openEvents reads the start event of a stream. It fails the test when
// the stream fails first.
func openEvents[T any](t *testing.T, stream *connect.ServerStreamForClient[T], err error) *events[T] {
	t.Helper()
	ev, err := tryOpenEvents(t, stream, err)
	if err != nil {
		t.Fatalf("stream failed before its start event: %v", err)
	}
	return ev
}

func tryOpenEvents[T any](t *testing.T, stream *connect.ServerStreamForClient[T], err error) (*events[T], error) {
	t.Helper()
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { stream.Close() })
	e := &events[T]{t: t, stream: stream}
	first, err := e.next()
	if err != nil {
		return nil, err
	}
	start := first.GetStart()
	if start == nil {
		t.Fatalf("first event = %v, want start", first)
	}
	if start.GetPid() == 0 {
		t.Fatalf("start event has pid 0")
	}
	e.pid = start.GetPid()
	return e, nil
}

// next reads one event and accumulates it.
func (e *events[T]) next() (*rpc.ProcessEvent, error) {
	e.t.Helper()
	if !e.stream.Receive() {
		if err := e.stream.Err(); err != nil {
			return nil, err
		}
		return nil, io.ErrUnexpectedEOF
	}
	ev := any(e.stream.Msg()).(eventMsg).GetEvent()
	if e.end != nil {
		e.t.Fatalf("event %v after the end event", ev)
	}
	switch v := ev.GetEvent().(type) {
	case *rpc.ProcessEvent_Start:
		if e.pid != 0 {
			e.t.Fatalf("second start event %v", v)
		}
	case *rpc.ProcessEvent_Data:
		switch {
		case v.Data.GetStdout() != nil:
			e.stdout.Write(v.Data.GetStdout())
		case v.Data.GetStderr() != nil:
			e.stderr.Write(v.Data.GetStderr())
		case v.Data.GetPty() != nil:
			e.pty.Write(v.Data.GetPty())
		default:
			e.t.Fatalf("empty data event")
		}
	case *rpc.ProcessEvent_Keepalive:
		e.keepalives++
	case *rpc.ProcessEvent_End:
		e.end = v.End
	default:
		e.t.Fatalf("event with no content: %v", ev)
	}
	return ev, nil
}

// until reads events until cond holds; it fails the test if the stream
// ends or fails first.
func (e *events[T]) until(what string, cond func() bool) {
	e.t.Helper()
	for !cond() {
		if e.end != nil {
			e.t.Fatalf("process ended (%v) before %s; %s", e.end, what, e.outputs())
		}
		if _, err := e.next(); err != nil {
			e.t.Fatalf("stream failed waiting for %s: %v; %s", what, err, e.outputs())
		}
	}
}

// outputs describes what was received, for failure messages.
func (e *events[T]) outputs() string {
	return fmt.Sprintf("stdout %s, stderr %s, pty %s", abbrev(e.stdout.Bytes()), abbrev(e.stderr.Bytes()), abbrev(e.pty.Bytes()))
}

// abbrev quotes b, eliding the middle of long output.
func abbrev(b []byte) string {
	const keep = 100
	if len(b) <= 2*keep {
		return fmt.Sprintf("%q", b)
	}
	return fmt.Sprintf("%q...%q (%d bytes)", b[:keep], b[len(b)-keep:], len(b))
}

// wait reads to the end event and checks that the stream then closes
// cleanly.
func (e *events[T]) wait() *rpc.ProcessEvent_EndEvent {
	e.t.Helper()
	e.until("the end event", func() bool { return e.end != nil })
	if e.stream.Receive() {
		e.t.Fatalf("event %v after the end event", e.stream.Msg())
	}
	if err := e.stream.Err(); err != nil {
		e.t.Fatalf("stream error after the end event: %v", err)
	}
	return e.end
}

// start starts req and reads its start event.
func (h *harness) start(ctx context.Context, req *rpc.StartRequest, header ...string) *events[rpc.StartResponse] {
	h.t.Helper()
	s, err := h.startStream(ctx, req, header...)
	return openEvents(h.t, s, err)
}

func (h *harness) startStream(ctx context.Context, msg *rpc.StartRequest, header ...string) (*connect.ServerStreamForClient[rpc.StartResponse], error) {
	req := connect.NewRequest(msg)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header().Set(header[i], header[i+1])
	}
	return h.client.Start(ctx, req)
}

// connect attaches to the process sel names.
func (h *harness) connect(ctx context.Context, sel *rpc.ProcessSelector, header ...string) *events[rpc.ConnectResponse] {
	h.t.Helper()
	req := connect.NewRequest(&rpc.ConnectRequest{Process: sel})
	for i := 0; i+1 < len(header); i += 2 {
		req.Header().Set(header[i], header[i+1])
	}
	s, err := h.client.Connect(ctx, req)
	return openEvents(h.t, s, err)
}

func byPID(pid uint32) *rpc.ProcessSelector {
	return &rpc.ProcessSelector{Selector: &rpc.ProcessSelector_Pid{Pid: pid}}
}

func byTag(tag string) *rpc.ProcessSelector {
	return &rpc.ProcessSelector{Selector: &rpc.ProcessSelector_Tag{Tag: tag}}
}

func stdinInput(b []byte) *rpc.ProcessInput {
	return &rpc.ProcessInput{Input: &rpc.ProcessInput_Stdin{Stdin: b}}
}

func ptyInput(b []byte) *rpc.ProcessInput {
	return &rpc.ProcessInput{Input: &rpc.ProcessInput_Pty{Pty: b}}
}

func (h *harness) sendInput(sel *rpc.ProcessSelector, in *rpc.ProcessInput) error {
	_, err := h.client.SendInput(h.ctx(), connect.NewRequest(&rpc.SendInputRequest{Process: sel, Input: in}))
	return err
}

func (h *harness) closeStdin(sel *rpc.ProcessSelector) error {
	_, err := h.client.CloseStdin(h.ctx(), connect.NewRequest(&rpc.CloseStdinRequest{Process: sel}))
	return err
}

func (h *harness) sendSignal(sel *rpc.ProcessSelector, sig rpc.Signal) error {
	_, err := h.client.SendSignal(h.ctx(), connect.NewRequest(&rpc.SendSignalRequest{Process: sel, Signal: sig}))
	return err
}

func (h *harness) resize(sel *rpc.ProcessSelector, cols, rows uint32) error {
	_, err := h.client.Update(h.ctx(), connect.NewRequest(&rpc.UpdateRequest{
		Process: sel,
		Pty:     &rpc.PTY{Size: &rpc.PTY_Size{Cols: cols, Rows: rows}},
	}))
	return err
}

func (h *harness) list() []*rpc.ProcessInfo {
	h.t.Helper()
	res, err := h.client.List(h.ctx(), connect.NewRequest(&rpc.ListRequest{}))
	if err != nil {
		h.t.Fatalf("List() = %v", err)
	}
	return res.Msg.GetProcesses()
}

// subscribers returns how many subscribers the process with pid has.
func (h *harness) subscribers(pid uint32) int {
	h.svc.mu.Lock()
	p := h.svc.procs[pid]
	h.svc.mu.Unlock()
	if p == nil {
		return -1
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.subs)
}

// wantCode checks that err is a Connect error with code want whose message
// contains every one of substr.
func wantCode(t *testing.T, call string, err error, want connect.Code, substr ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s = nil, want %v", call, want)
		return
	}
	if got := connect.CodeOf(err); got != want {
		t.Errorf("%s = %v (code %v), want code %v", call, err, got, want)
		return
	}
	var ce *connect.Error
	msg := err.Error()
	if errors.As(err, &ce) {
		msg = ce.Message()
	}
	for _, s := range substr {
		if !strings.Contains(msg, s) {
			t.Errorf("%s message %q does not contain %q", call, msg, s)
		}
	}
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("read /proc/self/fd: %v", err)
	}
	return len(entries) - 1 // the directory being read
}

// fdNames lists open descriptors, for failure messages.
func fdNames() string {
	entries, _ := os.ReadDir("/proc/self/fd")
	var b strings.Builder
	for _, e := range entries {
		target, _ := os.Readlink("/proc/self/fd/" + e.Name())
		b.WriteString(e.Name() + "->" + target + " ")
	}
	return b.String()
}
