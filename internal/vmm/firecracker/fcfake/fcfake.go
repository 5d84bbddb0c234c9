// Package fcfake is a fake Firecracker: an HTTP server on a Unix socket that
// speaks the subset of Firecracker's API that Wrenn uses and enforces its
// documented contract, for tests that cannot run a real VMM.
//
// The fake is strict where Firecracker is strict, with the same status codes
// and the same fault messages ({"fault_message": ...}, 400 for bad input and
// state-rule violations, 413 for an oversized MMDS store):
//
//   - bodies are deserialised like serde with deny_unknown_fields: unknown
//     keys, missing required fields and bad enum values are rejected;
//   - boot-source, drives, machine-config, network-interfaces, mmds/config,
//     entropy, logger, metrics and snapshot/load are pre-boot only;
//     PATCH /vm, snapshot/create, SendCtrlAltDel and FlushMetrics are
//     post-boot only;
//   - InstanceStart needs a boot source (and, a Wrenn rule stricter than
//     Firecracker, a root drive);
//   - snapshot/create needs a paused VM; snapshot/load needs a fresh process
//     on which no boot resource was configured (logger and metrics are
//     allowed), and a failed load makes the process exit, as Firecracker does;
//   - mmds/config must name network interfaces that are already attached;
//     PATCH /mmds needs a data store created by PUT /mmds; MMDS data is not
//     part of a snapshot (its config is); with Options.RequireMMDSConfig
//     (stricter than Firecracker) no data is accepted before a config;
//   - files named in requests (kernel, initrd, drives, snapshot files, the
//     UFFD socket) must exist, relative paths resolve against the process's
//     working directory as in Firecracker, and Options.Root simulates the
//     jailer's chroot.
//
// Every request is recorded (see Server.Calls and Options.CallLog) so tests
// can assert the order of calls. Main runs the fake as a stand-in for the
// firecracker binary and JailerMain as a stand-in for the jailer, so a
// driver can be tested end to end against a real child process.
package fcfake

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
	"sync"
	"time"
)

// Instance states as reported by GET /.
const (
	StateNotStarted = "Not started"
	StateRunning    = "Running"
	StatePaused     = "Paused"
)

// Firecracker's fault messages for the state rules.
const (
	msgNotAfterStart  = "The requested operation is not supported after starting the microVM."
	msgNotBeforeStart = "The requested operation is not supported before starting the microVM."
	msgLoadNotAllowed = "Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources."
	msgNotPaused      = "Create snapshot error: Cannot save the microVM state: Operation not allowed: save/restore unavailable while running"
	msgNoKernel       = "Start microvm error: Cannot start microvm without kernel configuration."
	msgNoRootDrive    = "Start microvm error: Cannot start microvm without a root block device (fcfake: Wrenn always boots from one)."
	msgMMDSNotInit    = "MMDS error: The MMDS data store is not initialized."
	msgMMDSTooLarge   = "MMDS limit exceeded error: The MMDS data store would exceed its size limit."
	msgMetricsNotInit = "Internal VMM error: Metrics error: The metrics system is not initialized."
	msgMetricsReinit  = "Metrics error: Reinitialization of metrics not allowed."
	msgMMDSNoConfig   = "fcfake: MMDS data before an MMDS config naming an attached interface (Options.RequireMMDSConfig)."
	msgEmptyID        = "The ID cannot be empty."
	msgBadID          = "API Resource IDs can only contain alphanumeric characters and underscores."
)

// Log attribute keys.
const (
	logKeyMethod = "method"
	logKeyPath   = "path"
	logKeyStatus = "status"
	logKeyFault  = "fault"
	logKeyErr    = "err"
)

// DefaultVersion is the Firecracker version the fake reports.
const DefaultVersion = "1.13.1"

// DefaultPayloadLimit is Firecracker's default --http-api-max-payload-size,
// which also bounds the MMDS data store.
const DefaultPayloadLimit = 51200

