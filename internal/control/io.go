package control

import (
	"context"
	"errors"
	"io"
	"path"
	"strings"
	"time"

	"connectrpc.com/connect"

	"wrenn.dev/wrenn/internal/errdefs"
	pb "wrenn.dev/wrenn/internal/gen/hostagent/v1"
)

// ExecRequest is a command to run in a sandbox.
type ExecRequest struct {
	Cmd     string
	Args    []string
	Envs    map[string]string
	Cwd     string
	User    string
	Stdin   []byte
	Timeout time.Duration
}

// ExecEvent is one event of a running command: exactly one of Started
// (with PID), Stdout, Stderr or Exit is set; Exit comes last.
type ExecEvent struct {
	Started bool
	PID     uint32
	Stdout  []byte
	Stderr  []byte
	Exit    *ExitStatus
}

// ExitStatus is how a command ended.
type ExitStatus struct {
	Code   int
	Status string
	Error  string
}

// maxStdin bounds an exec's stdin (it travels in one agent message).
const maxStdin = 8 << 20

func (r *ExecRequest) validate() error {
	switch {
	case strings.TrimSpace(r.Cmd) == "":
		return errdefs.InvalidArgument("cmd is required")
	case r.Timeout < 0 || r.Timeout > MaxTimeout:
		return errdefs.InvalidArgument("timeout must be between 0 (none) and %s", MaxTimeout)
	case len(r.Stdin) > maxStdin:
		return errdefs.InvalidArgument("stdin is %d bytes, more than %d", len(r.Stdin), maxStdin)
	case r.Cwd != "" && !path.IsAbs(r.Cwd):
		return errdefs.InvalidArgument("cwd %q must be an absolute path", r.Cwd)
	}
	return nil
}

// Exec runs a command in a running sandbox and passes its events to emit
// in order. It returns nil once the command has exited (the exit being the
// last event), or the error that stopped it: emit's, the agent's, or ctx's.
func (s *Service) Exec(ctx context.Context, p Principal, id string, req ExecRequest, emit func(ExecEvent) error) error {
	if err := req.validate(); err != nil {
		return err
	}
	sb, c, err := s.runningSandbox(ctx, p, id, false)
	if err != nil {
		return err
	}
	stream, err := c.Exec(ctx, connect.NewRequest(&pb.ExecRequest{
		SandboxId: id, Cmd: req.Cmd, Args: req.Args, Envs: req.Envs, Cwd: req.Cwd, User: req.User,
		TimeoutSeconds: uint32(req.Timeout / time.Second), Stdin: req.Stdin,
	}))
	if err != nil {
		return agentError(sb.HostID, err)
	}
	defer stream.Close()
	exited := false
	for stream.Receive() {
		var ev ExecEvent
		switch m := stream.Msg(); {
		case m.GetStarted() != nil:
			ev = ExecEvent{Started: true, PID: m.GetStarted().GetPid()}
		case m.GetStdout() != nil:
			ev = ExecEvent{Stdout: m.GetStdout()}
		case m.GetStderr() != nil:
			ev = ExecEvent{Stderr: m.GetStderr()}
		case m.GetExited() != nil:
			x := m.GetExited()
			ev = ExecEvent{Exit: &ExitStatus{Code: int(x.GetExitCode()), Status: x.GetStatus(), Error: x.GetError()}}
			exited = true
		default:
			continue
		}
		if err := emit(ev); err != nil {
			return err
		}
	}
	if err := stream.Err(); err != nil {
		return agentError(sb.HostID, err)
	}
	if !exited {
		return errdefs.Unavailable("host %s ended the command's stream before it exited", sb.HostID)
	}
	return nil
}

func checkPath(p string) error {
	if p == "" {
		return errdefs.InvalidArgument("path is required")
	}
	if !path.IsAbs(p) || strings.ContainsRune(p, 0) {
		return errdefs.InvalidArgument("path %q must be absolute", p)
	}
	return nil
}

// fileChunk is the size of the data messages sent to the agent.
const fileChunk = 256 << 10

