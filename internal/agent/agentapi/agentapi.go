// Package agentapi serves the host agent's Connect API
// (proto/hostagent/v1, service wrenn.hostagent.v1.HostAgent) over a
// sandbox manager: it converts between protobuf messages and package
// agent's types and nothing more. Errors become Connect codes in one
// place, errconnect.ToConnect; internal errors are logged here and
// answered with a fixed message.
//
// Every call must carry "Authorization: Bearer <secret>" (NewAuthInterceptor);
// clients add it with WithSecret. The API is served over HTTP/1.1 and
// h2c (HTTP/2 without TLS) on one listener: the Pty method is a
// bidirectional stream and needs HTTP/2. Put TLS in front of it when the
// network between control plane and host is not trusted.
//
// Conventions the proto leaves open:
//   - zero vcpus, memory_mib or timeout_seconds mean the agent's defaults;
//   - SetTimeout with timeout_seconds 0 sets the default timeout again;
//   - Exec with empty stdin gives the command an empty stdin;
//   - GetHostInfo reports slots_free 0 when the network cannot count them;
//   - a Pty client that half-closes its side keeps receiving output; one
//     that goes away leaves the terminal's process running, to be
//     reattached by pid.
package agentapi

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"wrenn.dev/wrenn/internal/agent"
	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/errdefs/errconnect"
	pb "wrenn.dev/wrenn/internal/gen/hostagent/v1"
	"wrenn.dev/wrenn/internal/gen/hostagent/v1/hostagentv1connect"
	"wrenn.dev/wrenn/internal/sandbox"
)

// Log attribute keys.
const (
	logKeyProcedure = "procedure"
	logKeyErr       = "err"
	logKeyPanic     = "panic"
)

// MaxMessageBytes bounds one request message (a file chunk, an exec's
// stdin).
const MaxMessageBytes = 16 << 20

// chunkSize is the size of the data messages ReadFile sends.
const chunkSize = 64 << 10

// Options configures the API.
type Options struct {
	// Secret is the shared secret callers present. Required.
	Secret string
	// Logger receives internal errors. Default: discarded.
	Logger *slog.Logger
}

// service implements hostagentv1connect.HostAgentHandler over a manager.
type service struct {
	m   *agent.Manager
	log *slog.Logger
}

var _ hostagentv1connect.HostAgentHandler = (*service)(nil)

// NewHandler returns an http.Handler serving the HostAgent service (and
// 404 for every other path), authenticated with opts.Secret.
func NewHandler(m *agent.Manager, opts Options) (http.Handler, error) {
	if opts.Secret == "" {
		return nil, errdefs.InvalidArgument("the host agent API needs a shared secret")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &service{m: m, log: log}
	path, h := hostagentv1connect.NewHostAgentHandler(s,
		connect.WithInterceptors(NewAuthInterceptor(opts.Secret)),
		connect.WithReadMaxBytes(MaxMessageBytes),
		connect.WithRecover(s.recoverPanic),
	)
	mux := http.NewServeMux()
	mux.Handle(path, h)
	return mux, nil
}

// NewServer returns an http.Server for h speaking HTTP/1.1 and h2c.
func NewServer(h http.Handler, log *slog.Logger) *http.Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &http.Server{
		Handler:           h,
		Protocols:         Protocols(),
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       5 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// Protocols is HTTP/1.1 and unencrypted HTTP/2, for server and client.
func Protocols() *http.Protocols {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	return &p
}

// NewHTTPClient returns a client that speaks h2c to the agent (needed for
// the bidirectional Pty stream).
func NewHTTPClient() *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{
		Protocols:   &p,
		DialContext: (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
	}}
}

// NewClient returns a HostAgent client for the agent at baseURL
// ("http://host:port") authenticating with secret.
func NewClient(hc *http.Client, baseURL, secret string, opts ...connect.ClientOption) hostagentv1connect.HostAgentClient {
	return hostagentv1connect.NewHostAgentClient(hc, baseURL, append([]connect.ClientOption{WithSecret(secret)}, opts...)...)
}

func (s *service) recoverPanic(ctx context.Context, spec connect.Spec, _ http.Header, v any) error {
	s.log.ErrorContext(ctx, "panic in host agent rpc", logKeyProcedure, spec.Procedure, logKeyPanic, v)
	return connect.NewError(connect.CodeInternal, errors.New("internal error"))
}

// fail converts err for the wire, logging it when it is internal (its
// details never reach the caller).
func (s *service) fail(ctx context.Context, procedure string, err error) error {
	if err == nil {
		return nil
	}
	if errdefs.Class(err) == nil && ctx.Err() == nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		s.log.ErrorContext(ctx, "host agent rpc failed", logKeyProcedure, procedure, logKeyErr, err)
	}
	return errconnect.ToConnect(err)
}