// Options configures a fake.
type Options struct {
	// ID is the instance id reported by GET / (Firecracker's --id).
	// Default "anonymous-instance".
	ID string
	// Version is the Firecracker version reported. Default DefaultVersion.
	Version string
	// Root, when set, is prepended to every path in requests and to the
	// API socket path, simulating the chroot the jailer builds.
	Root string
	// IgnoreCtrlAltDel makes the simulated guest ignore SendCtrlAltDel.
	// By default a running guest reboots on it and, as with reboot=k on
	// Firecracker, the VMM exits with status 0.
	IgnoreCtrlAltDel bool
	// RequireMMDSConfig refuses MMDS data (PUT and PATCH /mmds) until an
	// MMDS config names an attached interface. Firecracker itself creates
	// the data store on demand; Wrenn's driver never relies on that, and
	// this rule proves it.
	RequireMMDSConfig bool
	// CallLog, when set, receives every call as one JSON line (a Call)
	// before its response is sent.
	CallLog io.Writer
	// Logger receives the fake's own log. Default: discard.
	Logger *slog.Logger
}

// Call is one recorded API request and the fake's answer.
type Call struct {
	Method string `json:"method"`
	Path   string `json:"path"`
	Body   string `json:"body,omitempty"`
	Status int    `json:"status"`
	Fault  string `json:"fault,omitempty"`
}

// String is "METHOD /path", the form tests compare sequences in.
func (c Call) String() string { return c.Method + " " + c.Path }

// OK reports whether the call succeeded.
func (c Call) OK() bool { return c.Status/100 == 2 }

// Server is a fake Firecracker API server. It is an http.Handler; Listen
// serves it on a Unix socket.
type Server struct {
	opts Options
	log  *slog.Logger

	mu sync.Mutex
	vm vmState
	// calls is every request in arrival order.
	calls []Call

	exitOnce sync.Once
	exited   chan struct{}
	exitCode int // set before exited is closed

	// Set by Listen.
	socket    string
	hs        *http.Server
	serveDone chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// New returns a fake in the state of a freshly started Firecracker process.
func New(opts Options) *Server {
	if opts.ID == "" {
		opts.ID = "anonymous-instance"
	}
	if opts.Version == "" {
		opts.Version = DefaultVersion
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{opts: opts, log: log, vm: newVMState(), exited: make(chan struct{})}
}

// Listen starts a fake serving on the Unix socket at path (under
// Options.Root when set). Like Firecracker it refuses to start when the
// socket path already exists.
func Listen(path string, opts Options) (*Server, error) {
	s := New(opts)
	s.socket = s.resolve(path)
	if _, err := os.Lstat(s.socket); err == nil {
		return nil, fmt.Errorf("fcfake: api socket %s: %w", s.socket, os.ErrExist)
	}
	ln, err := net.Listen("unix", s.socket)
	if err != nil {
		return nil, fmt.Errorf("fcfake: listen: %w", err)
	}
	// Like Firecracker, leave the socket file behind when the process dies;
	// Close removes it explicitly.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	s.hs = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	s.serveDone = make(chan struct{})
	go func() {
		defer close(s.serveDone)
		_ = s.hs.Serve(ln)
	}()
	return s, nil
}

// Socket returns the host path of the socket Listen serves on.
func (s *Server) Socket() string { return s.socket }

// Close stops serving (waiting for requests in flight) and removes the
// socket. It is idempotent.
func (s *Server) Close() error { return s.stop(true) }

func (s *Server) stop(graceful bool) error {
	s.closeOnce.Do(func() {
		if s.hs == nil {
			return
		}
		if graceful {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := s.hs.Shutdown(ctx); err != nil {
				s.closeErr = errors.Join(err, s.hs.Close())
			}
		} else {
			s.closeErr = s.hs.Close()
		}
		<-s.serveDone
		if err := os.Remove(s.socket); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.closeErr = errors.Join(s.closeErr, err)
		}
	})
	return s.closeErr
}

// Exited is closed when the simulated VMM has exited: after a
// SendCtrlAltDel the guest acted on, or after a failed snapshot load. A
// listening fake has then stopped serving and removed its socket.
func (s *Server) Exited() <-chan struct{} { return s.exited }

// ExitCode is the simulated VMM's exit status; meaningful after Exited.
func (s *Server) ExitCode() int {
	<-s.exited
	return s.exitCode
}

// Calls returns every request so far, in order.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Call(nil), s.calls...)
}

