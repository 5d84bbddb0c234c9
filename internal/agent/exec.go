package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"wrenn.dev/wrenn/internal/errdefs"
	fspb "wrenn.dev/wrenn/internal/gen/filesystem"
	processpb "wrenn.dev/wrenn/internal/gen/process"
	"wrenn.dev/wrenn/internal/sandbox"
)

// envdFor returns the envd of a running sandbox. Other states are
// errdefs.ErrFailedPrecondition, naming the state (and the reason for a
// stopped or dead one).
func (m *Manager) envdFor(id string) (*envdClient, error) {
	if err := m.ready(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.boxes[id]
	if !ok {
		return nil, errdefs.NotFound("sandbox %s not found", id)
	}
	switch st := b.sb.State; {
	case st == sandbox.StateRunning && b.envd != nil:
		return b.envd, nil
	case st.Terminal():
		return nil, errdefs.FailedPrecondition("sandbox %s is %s: %s", id, st, b.sb.Reason)
	default:
		return nil, errdefs.FailedPrecondition("sandbox %s is %s, not running", id, st)
	}
}

// ExecRequest is a command to run in a sandbox.
type ExecRequest struct {
	Cmd  string
	Args []string
	// Envs are added to the sandbox's default environment.
	Envs map[string]string
	// Cwd is the working directory; "" is the user's default.
	Cwd string
	// User runs the command; "" is the sandbox's default user.
	User string
	// Timeout kills the command when it passes; 0 means no limit.
	Timeout time.Duration
	// Stdin is written to the command's standard input, which is then
	// closed. nil: the command's stdin is empty.
	Stdin []byte
}

// ExitStatus is how a process ended.
type ExitStatus struct {
	// Code is the exit code; -1 when a signal ended the process.
	Code int
	// Exited is false when a signal ended the process.
	Exited bool
	// Status is envd's description, e.g. "exit status 1" or "signal: killed".
	Status string
	// Error is set when the process could not be run as asked.
	Error string
}

// ExecEvent is one event of a running command. Exactly one of its fields
// is set: Started (with PID), Stdout, Stderr, or Exit (the last event).
type ExecEvent struct {
	Started bool
	PID     uint32
	Stdout  []byte
	Stderr  []byte
	Exit    *ExitStatus
}

// stdinChunk is the largest piece of stdin sent in one message.
const stdinChunk = 64 << 10

// Exec runs a command in the sandbox and passes its events to emit, in
// order: started, output, exit. It returns once the command has exited
// (nil, the exit status being the last event), or with an error when the
// command could not be run, emit failed, or the stream broke. A Timeout
// that passes is errdefs.ErrDeadlineExceeded. ctx ending stops the
// streaming; the command then runs on until it ends or its Timeout.
func (m *Manager) Exec(ctx context.Context, id string, req ExecRequest, emit func(ExecEvent) error) error {
	if req.Cmd == "" {
		return errdefs.InvalidArgument("cmd is required")
	}
	if req.Timeout < 0 {
		return errdefs.InvalidArgument("timeout %s is negative", req.Timeout)
	}
	envd, err := m.envdFor(id)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if req.Timeout > 0 {
		// envd kills the process when the deadline it is sent passes.
		ctx, cancel = context.WithTimeout(ctx, req.Timeout)
		defer cancel()
	}
	cwd := optional(req.Cwd)
	start := connect.NewRequest(&processpb.StartRequest{
		Process: &processpb.ProcessConfig{Cmd: req.Cmd, Args: req.Args, Envs: req.Envs, Cwd: cwd},
		Stdin:   proto.Bool(req.Stdin != nil),
	})
	setUser(start.Header(), req.User)
	stream, err := envd.proc.Start(ctx, start)
	if err != nil {
		return m.execError(ctx, id, req, err)
	}
	defer stream.Close()

	// The stdin writer ends (its context cancelled) before Exec returns.
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	for stream.Receive() {
		ev := stream.Msg().GetEvent()
		var out ExecEvent
		switch {
		case ev.GetStart() != nil:
			out = ExecEvent{Started: true, PID: ev.GetStart().GetPid()}
			if req.Stdin != nil {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := sendStdin(ctx, envd, out.PID, req.User, req.Stdin); err != nil && ctx.Err() == nil {
						m.log.Debug("stdin not fully written", logKeySandbox, id, logKeyPID, out.PID, logKeyErr, err)
					}
				}()
			}
		case ev.GetData() != nil:
			d := ev.GetData()
			switch {
			case d.GetStdout() != nil:
				out = ExecEvent{Stdout: d.GetStdout()}
			case d.GetStderr() != nil:
				out = ExecEvent{Stderr: d.GetStderr()}
			default:
				continue
			}
		case ev.GetEnd() != nil:
			out = ExecEvent{Exit: exitStatus(ev.GetEnd())}
		default:
			continue // keepalive
		}
		if err := emit(out); err != nil {
			cancel()
			return err
		}
		if out.Exit != nil {
			return nil
		}
	}
	return m.execError(ctx, id, req, stream.Err())
}

