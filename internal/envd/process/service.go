//go:build linux

package process

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"wrenn.dev/wrenn/internal/envd/identity"
	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/errdefs/errconnect"
	rpc "wrenn.dev/wrenn/internal/gen/process"
	"wrenn.dev/wrenn/internal/gen/process/processconnect"
)

// Log attribute keys.
const (
	logKeyPID      = "pid"
	logKeyTag      = "tag"
	logKeyCmd      = "cmd"
	logKeyUser     = "user"
	logKeyPTY      = "pty"
	logKeyErr      = "err"
	logKeyStatus   = "status"
	logKeyExitCode = "exit_code"
	logKeyDropped  = "dropped_bytes"
	logKeyGrace    = "grace"
	logKeyCgroup   = "cgroup"
	logKeyMethod   = "method"
)

// Defaults for [Config] fields left zero, and fixed behaviour.
const (
	DefaultExitRetention    = 30 * time.Second
	DefaultSubscriberBuffer = 4096
	DefaultSubscriberStall  = 15 * time.Second

	// keepaliveHeader is the request header giving the keepalive interval
	// in seconds.
	keepaliveHeader   = "Keepalive-Ping-Interval"
	defaultKeepalive  = 90 * time.Second
	maxKeepalive      = 24 * time.Hour
	defaultDrainGrace = 2 * time.Second
)

var errShuttingDown = errdefs.Unavailable("envd is shutting down; no new processes can start")

// CgroupPlacer gives the cgroup v2 directory a new process is started in.
// Kinds are "user" (ordinary processes) and "ptys" (processes in a PTY).
// FD returns an open directory descriptor the service does not close, or
// ok=false to start the process in envd's own cgroup.
type CgroupPlacer interface {
	FD(kind string) (fd int, ok bool)
}

// Config configures a [Service].
type Config struct {
	// Users resolves the request's user and paths. Required.
	Users *identity.Resolver
	// Env returns the default environment variables set by /init. They
	// override PATH, HOME, USER and LOGNAME; a request's envs override
	// them. May be nil.
	Env func() map[string]string
	// Cgroups places new processes in cgroups. Nil means no cgroups.
	Cgroups CgroupPlacer
	// Logger receives the service's logs. Nil discards them.
	Logger *slog.Logger
	// ExitRetention is how long an exited process's end event stays
	// available to Connect. Zero means DefaultExitRetention.
	ExitRetention time.Duration
	// SubscriberBuffer is how many output chunks may queue for one
	// subscriber. Zero means DefaultSubscriberBuffer.
	SubscriberBuffer int
	// SubscriberStall is how long the output of a process waits for a
	// subscriber whose queue is full before that subscriber is dropped
	// with an error. While it waits, the process's output is not read, so
	// a slow but live reader slows the process down (back-pressure)
	// instead of losing output. Zero means DefaultSubscriberStall.
	SubscriberStall time.Duration
}

// Service is the process.Process Connect service. Create it with [New];
// stop it with [Service.Close].
type Service struct {
	cfg        Config
	log        *slog.Logger
	drainGrace time.Duration // how long output may stay open after exit

	wg sync.WaitGroup // spawns in progress and every process goroutine

	mu          sync.Mutex
	procs       map[uint32]*proc // running, and exited within ExitRetention
	seq         uint64
	closed      bool
	afterForget func(pid uint32) // test hook: a retained process was dropped
}

var _ processconnect.ProcessHandler = (*Service)(nil)