func requireID(id string) error {
	if id == "" {
		return errdefs.InvalidArgument("sandbox id is required")
	}
	return nil
}

func seconds(s uint32) time.Duration { return time.Duration(s) * time.Second }

// CreateSandbox boots a sandbox and returns once envd in it answers.
func (s *service) CreateSandbox(ctx context.Context, req *connect.Request[pb.CreateSandboxRequest]) (*connect.Response[pb.CreateSandboxResponse], error) {
	r := req.Msg
	sb, err := s.m.Create(ctx, agent.CreateRequest{
		ID:        r.GetId(),
		Template:  r.GetTemplate(),
		VCPUs:     int(r.GetVcpus()),
		MemoryMiB: int(r.GetMemoryMib()),
		Timeout:   seconds(r.GetTimeoutSeconds()),
		EnvVars:   r.GetEnvVars(),
		Metadata:  r.GetMetadata(),
		Egress:    r.GetEgress(),
	})
	if err != nil {
		return nil, s.fail(ctx, req.Spec().Procedure, err)
	}
	return connect.NewResponse(&pb.CreateSandboxResponse{Sandbox: toProto(sb)}), nil
}

// GetSandbox returns one sandbox, tombstones included.
func (s *service) GetSandbox(ctx context.Context, req *connect.Request[pb.GetSandboxRequest]) (*connect.Response[pb.GetSandboxResponse], error) {
	if err := requireID(req.Msg.GetId()); err != nil {
		return nil, s.fail(ctx, req.Spec().Procedure, err)
	}
	sb, err := s.m.Get(ctx, req.Msg.GetId())
	if err != nil {
		return nil, s.fail(ctx, req.Spec().Procedure, err)
	}
	return connect.NewResponse(&pb.GetSandboxResponse{Sandbox: toProto(sb)}), nil
}

// ListSandboxes returns every sandbox, tombstones included.
func (s *service) ListSandboxes(ctx context.Context, req *connect.Request[pb.ListSandboxesRequest]) (*connect.Response[pb.ListSandboxesResponse], error) {
	list := s.m.List(ctx)
	out := make([]*pb.Sandbox, 0, len(list))
	for _, sb := range list {
		out = append(out, toProto(sb))
	}
	return connect.NewResponse(&pb.ListSandboxesResponse{Sandboxes: out}), nil
}

// DestroySandbox stops the VM and releases everything the sandbox had.
func (s *service) DestroySandbox(ctx context.Context, req *connect.Request[pb.DestroySandboxRequest]) (*connect.Response[pb.DestroySandboxResponse], error) {
	if err := requireID(req.Msg.GetId()); err != nil {
		return nil, s.fail(ctx, req.Spec().Procedure, err)
	}
	if err := s.m.Destroy(ctx, req.Msg.GetId()); err != nil {
		return nil, s.fail(ctx, req.Spec().Procedure, err)
	}
	return connect.NewResponse(&pb.DestroySandboxResponse{}), nil
}