// execError classifies the end of an exec stream that had no exit event.
func (m *Manager) execError(ctx context.Context, id string, req ExecRequest, err error) error {
	switch {
	case err == nil:
		err = errors.New("stream ended without an exit event")
	case req.Timeout > 0 && errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("exec in sandbox %s: %w", id, errdefs.ErrDeadlineExceeded)
	}
	return fmt.Errorf("exec in sandbox %s: %w", id, rpcError(err))
}

// sendStdin writes data to pid's stdin in chunks, then closes it.
func sendStdin(ctx context.Context, envd *envdClient, pid uint32, user string, data []byte) error {
	sel := &processpb.ProcessSelector{Selector: &processpb.ProcessSelector_Pid{Pid: pid}}
	for len(data) > 0 {
		n := min(len(data), stdinChunk)
		req := connect.NewRequest(&processpb.SendInputRequest{
			Process: sel,
			Input:   &processpb.ProcessInput{Input: &processpb.ProcessInput_Stdin{Stdin: data[:n]}},
		})
		setUser(req.Header(), user)
		if _, err := envd.proc.SendInput(ctx, req); err != nil {
			return rpcError(err)
		}
		data = data[n:]
	}
	req := connect.NewRequest(&processpb.CloseStdinRequest{Process: sel})
	setUser(req.Header(), user)
	_, err := envd.proc.CloseStdin(ctx, req)
	return rpcError(err)
}

func exitStatus(e *processpb.ProcessEvent_EndEvent) *ExitStatus {
	return &ExitStatus{Code: int(e.GetExitCode()), Exited: e.GetExited(), Status: e.GetStatus(), Error: e.GetError()}
}