// New returns a Service. It panics if cfg.Users is nil.
func New(cfg Config) *Service {
	if cfg.Users == nil {
		panic("process.New: Config.Users is nil")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ExitRetention <= 0 {
		cfg.ExitRetention = DefaultExitRetention
	}
	if cfg.SubscriberBuffer <= 0 {
		cfg.SubscriberBuffer = DefaultSubscriberBuffer
	}
	if cfg.SubscriberStall <= 0 {
		cfg.SubscriberStall = DefaultSubscriberStall
	}
	return &Service{
		cfg:        cfg,
		log:        cfg.Logger,
		drainGrace: defaultDrainGrace,
		procs:      make(map[uint32]*proc),
	}
}

// Close stops the service: new starts fail, every process's group gets
// SIGTERM, and SIGKILL once ctx ends. Close returns when every process has
// been reaped and every goroutine, descriptor and PTY is released; it
// returns ctx's error if processes had to be killed. Streams still open end
// as their processes end. Close is idempotent.
func (s *Service) Close(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	procs := slices.Collect(maps.Values(s.procs))
	s.mu.Unlock()

	for _, p := range procs {
		p.signal(syscall.SIGTERM)
	}
	var err error
wait:
	for _, p := range procs {
		select {
		case <-p.done:
		case <-ctx.Done():
			err = ctx.Err()
			for _, q := range procs {
				q.signal(syscall.SIGKILL)
			}
			break wait
		}
	}
	s.wg.Wait() // every process reaped, every descriptor closed

	s.mu.Lock()
	for pid, p := range s.procs {
		if p.retainTimer != nil {
			p.retainTimer.Stop()
		}
		delete(s.procs, pid)
	}
	s.mu.Unlock()
	return err
}

// register adds a started process to the table, unless the service is
// closing or a running process already has its tag.
func (s *Service) register(p *proc) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errShuttingDown
	}
	if p.tag != "" {
		if other := s.runningWithTag(p.tag); other != nil {
			return errdefs.AlreadyExists("a running process (pid %d) already has tag %q", other.pid, p.tag)
		}
	}
	if old := s.procs[p.pid]; old != nil && old.retainTimer != nil {
		old.retainTimer.Stop() // an exited process whose pid was reused
	}
	s.seq++
	p.seq = s.seq
	s.procs[p.pid] = p
	return nil
}

// runningWithTag returns the running process tagged tag, if any. s.mu must
// be held.
func (s *Service) runningWithTag(tag string) *proc {
	for _, p := range s.procs {
		if p.tag == tag && p.running() {
			return p
		}
	}
	return nil
}

// retire keeps an ended process's end event for ExitRetention.
func (s *Service) retire(p *proc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.procs[p.pid] != p {
		return
	}
	if s.closed {
		delete(s.procs, p.pid)
		return
	}
	p.retainTimer = time.AfterFunc(s.cfg.ExitRetention, func() { s.forget(p) })
}

// forget drops an ended process once its retention is over.
func (s *Service) forget(p *proc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.procs[p.pid] == p {
		delete(s.procs, p.pid)
		if s.afterForget != nil {
			s.afterForget(p.pid)
		}
	}
}

// find resolves a selector to a process, running or recently exited. With
// several processes sharing a tag (at most one of them running), the
// running one wins, then the newest.
func (s *Service) find(sel *rpc.ProcessSelector) (*proc, error) {
	switch v := sel.GetSelector().(type) {
	case *rpc.ProcessSelector_Pid:
		s.mu.Lock()
		p := s.procs[v.Pid]
		s.mu.Unlock()
		if p == nil {
			return nil, errdefs.NotFound("process with pid %d not found", v.Pid)
		}
		return p, nil
	case *rpc.ProcessSelector_Tag:
		if v.Tag == "" {
			return nil, errdefs.InvalidArgument("process selector tag is empty")
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		var best *proc
		bestRunning := false
		for _, p := range s.procs {
			if p.tag != v.Tag {
				continue
			}
			running := p.running()
			if best == nil || (running && !bestRunning) || (running == bestRunning && p.seq > best.seq) {
				best, bestRunning = p, running
			}
		}
		if best == nil {
			return nil, errdefs.NotFound("process with tag %q not found", v.Tag)
		}
		return best, nil
	}
	return nil, errdefs.InvalidArgument("process selector is required: set pid or tag")
}

// findRunning is find for operations that need a live process.
func (s *Service) findRunning(sel *rpc.ProcessSelector) (*proc, error) {
	p, err := s.find(sel)
	if err != nil {
		return nil, err
	}
	if !p.running() {
		return nil, p.errExited()
	}
	return p, nil
}

// toConnect converts err for a handler's return, logging internal errors,
// whose details the client does not see.
func (s *Service) toConnect(method string, err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errdefs.Class(err) == nil && !errors.As(err, &ce) &&
		!errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		s.log.Error("process request failed", logKeyMethod, method, logKeyErr, err)
	}
	return errconnect.ToConnect(err)
}

// keepaliveInterval reads the Keepalive-Ping-Interval header (seconds).
func keepaliveInterval(h http.Header) time.Duration {
	n, err := strconv.ParseInt(h.Get(keepaliveHeader), 10, 64)
	if err != nil || n <= 0 {
		return defaultKeepalive
	}
	return min(time.Duration(n)*time.Second, maxKeepalive)
}