// SetTimeout sets the sandbox's expiry to now + timeout.
func (s *service) SetTimeout(ctx context.Context, req *connect.Request[pb.SetTimeoutRequest]) (*connect.Response[pb.SetTimeoutResponse], error) {
	if err := requireID(req.Msg.GetId()); err != nil {
		return nil, s.fail(ctx, req.Spec().Procedure, err)
	}
	exp, err := s.m.SetTimeout(ctx, req.Msg.GetId(), seconds(req.Msg.GetTimeoutSeconds()))
	if err != nil {
		return nil, s.fail(ctx, req.Spec().Procedure, err)
	}
	return connect.NewResponse(&pb.SetTimeoutResponse{ExpiresAt: timestamppb.New(exp)}), nil
}

// PauseSandbox pauses a running sandbox.
func (s *service) PauseSandbox(ctx context.Context, req *connect.Request[pb.PauseSandboxRequest]) (*connect.Response[pb.PauseSandboxResponse], error) {
	id := req.Msg.GetId()
	if err := requireID(id); err != nil {
		return nil, s.fail(ctx, req.Spec().Procedure, err)
	}
	if err := s.m.Pause(ctx, id); err != nil {
		return nil, s.fail(ctx, req.Spec().Procedure, err)
	}
	sb, err := s.m.Get(ctx, id)
	if err != nil {
		return nil, s.fail(ctx, req.Spec().Procedure, err)
	}
	return connect.NewResponse(&pb.PauseSandboxResponse{Sandbox: toProto(sb)}), nil
}

// ResumeSandbox runs a paused sandbox again, with a new lifetime from now:
// timeout_seconds, or the default when it is 0.
func (s *service) ResumeSandbox(ctx context.Context, req *connect.Request[pb.ResumeSandboxRequest]) (*connect.Response[pb.ResumeSandboxResponse], error) {
	id := req.Msg.GetId()
	if err := requireID(id); err != nil {
		return nil, s.fail(ctx, req.Spec().Procedure, err)
	}
	if err := s.m.Resume(ctx, id); err != nil {
		return nil, s.fail(ctx, req.Spec().Procedure, err)
	}
	// The lifetime starts again: timeout_seconds, or the default.
	if _, err := s.m.SetTimeout(ctx, id, seconds(req.Msg.GetTimeoutSeconds())); err != nil {
		return nil, s.fail(ctx, req.Spec().Procedure, err)
	}
	sb, err := s.m.Get(ctx, id)
	if err != nil {
		return nil, s.fail(ctx, req.Spec().Procedure, err)
	}
	return connect.NewResponse(&pb.ResumeSandboxResponse{Sandbox: toProto(sb)}), nil
}

// ListDir lists one directory in a running sandbox.
func (s *service) ListDir(ctx context.Context, req *connect.Request[pb.ListDirRequest]) (*connect.Response[pb.ListDirResponse], error) {
	r := req.Msg
	if err := requireID(r.GetSandboxId()); err != nil {
		return nil, s.fail(ctx, req.Spec().Procedure, err)
	}
	entries, err := s.m.ListDir(ctx, r.GetSandboxId(), r.GetPath(), r.GetUser())
	if err != nil {
		return nil, s.fail(ctx, req.Spec().Procedure, err)
	}
	out := make([]*pb.DirEntry, 0, len(entries))
	for _, e := range entries {
		out = append(out, &pb.DirEntry{
			Name: e.Name, Path: e.Path, Type: e.Type, Size: e.Size,
			Mode: uint32(e.Mode), ModifiedAt: timestamp(e.ModifiedAt),
		})
	}
	return connect.NewResponse(&pb.ListDirResponse{Entries: out}), nil
}