// State returns the instance state as GET / reports it.
func (s *Server) State() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.vm.state()
}

// MMDS returns the MMDS data store's content (nil when not initialised).
func (s *Server) MMDS() any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.vm.mmdsData
}

// resolve maps a path from a request to the host, as the jailed (or not)
// Firecracker process would see it.
func (s *Server) resolve(p string) string {
	if s.opts.Root == "" {
		return p
	}
	return filepath.Join(s.opts.Root, p)
}

// answer is a handler's outcome.
type answer struct {
	status int
	body   any    // JSON body for 200
	fault  string // fault message for errors
	// exit makes the simulated VMM exit with exitCode after answering.
	exit     bool
	exitCode int
}

func ok() answer              { return answer{status: http.StatusNoContent} }
func okJSON(v any) answer     { return answer{status: http.StatusOK, body: v} }
func bad(msg string) answer   { return answer{status: http.StatusBadRequest, fault: msg} }
func badErr(err error) answer { return bad(err.Error()) }
func fatal(msg string) answer {
	return answer{status: http.StatusBadRequest, fault: msg, exit: true, exitCode: 1}
}
func tooLarge(msg string) answer { return answer{status: http.StatusRequestEntityTooLarge, fault: msg} }
func exitAfter(a answer, code int) answer {
	a.exit, a.exitCode = true, code
	return a
}

// ServeHTTP handles one API request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, DefaultPayloadLimit+1))
	var a answer
	switch {
	case err != nil:
		a = bad("fcfake: reading request body: " + err.Error())
	case len(body) > DefaultPayloadLimit:
		a = tooLarge(fmt.Sprintf("Request payload with size %d is larger than the limit of %d allowed by server.",
			len(body), DefaultPayloadLimit))
	default:
		s.mu.Lock()
		a = s.route(r.Method, r.URL.Path, body)
		s.mu.Unlock()
	}
	c := Call{Method: r.Method, Path: r.URL.Path, Body: string(body), Status: a.status, Fault: a.fault}
	s.record(c)

	var out []byte
	switch {
	case a.fault != "":
		out, _ = json.Marshal(map[string]string{"fault_message": a.fault})
	case a.body != nil:
		out, _ = json.Marshal(a.body)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	w.WriteHeader(a.status)
	_, _ = w.Write(out)
	if a.exit {
		// The whole answer is on the wire before the "process" dies.
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		s.exit(a.exitCode)
	}
}

func (s *Server) record(c Call) {
	s.mu.Lock()
	s.calls = append(s.calls, c)
	s.mu.Unlock()
	if s.opts.CallLog != nil {
		line, _ := json.Marshal(c)
		_, _ = s.opts.CallLog.Write(append(line, '\n'))
	}
	if c.OK() {
		s.log.Debug("fcfake call", logKeyMethod, c.Method, logKeyPath, c.Path, logKeyStatus, c.Status)
	} else {
		s.log.Debug("fcfake call rejected", logKeyMethod, c.Method, logKeyPath, c.Path, logKeyStatus, c.Status, logKeyFault, c.Fault)
	}
}

// exit simulates the VMM process exiting: it stops serving at once, as a
// dying process would, and closes Exited.
func (s *Server) exit(code int) {
	s.exitOnce.Do(func() {
		s.exitCode = code
		if err := s.stop(false); err != nil {
			s.log.Warn("fcfake stop on exit", logKeyErr, err)
		}
		close(s.exited)
	})
}