// WriteFile streams r into path in a running sandbox, as user, and returns
// the path written and its size.
func (s *Service) WriteFile(ctx context.Context, p Principal, id, filePath, user string, r io.Reader) (string, int64, error) {
	if err := checkPath(filePath); err != nil {
		return "", 0, err
	}
	sb, c, err := s.runningSandbox(ctx, p, id, false)
	if err != nil {
		return "", 0, err
	}
	stream := c.WriteFile(ctx)
	if err := stream.Send(&pb.WriteFileRequest{Part: &pb.WriteFileRequest_Header_{Header: &pb.WriteFileRequest_Header{
		SandboxId: id, Path: filePath, User: user,
	}}}); err != nil && !errors.Is(err, io.EOF) {
		return "", 0, agentError(sb.HostID, err)
	}
	buf := make([]byte, fileChunk)
	var readErr error
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if serr := stream.Send(&pb.WriteFileRequest{Part: &pb.WriteFileRequest_Data{Data: buf[:n]}}); serr != nil {
				break // the agent gave up; CloseAndReceive says why
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			readErr = err
			break
		}
	}
	if readErr != nil {
		// Abandon the upload: the agent discards a file whose stream broke.
		stream.CloseAndReceive() //nolint:errcheck // the read error is the one to report
		return "", 0, errdefs.InvalidArgument("reading the upload: %v", readErr)
	}
	resp, err := stream.CloseAndReceive()
	if err != nil {
		return "", 0, agentError(sb.HostID, err)
	}
	return resp.Msg.GetPath(), int64(resp.Msg.GetSize()), nil
}

// OpenFile opens path in a running sandbox for reading, as user. The first
// chunk has arrived when it returns, so a missing file is an error here
// and not halfway through the body.
func (s *Service) OpenFile(ctx context.Context, p Principal, id, filePath, user string) (io.ReadCloser, error) {
	if err := checkPath(filePath); err != nil {
		return nil, err
	}
	sb, c, err := s.runningSandbox(ctx, p, id, false)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	stream, err := c.ReadFile(ctx, connect.NewRequest(&pb.ReadFileRequest{SandboxId: id, Path: filePath, User: user}))
	if err != nil {
		cancel()
		return nil, agentError(sb.HostID, err)
	}
	f := &fileReader{stream: stream, cancel: cancel, host: sb.HostID}
	if !stream.Receive() {
		err := stream.Err()
		f.Close()
		if err == nil {
			return io.NopCloser(strings.NewReader("")), nil // an empty file
		}
		return nil, agentError(sb.HostID, err)
	}
	f.pending = stream.Msg().GetData()
	return f, nil
}

type fileReader struct {
	stream  *connect.ServerStreamForClient[pb.ReadFileResponse]
	cancel  context.CancelFunc
	host    string
	pending []byte
	err     error
}

func (f *fileReader) Read(p []byte) (int, error) {
	for len(f.pending) == 0 {
		if f.err != nil {
			return 0, f.err
		}
		if !f.stream.Receive() {
			if err := f.stream.Err(); err != nil {
				f.err = agentError(f.host, err)
			} else {
				f.err = io.EOF
			}
			continue
		}
		f.pending = f.stream.Msg().GetData()
	}
	n := copy(p, f.pending)
	f.pending = f.pending[n:]
	return n, nil
}

func (f *fileReader) Close() error {
	f.cancel()
	return f.stream.Close()
}

// DirEntry is one entry of a directory listing.
type DirEntry struct {
	Name, Path, Type string
	Size             uint64
	Mode             uint32
	ModifiedAt       time.Time
}

// ListDir lists a directory in a running sandbox, as user.
func (s *Service) ListDir(ctx context.Context, p Principal, id, dir, user string) ([]DirEntry, error) {
	if err := checkPath(dir); err != nil {
		return nil, err
	}
	sb, c, err := s.runningSandbox(ctx, p, id, false)
	if err != nil {
		return nil, err
	}
	resp, err := c.ListDir(ctx, connect.NewRequest(&pb.ListDirRequest{SandboxId: id, Path: dir, User: user}))
	if err != nil {
		return nil, agentError(sb.HostID, err)
	}
	out := make([]DirEntry, 0, len(resp.Msg.GetEntries()))
	for _, e := range resp.Msg.GetEntries() {
		d := DirEntry{Name: e.GetName(), Path: e.GetPath(), Type: e.GetType(), Size: e.GetSize(), Mode: e.GetMode()}
		if t := e.GetModifiedAt(); t != nil {
			d.ModifiedAt = t.AsTime()
		}
		out = append(out, d)
	}
	return out, nil
}