// Exec runs a command and streams its output and exit.
func (s *service) Exec(ctx context.Context, req *connect.Request[pb.ExecRequest], stream *connect.ServerStream[pb.ExecResponse]) error {
	r := req.Msg
	if err := requireID(r.GetSandboxId()); err != nil {
		return s.fail(ctx, req.Spec().Procedure, err)
	}
	er := agent.ExecRequest{
		Cmd:     r.GetCmd(),
		Args:    r.GetArgs(),
		Envs:    r.GetEnvs(),
		Cwd:     r.GetCwd(),
		User:    r.GetUser(),
		Timeout: seconds(r.GetTimeoutSeconds()),
	}
	if len(r.GetStdin()) > 0 {
		er.Stdin = r.GetStdin()
	}
	err := s.m.Exec(ctx, r.GetSandboxId(), er, func(ev agent.ExecEvent) error {
		var out pb.ExecResponse
		switch {
		case ev.Started:
			out.Event = &pb.ExecResponse_Started_{Started: &pb.ExecResponse_Started{Pid: ev.PID}}
		case ev.Stdout != nil:
			out.Event = &pb.ExecResponse_Stdout{Stdout: ev.Stdout}
		case ev.Stderr != nil:
			out.Event = &pb.ExecResponse_Stderr{Stderr: ev.Stderr}
		case ev.Exit != nil:
			out.Event = &pb.ExecResponse_Exited_{Exited: &pb.ExecResponse_Exited{
				ExitCode: int32(ev.Exit.Code), Status: ev.Exit.Status, Error: ev.Exit.Error,
			}}
		default:
			return nil
		}
		return stream.Send(&out)
	})
	return s.fail(ctx, req.Spec().Procedure, err)
}

// WriteFile streams a file into the sandbox: a header, then data chunks.
func (s *service) WriteFile(ctx context.Context, stream *connect.ClientStream[pb.WriteFileRequest]) (*connect.Response[pb.WriteFileResponse], error) {
	proc := stream.Spec().Procedure
	if !stream.Receive() {
		err := stream.Err()
		if err == nil {
			err = errdefs.InvalidArgument("WriteFile needs a header message first")
		}
		return nil, s.fail(ctx, proc, err)
	}
	h := stream.Msg().GetHeader()
	if h == nil {
		return nil, s.fail(ctx, proc, errdefs.InvalidArgument("WriteFile's first message must be its header"))
	}
	if err := requireID(h.GetSandboxId()); err != nil {
		return nil, s.fail(ctx, proc, err)
	}
	fi, err := s.m.WriteFile(ctx, h.GetSandboxId(), h.GetPath(), h.GetUser(), &streamReader{stream: stream})
	if err != nil {
		return nil, s.fail(ctx, proc, err)
	}
	return connect.NewResponse(&pb.WriteFileResponse{Path: fi.Path, Size: uint64(fi.Size)}), nil
}

// streamReader reads the data messages of a WriteFile stream.
type streamReader struct {
	stream *connect.ClientStream[pb.WriteFileRequest]
	buf    []byte
	err    error
}