func optional(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// FileInfo describes a file written into a sandbox.
type FileInfo struct {
	// Path is the absolute path written (relative paths are taken from
	// the user's home).
	Path string
	Size int64
}

// WriteFile streams r into the file at path in the sandbox, as user ("":
// the default user). Parent directories are made; the file is replaced
// atomically once all of r is in.
func (m *Manager) WriteFile(ctx context.Context, id, path, user string, r io.Reader) (FileInfo, error) {
	if path == "" {
		return FileInfo{}, errdefs.InvalidArgument("path is required")
	}
	envd, err := m.envdFor(id)
	if err != nil {
		return FileInfo{}, err
	}
	cr := &countingReader{r: r}
	written, err := envd.upload(ctx, path, user, cr)
	if err != nil {
		return FileInfo{}, fmt.Errorf("write %s in sandbox %s: %w", path, id, err)
	}
	return FileInfo{Path: written, Size: cr.n}, nil
}

// ReadFile streams the file at path in the sandbox into w, as user.
func (m *Manager) ReadFile(ctx context.Context, id, path, user string, w io.Writer) (int64, error) {
	if path == "" {
		return 0, errdefs.InvalidArgument("path is required")
	}
	envd, err := m.envdFor(id)
	if err != nil {
		return 0, err
	}
	n, err := envd.download(ctx, path, user, w)
	if err != nil {
		return n, fmt.Errorf("read %s in sandbox %s: %w", path, id, err)
	}
	return n, nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// PTYRequest opens a terminal in a sandbox, or attaches to a running one.
type PTYRequest struct {
	// PID attaches to this running terminal process; 0 starts one.
	PID uint32
	// Cols and Rows size the terminal; 0 means 80 and 24. Ignored when
	// attaching (use Resize).
	Cols, Rows uint32
	// User runs the terminal's process; "" is the default user.
	User string
	// Cmd and Args are the process; empty Cmd is the template's shell as a
	// login shell.
	Cmd  string
	Args []string
	// Envs are added to the default environment (TERM defaults to
	// xterm-256color).
	Envs map[string]string
	// Cwd is the working directory; "" is the user's default.
	Cwd string
}

// PTYEvent is terminal output, or the terminal process's exit (last).
type PTYEvent struct {
	Output []byte
	Exit   *ExitStatus
}

// PTY is an open terminal stream. Next delivers its output; Input and
// Resize may be called concurrently with Next. Close detaches: the
// process keeps running and can be attached to again by PID.
type PTY struct {
	pid    uint32
	user   string
	envd   *envdClient
	sel    *processpb.ProcessSelector
	cancel context.CancelFunc
	recv   func() (*processpb.ProcessEvent, error)
	close  func() error
	exited bool
}

// OpenPTY starts a terminal process (or attaches to the one with
// req.PID) and returns its stream, positioned after the start. The stream
// lives until ctx ends, Close is called, or the process exits.
func (m *Manager) OpenPTY(ctx context.Context, id string, req PTYRequest) (*PTY, error) {
	envd, err := m.envdFor(id)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	p := &PTY{user: req.User, envd: envd, cancel: cancel}
	if req.PID != 0 {
		err = p.attach(ctx, req.PID)
	} else {
		err = p.start(ctx, m.ptyStart(id, req))
	}
	if err != nil {
		cancel()
		return nil, fmt.Errorf("open terminal in sandbox %s: %w", id, err)
	}
	// The first event names the process.
	ev, err := p.recv()
	if err != nil || ev.GetStart() == nil {
		p.Close()
		if err == nil {
			err = errors.New("envd sent no start event")
		}
		return nil, fmt.Errorf("open terminal in sandbox %s: %w", id, rpcError(err))
	}
	p.pid = ev.GetStart().GetPid()
	p.sel = &processpb.ProcessSelector{Selector: &processpb.ProcessSelector_Pid{Pid: p.pid}}
	return p, nil
}

// ptyStart builds the start request of a new terminal.
func (m *Manager) ptyStart(id string, req PTYRequest) *processpb.StartRequest {
	cols, rows := req.Cols, req.Rows
	if cols == 0 {
		cols = 80
	}
	if rows == 0 {
		rows = 24
	}
	cmd, args := req.Cmd, req.Args
	if cmd == "" {
		cmd, args = "/bin/sh", []string{"-l"}
		m.mu.Lock()
		if b, ok := m.boxes[id]; ok && b.shell != "" {
			cmd = b.shell
		}
		m.mu.Unlock()
	}
	envs := maps.Clone(req.Envs)
	if envs == nil {
		envs = map[string]string{}
	}
	if _, ok := envs["TERM"]; !ok {
		envs["TERM"] = "xterm-256color"
	}
	return &processpb.StartRequest{
		Process: &processpb.ProcessConfig{Cmd: cmd, Args: args, Envs: envs, Cwd: optional(req.Cwd)},
		Pty:     &processpb.PTY{Size: &processpb.PTY_Size{Cols: cols, Rows: rows}},
	}
}

func (p *PTY) start(ctx context.Context, msg *processpb.StartRequest) error {
	req := connect.NewRequest(msg)
	setUser(req.Header(), p.user)
	s, err := p.envd.proc.Start(ctx, req)
	if err != nil {
		return rpcError(err)
	}
	follow(p, s, (*processpb.StartResponse).GetEvent)
	return nil
}

func (p *PTY) attach(ctx context.Context, pid uint32) error {
	req := connect.NewRequest(&processpb.ConnectRequest{
		Process: &processpb.ProcessSelector{Selector: &processpb.ProcessSelector_Pid{Pid: pid}},
	})
	setUser(req.Header(), p.user)
	s, err := p.envd.proc.Connect(ctx, req)
	if err != nil {
		return rpcError(err)
	}
	follow(p, s, (*processpb.ConnectResponse).GetEvent)
	return nil
}

// follow makes p read its events from s, a Start or Connect stream.
func follow[T any](p *PTY, s *connect.ServerStreamForClient[T], event func(*T) *processpb.ProcessEvent) {
	p.recv = func() (*processpb.ProcessEvent, error) {
		if s.Receive() {
			return event(s.Msg()), nil
		}
		return nil, streamEnd(s.Err())
	}
	p.close = s.Close
}

// streamEnd is the error of a stream that ended: io.ErrUnexpectedEOF when
// it ended cleanly (no exit event came), the classified error otherwise.
func streamEnd(err error) error {
	if err == nil {
		return io.ErrUnexpectedEOF
	}
	return rpcError(err)
}

// PID returns the terminal process's pid (for reattaching).
func (p *PTY) PID() uint32 { return p.pid }

// Next returns the next output or the exit; after the exit, io.EOF.
func (p *PTY) Next() (PTYEvent, error) {
	if p.exited {
		return PTYEvent{}, io.EOF
	}
	for {
		ev, err := p.recv()
		if err != nil {
			return PTYEvent{}, err
		}
		switch {
		case ev.GetData() != nil:
			d := ev.GetData()
			out := d.GetPty()
			if out == nil {
				out = d.GetStdout()
			}
			if out == nil {
				out = d.GetStderr()
			}
			if len(out) > 0 {
				return PTYEvent{Output: out}, nil
			}
		case ev.GetEnd() != nil:
			p.exited = true
			return PTYEvent{Exit: exitStatus(ev.GetEnd())}, nil
		}
	}
}

// Input writes keystrokes to the terminal.
func (p *PTY) Input(ctx context.Context, data []byte) error {
	for len(data) > 0 {
		n := min(len(data), stdinChunk)
		req := connect.NewRequest(&processpb.SendInputRequest{
			Process: p.sel,
			Input:   &processpb.ProcessInput{Input: &processpb.ProcessInput_Pty{Pty: data[:n]}},
		})
		setUser(req.Header(), p.user)
		if _, err := p.envd.proc.SendInput(ctx, req); err != nil {
			return fmt.Errorf("terminal input: %w", rpcError(err))
		}
		data = data[n:]
	}
	return nil
}

// Resize changes the terminal's size.
func (p *PTY) Resize(ctx context.Context, cols, rows uint32) error {
	if cols == 0 || rows == 0 {
		return errdefs.InvalidArgument("terminal size %dx%d: both must be positive", cols, rows)
	}
	req := connect.NewRequest(&processpb.UpdateRequest{
		Process: p.sel,
		Pty:     &processpb.PTY{Size: &processpb.PTY_Size{Cols: cols, Rows: rows}},
	})
	setUser(req.Header(), p.user)
	if _, err := p.envd.proc.Update(ctx, req); err != nil {
		return fmt.Errorf("terminal resize: %w", rpcError(err))
	}
	return nil
}

// Close ends the stream; the process keeps running. Idempotent.
func (p *PTY) Close() error {
	p.cancel()
	if p.close != nil {
		return p.close()
	}
	return nil
}

// DirEntry is one entry of a directory in a sandbox.
type DirEntry struct {
	Name, Path string
	// Type is "file", "dir" or "symlink".
	Type       string
	Size       uint64
	Mode       os.FileMode
	ModifiedAt time.Time
}

// maxDirEntries bounds one listing, so a huge directory cannot make the
// agent hold an unbounded answer.
const maxDirEntries = 10000

// ListDir lists the directory path in a running sandbox as user,
// directories first, then by name. A missing path is errdefs.ErrNotFound;
// a path that is not a directory errdefs.ErrInvalidArgument.
func (m *Manager) ListDir(ctx context.Context, id, path, user string) ([]DirEntry, error) {
	if path == "" {
		return nil, errdefs.InvalidArgument("path is required")
	}
	envd, err := m.envdFor(id)
	if err != nil {
		return nil, err
	}
	req := connect.NewRequest(&fspb.ListDirRequest{Path: path, Depth: 1})
	setUser(req.Header(), user)
	resp, err := envd.fs.ListDir(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("list %s in sandbox %s: %w", path, id, rpcError(err))
	}
	in := resp.Msg.GetEntries()
	if len(in) > maxDirEntries {
		return nil, errdefs.ResourceExhausted("directory %s has %d entries, more than the %d one listing returns", path, len(in), maxDirEntries)
	}
	out := make([]DirEntry, 0, len(in))
	for _, e := range in {
		d := DirEntry{Name: e.GetName(), Path: e.GetPath(), Size: uint64(max(e.GetSize(), 0)), Mode: os.FileMode(e.GetMode())}
		switch e.GetType() {
		case fspb.FileType_FILE_TYPE_DIRECTORY:
			d.Type = "dir"
		case fspb.FileType_FILE_TYPE_SYMLINK:
			d.Type = "symlink"
		default:
			d.Type = "file"
		}
		if t := e.GetModifiedTime(); t != nil {
			d.ModifiedAt = t.AsTime()
		}
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b DirEntry) int {
		if (a.Type == "dir") != (b.Type == "dir") {
			if a.Type == "dir" {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out, nil
}
