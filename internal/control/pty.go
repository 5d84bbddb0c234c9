package control

import (
	"context"
	"errors"
	"io"

	"connectrpc.com/connect"

	"wrenn.dev/wrenn/internal/errdefs"
	pb "wrenn.dev/wrenn/internal/gen/hostagent/v1"
)

// PTYOptions opens or reattaches a terminal.
type PTYOptions struct {
	// PID, when set, reattaches to that terminal's process.
	PID        uint32
	Cols, Rows uint32
	// Cmd is the program to run (default: the template's shell); User
	// runs it (default: the sandbox's user).
	Cmd  string
	User string
	// AnyTeam lets an admin open a terminal in any team's sandbox.
	AnyTeam bool
}

// Limits on terminal sizes.
const maxPTYSide = 1000

// PTY is an open terminal in a sandbox. Send, Resize and CloseInput may be
// called from one goroutine while Recv is called from another.
type PTY struct {
	stream *connect.BidiStreamForClient[pb.PtyRequest, pb.PtyResponse]
	cancel context.CancelFunc
	host   string
	pid    uint32
}

// PTYEvent is what a terminal sends: output, or its exit (last).
type PTYEvent struct {
	Output []byte
	Exit   *ExitStatus
}

// OpenPTY opens a terminal in a running sandbox, or reattaches to
// opts.PID's. It returns once the agent has answered with the process.
func (s *Service) OpenPTY(ctx context.Context, p Principal, id string, opts PTYOptions) (*PTY, error) {
	if opts.Cols > maxPTYSide || opts.Rows > maxPTYSide {
		return nil, errdefs.InvalidArgument("terminal size %dx%d is larger than %d", opts.Cols, opts.Rows, maxPTYSide)
	}
	if opts.Cols == 0 || opts.Rows == 0 {
		opts.Cols, opts.Rows = 80, 24
	}
	sb, c, err := s.runningSandbox(ctx, p, id, opts.AnyTeam)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	stream := c.Pty(ctx)
	t := &PTY{stream: stream, cancel: cancel, host: sb.HostID}
	open := &pb.PtyRequest_Open{SandboxId: id, Pid: opts.PID, Cols: opts.Cols, Rows: opts.Rows, User: opts.User}
	if opts.Cmd != "" {
		open.Cmd = "/bin/sh"
		open.Args = []string{"-c", opts.Cmd}
	}
	if err := stream.Send(&pb.PtyRequest{Event: &pb.PtyRequest_Open_{Open: open}}); err != nil && !errors.Is(err, io.EOF) {
		t.Close()
		return nil, agentError(sb.HostID, err)
	}
	first, err := stream.Receive()
	if err != nil {
		t.Close()
		return nil, agentError(sb.HostID, err)
	}
	if first.GetStarted() == nil {
		t.Close()
		return nil, errdefs.Unavailable("host %s answered a terminal open without its process", sb.HostID)
	}
	t.pid = first.GetStarted().GetPid()
	return t, nil
}

// PID is the terminal's process, for reattaching.
func (t *PTY) PID() uint32 { return t.pid }

// Send writes input to the terminal.
func (t *PTY) Send(input []byte) error {
	return t.send(&pb.PtyRequest{Event: &pb.PtyRequest_Input{Input: input}})
}

// Resize changes the terminal's size.
func (t *PTY) Resize(cols, rows uint32) error {
	if cols == 0 || rows == 0 || cols > maxPTYSide || rows > maxPTYSide {
		return errdefs.InvalidArgument("terminal size %dx%d is outside 1-%d", cols, rows, maxPTYSide)
	}
	return t.send(&pb.PtyRequest{Event: &pb.PtyRequest_Resize_{Resize: &pb.PtyRequest_Resize{Cols: cols, Rows: rows}}})
}

func (t *PTY) send(r *pb.PtyRequest) error {
	if err := t.stream.Send(r); err != nil {
		if errors.Is(err, io.EOF) {
			// The agent ended the stream; Recv has the reason.
			return errdefs.Unavailable("the terminal's stream has ended")
		}
		return agentError(t.host, err)
	}
	return nil
}

// Recv returns the next event. After the exit event, or when the stream
// ends, it returns io.EOF.
func (t *PTY) Recv() (PTYEvent, error) {
	for {
		m, err := t.stream.Receive()
		if errors.Is(err, io.EOF) {
			return PTYEvent{}, io.EOF
		}
		if err != nil {
			return PTYEvent{}, agentError(t.host, err)
		}
		switch {
		case m.GetOutput() != nil:
			return PTYEvent{Output: m.GetOutput()}, nil
		case m.GetExited() != nil:
			x := m.GetExited()
			return PTYEvent{Exit: &ExitStatus{Code: int(x.GetExitCode()), Status: x.GetStatus()}}, nil
		}
	}
}

// Close detaches from the terminal; its process keeps running until it
// exits, and can be reattached by PID.
func (t *PTY) Close() error {
	t.cancel()
	t.stream.CloseRequest() //nolint:errcheck // cancelled anyway
	return t.stream.CloseResponse()
}