func (r *streamReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if !r.stream.Receive() {
			r.err = r.stream.Err()
			if r.err == nil {
				r.err = io.EOF
			}
			continue
		}
		if r.stream.Msg().GetHeader() != nil {
			r.err = errdefs.InvalidArgument("WriteFile got a second header")
			continue
		}
		r.buf = r.stream.Msg().GetData()
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// ReadFile streams a file out of the sandbox.
func (s *service) ReadFile(ctx context.Context, req *connect.Request[pb.ReadFileRequest], stream *connect.ServerStream[pb.ReadFileResponse]) error {
	r := req.Msg
	if err := requireID(r.GetSandboxId()); err != nil {
		return s.fail(ctx, req.Spec().Procedure, err)
	}
	_, err := s.m.ReadFile(ctx, r.GetSandboxId(), r.GetPath(), r.GetUser(), &streamWriter{stream: stream})
	return s.fail(ctx, req.Spec().Procedure, err)
}

// streamWriter sends what is written as ReadFile data messages.
type streamWriter struct {
	stream *connect.ServerStream[pb.ReadFileResponse]
}

func (w *streamWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n := min(len(p), chunkSize)
		// Send marshals before it returns, so p may be reused afterwards.
		if err := w.stream.Send(&pb.ReadFileResponse{Data: p[:n]}); err != nil {
			return written, err
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

// Pty opens (or reattaches to) a terminal: the first request is open, then
// input and resize; responses are started, output, then exited.
//
// Input is read on a second goroutine while this one sends output. That
// goroutine is blocked in Receive when the terminal exits; it returns once
// the handler has returned and the server closes the request stream.
func (s *service) Pty(ctx context.Context, stream *connect.BidiStream[pb.PtyRequest, pb.PtyResponse]) error {
	proc := stream.Spec().Procedure
	first, err := stream.Receive()
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = errdefs.InvalidArgument("Pty needs an open message first")
		}
		return s.fail(ctx, proc, err)
	}
	open := first.GetOpen()
	if open == nil {
		return s.fail(ctx, proc, errdefs.InvalidArgument("Pty's first message must be open"))
	}
	if err := requireID(open.GetSandboxId()); err != nil {
		return s.fail(ctx, proc, err)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	pty, err := s.m.OpenPTY(ctx, open.GetSandboxId(), agent.PTYRequest{
		PID:  open.GetPid(),
		Cols: open.GetCols(),
		Rows: open.GetRows(),
		User: open.GetUser(),
		Cmd:  open.GetCmd(),
		Args: open.GetArgs(),
		Envs: open.GetEnvs(),
		Cwd:  open.GetCwd(),
	})
	if err != nil {
		return s.fail(ctx, proc, err)
	}
	defer pty.Close()
	if err := stream.Send(&pb.PtyResponse{Event: &pb.PtyResponse_Started_{Started: &pb.PtyResponse_Started{Pid: pty.PID()}}}); err != nil {
		return s.fail(ctx, proc, err)
	}
	go s.ptyInput(ctx, cancel, stream, pty)
	for {
		ev, err := pty.Next()
		if err != nil {
			if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
				err = cause // the input side failed first
			}
			return s.fail(ctx, proc, err)
		}
		if ev.Exit != nil {
			err := stream.Send(&pb.PtyResponse{Event: &pb.PtyResponse_Exited_{Exited: &pb.PtyResponse_Exited{
				ExitCode: int32(ev.Exit.Code), Status: ev.Exit.Status,
			}}})
			return s.fail(ctx, proc, err)
		}
		if err := stream.Send(&pb.PtyResponse{Event: &pb.PtyResponse_Output{Output: ev.Output}}); err != nil {
			return s.fail(ctx, proc, err)
		}
	}
}

// ptyInput applies the client's input and resizes until its side ends. A
// failure cancels the stream with the error as the cause.
func (s *service) ptyInput(ctx context.Context, cancel context.CancelCauseFunc, stream *connect.BidiStream[pb.PtyRequest, pb.PtyResponse], pty *agent.PTY) {
	for {
		msg, err := stream.Receive()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				cancel(err)
			}
			return // half-closed: output continues
		}
		switch {
		case msg.GetInput() != nil:
			err = pty.Input(ctx, msg.GetInput())
		case msg.GetResize() != nil:
			err = pty.Resize(ctx, msg.GetResize().GetCols(), msg.GetResize().GetRows())
		case msg.GetOpen() != nil:
			err = errdefs.InvalidArgument("Pty got a second open message")
		}
		if err != nil {
			cancel(err)
			return
		}
	}
}

// GetHostInfo reports the host's identity, driver and capacity.
func (s *service) GetHostInfo(ctx context.Context, req *connect.Request[pb.GetHostInfoRequest]) (*connect.Response[pb.GetHostInfoResponse], error) {
	info := s.m.HostInfo(ctx)
	return connect.NewResponse(&pb.GetHostInfoResponse{
		HostId:         info.HostID,
		Version:        info.Version,
		Driver:         info.Driver,
		Accelerator:    info.Accelerator,
		VcpusTotal:     uint32(info.VCPUsTotal),
		MemoryMibTotal: uint64(info.MemoryMiBTotal),
		VcpusUsed:      uint32(info.VCPUsUsed),
		MemoryMibUsed:  uint64(info.MemoryMiBUsed),
		Sandboxes:      uint32(info.Sandboxes),
		SlotsFree:      uint32(max(info.SlotsFree, 0)),
		Templates:      info.Templates,
	}), nil
}