// Start spawns a process and streams its events. The call's deadline
// bounds the process's lifetime; a client that disconnects leaves it
// running.
func (s *Service) Start(ctx context.Context, req *connect.Request[rpc.StartRequest], stream *connect.ServerStream[rpc.StartResponse]) error {
	const method = "Start"
	u, err := s.cfg.Users.FromHeader(req.Header())
	if err != nil {
		return s.toConnect(method, err)
	}
	sp, err := s.prepare(u, req.Msg)
	if err != nil {
		return s.toConnect(method, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		sp.deadline = dl
	}
	p, sub, err := s.spawn(sp)
	if err != nil {
		return s.toConnect(method, err)
	}
	err = s.follow(ctx, p, sub, nil, keepaliveInterval(req.Header()), func(ev *rpc.ProcessEvent) error {
		return stream.Send(&rpc.StartResponse{Event: ev})
	})
	return s.toConnect(method, err)
}

// Connect attaches to a process by pid or tag and streams its events from
// now on, after a start event. A process that exited within ExitRetention
// yields its end event.
func (s *Service) Connect(ctx context.Context, req *connect.Request[rpc.ConnectRequest], stream *connect.ServerStream[rpc.ConnectResponse]) error {
	const method = "Connect"
	p, err := s.find(req.Msg.GetProcess())
	if err != nil {
		return s.toConnect(method, err)
	}
	sub, end := p.subscribe(s.cfg.SubscriberBuffer)
	err = s.follow(ctx, p, sub, end, keepaliveInterval(req.Header()), func(ev *rpc.ProcessEvent) error {
		return stream.Send(&rpc.ConnectResponse{Event: ev})
	})
	return s.toConnect(method, err)
}

// follow sends a start event, then the subscriber's output and keepalives,
// then the end event. With sub nil, end is already known. The subscriber is
// removed when follow returns, however it returns.
func (s *Service) follow(ctx context.Context, p *proc, sub *subscriber, end *rpc.ProcessEvent_EndEvent, interval time.Duration, send func(*rpc.ProcessEvent) error) error {
	if sub != nil {
		defer p.unsubscribe(sub)
	}
	if err := send(&rpc.ProcessEvent{Event: &rpc.ProcessEvent_Start{Start: &rpc.ProcessEvent_StartEvent{Pid: p.pid}}}); err != nil {
		return err
	}
	if sub == nil {
		return send(&rpc.ProcessEvent{Event: &rpc.ProcessEvent_End{End: end}})
	}
	timer := time.NewTimer(interval)
	defer timer.Stop()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		c, ok, done, end, err := sub.next()
		switch {
		case ok:
			if err := send(dataEvent(c)); err != nil {
				return err
			}
			timer.Reset(interval)
			continue
		case done && err != nil:
			return err
		case done:
			return send(&rpc.ProcessEvent{Event: &rpc.ProcessEvent_End{End: end}})
		}
		select {
		case <-sub.wake:
		case <-timer.C:
			if err := send(&rpc.ProcessEvent{Event: &rpc.ProcessEvent_Keepalive{Keepalive: &rpc.ProcessEvent_KeepAlive{}}}); err != nil {
				return err
			}
			timer.Reset(interval)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func dataEvent(c chunk) *rpc.ProcessEvent {
	d := &rpc.ProcessEvent_DataEvent{}
	switch c.stream {
	case streamStdout:
		d.Output = &rpc.ProcessEvent_DataEvent_Stdout{Stdout: c.data}
	case streamStderr:
		d.Output = &rpc.ProcessEvent_DataEvent_Stderr{Stderr: c.data}
	case streamPTY:
		d.Output = &rpc.ProcessEvent_DataEvent_Pty{Pty: c.data}
	}
	return &rpc.ProcessEvent{Event: &rpc.ProcessEvent_Data{Data: d}}
}

// List returns the running processes.
func (s *Service) List(ctx context.Context, req *connect.Request[rpc.ListRequest]) (*connect.Response[rpc.ListResponse], error) {
	s.mu.Lock()
	var infos []*rpc.ProcessInfo
	for _, p := range s.procs {
		if !p.running() {
			continue
		}
		info := &rpc.ProcessInfo{Config: proto.CloneOf(p.info), Pid: p.pid}
		if p.tag != "" {
			info.Tag = proto.String(p.tag)
		}
		infos = append(infos, info)
	}
	s.mu.Unlock()
	slices.SortFunc(infos, func(a, b *rpc.ProcessInfo) int { return int(a.Pid) - int(b.Pid) })
	return connect.NewResponse(&rpc.ListResponse{Processes: infos}), nil
}

// Update resizes a process's PTY.
func (s *Service) Update(ctx context.Context, req *connect.Request[rpc.UpdateRequest]) (*connect.Response[rpc.UpdateResponse], error) {
	const method = "Update"
	size := req.Msg.GetPty().GetSize()
	if size == nil {
		return nil, s.toConnect(method, errdefs.InvalidArgument("pty.size is required"))
	}
	if size.GetCols() == 0 || size.GetRows() == 0 || size.GetCols() > 0xffff || size.GetRows() > 0xffff {
		return nil, s.toConnect(method, errdefs.InvalidArgument("pty size %dx%d is invalid: cols and rows must be between 1 and 65535", size.GetCols(), size.GetRows()))
	}
	p, err := s.findRunning(req.Msg.GetProcess())
	if err != nil {
		return nil, s.toConnect(method, err)
	}
	if err := p.resize(uint16(size.GetCols()), uint16(size.GetRows())); err != nil {
		return nil, s.toConnect(method, err)
	}
	return connect.NewResponse(&rpc.UpdateResponse{}), nil
}

// SendInput writes one chunk to a process's stdin or PTY.
func (s *Service) SendInput(ctx context.Context, req *connect.Request[rpc.SendInputRequest]) (*connect.Response[rpc.SendInputResponse], error) {
	const method = "SendInput"
	p, err := s.findRunning(req.Msg.GetProcess())
	if err != nil {
		return nil, s.toConnect(method, err)
	}
	if err := p.write(ctx, req.Msg.GetInput()); err != nil {
		return nil, s.toConnect(method, err)
	}
	return connect.NewResponse(&rpc.SendInputResponse{}), nil
}

// StreamInput writes ordered input: a start event naming the process, then
// data events and keepalives.
func (s *Service) StreamInput(ctx context.Context, stream *connect.ClientStream[rpc.StreamInputRequest]) (*connect.Response[rpc.StreamInputResponse], error) {
	const method = "StreamInput"
	if !stream.Receive() {
		if err := stream.Err(); err != nil {
			return nil, s.toConnect(method, err)
		}
		return nil, s.toConnect(method, errdefs.InvalidArgument("input stream ended before its start event"))
	}
	start := stream.Msg().GetStart()
	if start == nil {
		return nil, s.toConnect(method, errdefs.InvalidArgument("the first input stream message must be start{process}"))
	}
	p, err := s.findRunning(start.GetProcess())
	if err != nil {
		return nil, s.toConnect(method, err)
	}
	for stream.Receive() {
		switch ev := stream.Msg().GetEvent().(type) {
		case *rpc.StreamInputRequest_Data:
			if err := p.write(ctx, ev.Data.GetInput()); err != nil {
				return nil, s.toConnect(method, err)
			}
		case *rpc.StreamInputRequest_Keepalive:
		case *rpc.StreamInputRequest_Start:
			return nil, s.toConnect(method, errdefs.InvalidArgument("start may only be the first input stream message"))
		default:
			return nil, s.toConnect(method, errdefs.InvalidArgument("input stream message has no event"))
		}
	}
	if err := stream.Err(); err != nil {
		return nil, s.toConnect(method, err)
	}
	return connect.NewResponse(&rpc.StreamInputResponse{}), nil
}

// SendSignal delivers SIGTERM or SIGKILL to a process's group.
func (s *Service) SendSignal(ctx context.Context, req *connect.Request[rpc.SendSignalRequest]) (*connect.Response[rpc.SendSignalResponse], error) {
	const method = "SendSignal"
	var sig syscall.Signal
	switch req.Msg.GetSignal() {
	case rpc.Signal_SIGNAL_SIGTERM:
		sig = syscall.SIGTERM
	case rpc.Signal_SIGNAL_SIGKILL:
		sig = syscall.SIGKILL
	default:
		return nil, s.toConnect(method, errdefs.InvalidArgument("unsupported signal %v: only SIGNAL_SIGTERM and SIGNAL_SIGKILL can be sent", req.Msg.GetSignal()))
	}
	p, err := s.findRunning(req.Msg.GetProcess())
	if err != nil {
		return nil, s.toConnect(method, err)
	}
	if err := p.signal(sig); err != nil {
		return nil, s.toConnect(method, err)
	}
	return connect.NewResponse(&rpc.SendSignalResponse{}), nil
}

// CloseStdin closes a process's stdin pipe (EOF).
func (s *Service) CloseStdin(ctx context.Context, req *connect.Request[rpc.CloseStdinRequest]) (*connect.Response[rpc.CloseStdinResponse], error) {
	const method = "CloseStdin"
	p, err := s.findRunning(req.Msg.GetProcess())
	if err != nil {
		return nil, s.toConnect(method, err)
	}
	if err := p.requestCloseStdin(); err != nil {
		return nil, s.toConnect(method, err)
	}
	return connect.NewResponse(&rpc.CloseStdinResponse{}), nil
}