var states = map[sandbox.State]pb.SandboxState{
	sandbox.StateStarting: pb.SandboxState_SANDBOX_STATE_STARTING,
	sandbox.StateRunning:  pb.SandboxState_SANDBOX_STATE_RUNNING,
	sandbox.StatePausing:  pb.SandboxState_SANDBOX_STATE_PAUSING,
	sandbox.StatePaused:   pb.SandboxState_SANDBOX_STATE_PAUSED,
	sandbox.StateResuming: pb.SandboxState_SANDBOX_STATE_RESUMING,
	sandbox.StateStopping: pb.SandboxState_SANDBOX_STATE_STOPPING,
	sandbox.StateStopped:  pb.SandboxState_SANDBOX_STATE_STOPPED,
	sandbox.StateDead:     pb.SandboxState_SANDBOX_STATE_DEAD,
}

func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// toProto converts a sandbox for the wire.
func toProto(sb *sandbox.Sandbox) *pb.Sandbox {
	return &pb.Sandbox{
		Id:              sb.ID,
		Template:        sb.Template,
		State:           states[sb.State],
		Vcpus:           uint32(sb.VCPUs),
		MemoryMib:       uint32(sb.MemoryMiB),
		CreatedAt:       timestamp(sb.CreatedAt),
		ExpiresAt:       timestamp(sb.ExpiresAt),
		Metadata:        sb.Metadata,
		Egress:          sb.Egress,
		HostIp:          sb.HostIP,
		EnvdUrl:         sb.EnvdURL,
		EnvdAccessToken: sb.EnvdAccessToken,
		Reason:          sb.Reason,
		Driver:          sb.Driver,
		Metrics:         metricsToProto(sb.Metrics),
	}
}

func metricsToProto(m *sandbox.Metrics) *pb.Metrics {
	if m == nil {
		return nil
	}
	return &pb.Metrics{
		SampledAt:      timestamp(m.Sampled),
		CpuCount:       uint32(max(m.CPUCount, 0)),
		CpuUsedPct:     m.CPUUsedPct,
		MemTotalMib:    m.MemTotalMiB,
		MemUsedMib:     m.MemUsedMiB,
		DiskUsedBytes:  m.DiskUsed,
		DiskTotalBytes: m.DiskTotal,
	}
}

// CreateSnapshot makes a snapshot template of a running or paused
// sandbox.
func (s *service) CreateSnapshot(ctx context.Context, req *connect.Request[pb.CreateSnapshotRequest]) (*connect.Response[pb.CreateSnapshotResponse], error) {
	if err := requireID(req.Msg.GetSandboxId()); err != nil {
		return nil, s.fail(ctx, req.Spec().Procedure, err)
	}
	t, err := s.m.CreateSnapshot(ctx, req.Msg.GetSandboxId(), req.Msg.GetTemplateId())
	if err != nil {
		return nil, s.fail(ctx, req.Spec().Procedure, err)
	}
	return connect.NewResponse(&pb.CreateSnapshotResponse{Template: &pb.SnapshotTemplate{
		Id:              t.ID,
		SourceSandboxId: t.Source,
		Vcpus:           uint32(max(t.VCPUs, 0)),
		MemoryMib:       uint32(max(t.MemoryMiB, 0)),
		Driver:          t.Driver,
		StoredBytes:     uint64(max(t.StoredBytes, 0)),
		CreatedAt:       timestamp(t.Created),
	}}), nil
}

// DeleteSnapshot removes a snapshot template.
func (s *service) DeleteSnapshot(ctx context.Context, req *connect.Request[pb.DeleteSnapshotRequest]) (*connect.Response[pb.DeleteSnapshotResponse], error) {
	if err := s.m.DeleteSnapshot(ctx, req.Msg.GetTemplateId()); err != nil {
		return nil, s.fail(ctx, req.Spec().Procedure, err)
	}
	return connect.NewResponse(&pb.DeleteSnapshotResponse{}), nil
}
