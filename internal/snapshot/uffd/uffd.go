// Package uffd serves a Firecracker VM's guest memory lazily, page by
// page, from a snapshot (Firecracker's "Uffd" memory backend).
//
// The contract (Firecracker's docs/snapshotting/handling-page-faults-on-
// snapshot-resume.md): the server listens on a Unix socket; Firecracker,
// told to load a snapshot with that socket as its memory backend, creates
// a userfaultfd, registers its guest memory with it, connects, and sends
// one message: a JSON array of regions ([Mapping]) with the userfaultfd
// attached (SCM_RIGHTS). From then on every first touch of a guest page
// stops the touching thread and queues a page-fault event; the server
// reads it, finds the page's bytes in the memory file (region offset +
// distance into the region) and installs them with UFFDIO_COPY, or the
// shared zero page with UFFDIO_ZEROPAGE when the memory says the page is
// zero. Pages the guest gives back (balloon, MADV_DONTNEED) arrive as
// UFFD_EVENT_REMOVE and read as zeros when touched again.
//
// Each fault costs a round trip through the kernel and this server, so a
// fault is resolved together with the pages that follow it in its region
// (Config.Readahead): one UFFDIO_COPY (or UFFDIO_ZEROPAGE) of the
// contiguous run, which stops at the region's end and at the first page
// of the other kind: data, or zero (zero in the memory, or given back; so
// file data never lands in a removed range). The kernel fills the run up
// to the first page already present and wakes the faulting thread.
//
// If the server stops, the guest hangs on its next fault: whoever runs a
// Server must kill the VM when Serve returns an error. Only the peer the
// Config allows (checked with SO_PEERCRED) may hand over its memory; the
// socket is removed once that peer has connected.
package uffd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/bits"
	"net"
	"os"
	"slices"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/snapshot/uffd/uffdsys"
)

// Memory is the memory file the regions' offsets index.
type Memory interface {
	io.ReaderAt
	Size() int64
}

// ZeroReporter is implemented by memories that know, without reading,
// which ranges are all zeros (snapshot.View does); such pages are served
// with the zero page.
type ZeroReporter interface {
	IsZero(off, n int64) bool
}

// Peer is the process at the other end of the socket (SO_PEERCRED).
type Peer struct {
	PID      int
	UID, GID uint32
}

// AllowPID accepts only the process pid.
func AllowPID(pid int) func(Peer) error {
	return func(p Peer) error {
		if p.PID != pid {
			return errdefs.PermissionDenied("peer pid %d is not the VMM (pid %d)", p.PID, pid)
		}
		return nil
	}
}

// AllowUID accepts any process running as uid.
func AllowUID(uid uint32) func(Peer) error {
	return func(p Peer) error {
		if p.UID != uid {
			return errdefs.PermissionDenied("peer uid %d is not %d", p.UID, uid)
		}
		return nil
	}
}

// DefaultHandshakeTimeout is how long an accepted peer has to send its
// mappings.
const DefaultHandshakeTimeout = 10 * time.Second

// Config configures a Server.
type Config struct {
	// SocketPath is where to listen; it must not exist. It is created
	// mode 0600 and removed when the VMM has connected or the server
	// stops.
	SocketPath string
	// Memory is the guest memory to serve.
	Memory Memory
	// AllowPeer decides whether a connecting process is the VMM; others
	// are turned away and the server keeps waiting. Default: processes
	// of this process's uid (AllowUID(os.Getuid())).
	AllowPeer func(Peer) error
	// HandshakeTimeout bounds the wait for an accepted peer's mappings;
	// default DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// Logger receives the server's logs. Default: discarded.
	Logger *slog.Logger
	// Readahead is how many pages a fault resolves, the faulting page
	// and those after it in its region (see the package comment): 1
	// serves only the faulting page; 0 means DefaultReadahead; at most
	// MaxReadahead.
	Readahead int
}

// DefaultReadahead is Config.Readahead's default: 16 pages, 64 KiB.
const DefaultReadahead = 16

// MaxReadahead bounds Config.Readahead: 512 pages, 2 MiB.
const MaxReadahead = 512

// LatencyBuckets is the number of fault-latency histogram buckets.
const LatencyBuckets = 16

// Stats are a server's counters.
type Stats struct {
	// Faults counts page-fault events resolved: by copying the page, by
	// mapping the zero page (ZeroFaults), or by finding the page already
	// mapped, by an earlier event for it or by readahead (AlreadyMapped).
	Faults, ZeroFaults, AlreadyMapped uint64
	// PagesServed counts the pages made present, faulting pages and the
	// pages read ahead with them alike; ZeroPages those of them mapped
	// with the zero page, the rest were copied (BytesCopied).
	PagesServed, ZeroPages uint64
	// BytesCopied is what UFFDIO_COPY installed.
	BytesCopied uint64
	// Retries counts resolutions the kernel refused with EAGAIN (the
	// address space was changing) and that were retried.
	Retries uint64
	// Removes and RemovedBytes count UFFD_EVENT_REMOVE events and their
	// sizes.
	Removes, RemovedBytes uint64
	// RejectedPeers counts connections AllowPeer turned away.
	RejectedPeers uint64
	// FaultTime is the total, MaxFaultTime the longest time from reading
	// a fault event to resolving it.
	FaultTime, MaxFaultTime time.Duration
	// FaultLatency is a histogram of those times: bucket 0 counts faults
	// resolved in under 1µs, bucket i (0 < i < LatencyBuckets-1) those
	// in [2^(i-1), 2^i) µs, the last bucket everything slower.
	FaultLatency [LatencyBuckets]uint64
}

// Server serves one VM's memory. Create it with New, run Serve once,
// stop it with Close (or by cancelling Serve's context).
type Server struct {
	cfg       Config
	log       *slog.Logger
	zero      ZeroReporter
	ln        *net.UnixListener
	connected chan struct{}

	mu        sync.Mutex
	wake      int // eventfd that stops the fault loop; -1 once released
	closed    bool
	serveDone chan struct{} // set by Serve, closed when it returns
	conn      *net.UnixConn // the connection being handshaken
	unlinked  bool          // the socket file is removed
	maps      []Mapping
	stats     Stats
}

// New validates cfg and starts listening on cfg.SocketPath, so the socket
// exists before the VMM is told about it.
// Errors: errdefs.ErrInvalidArgument for a bad Config,
// errdefs.ErrAlreadyExists when the socket path exists.
func New(cfg Config) (*Server, error) {
	switch {
	case cfg.SocketPath == "":
		return nil, errdefs.InvalidArgument("uffd server: no socket path")
	case len(cfg.SocketPath) >= len(unix.RawSockaddrUnix{}.Path):
		return nil, errdefs.InvalidArgument("uffd server: socket path %q is longer than a Unix socket address allows", cfg.SocketPath)
	case cfg.Memory == nil:
		return nil, errdefs.InvalidArgument("uffd server: no memory to serve")
	case cfg.HandshakeTimeout < 0:
		return nil, errdefs.InvalidArgument("uffd server: negative handshake timeout")
	case cfg.Readahead < 0 || cfg.Readahead > MaxReadahead:
		return nil, errdefs.InvalidArgument("uffd server: readahead of %d pages: want 1 to %d, or 0 for the default", cfg.Readahead, MaxReadahead)
	}
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.Readahead == 0 {
		cfg.Readahead = DefaultReadahead
	}
	if cfg.AllowPeer == nil {
		cfg.AllowPeer = AllowUID(uint32(os.Getuid()))
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if _, err := os.Lstat(cfg.SocketPath); err == nil {
		return nil, errdefs.AlreadyExists("uffd server: %s already exists", cfg.SocketPath)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: cfg.SocketPath, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("uffd server: %w", err)
	}
	ln.SetUnlinkOnClose(false) // closeListener removes it, once
	if err := os.Chmod(cfg.SocketPath, 0o600); err != nil {
		ln.Close()
		os.Remove(cfg.SocketPath)
		return nil, fmt.Errorf("uffd server: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		ln.Close()
		os.Remove(cfg.SocketPath)
		return nil, fmt.Errorf("uffd server: eventfd: %w", err)
	}
	s := &Server{
		cfg: cfg, log: cfg.Logger.With("socket", cfg.SocketPath), ln: ln,
		connected: make(chan struct{}), wake: wake,
	}
	s.zero, _ = cfg.Memory.(ZeroReporter)
	return s, nil
}

// SocketPath returns the socket the server listens on.
func (s *Server) SocketPath() string { return s.cfg.SocketPath }

// Connected is closed once the VMM's handshake has succeeded and its
// faults are being served.
func (s *Server) Connected() <-chan struct{} { return s.connected }

// Mappings returns the regions the VMM sent (nil before Connected).
func (s *Server) Mappings() []Mapping {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.maps)
}

// Stats returns the server's counters so far.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Serve waits for the VMM to connect (until ctx ends), takes its mappings
// and userfaultfd, and serves its page faults until the VMM exits, Close
// is called or ctx ends. It returns nil when the VMM exited or Close was
// called, ctx's error when ctx ended, and otherwise why serving failed
// (bad handshake, timeout, a page that could not be read or installed),
// after which the VM must be killed. Serve may be called once; it closes
// the socket, the userfaultfd and everything else it opened before
// returning.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return errdefs.FailedPrecondition("uffd server %s is closed", s.cfg.SocketPath)
	case s.serveDone != nil:
		s.mu.Unlock()
		return errdefs.FailedPrecondition("uffd server %s: Serve called twice", s.cfg.SocketPath)
	}
	s.serveDone = make(chan struct{})
	done := s.serveDone
	s.mu.Unlock()
	defer close(done)
	defer s.release()
	stop := context.AfterFunc(ctx, s.interrupt)
	defer stop()
	err := s.serve(ctx)
	st := s.Stats()
	s.log.Info("uffd server stopped", "err", err, "faults", st.Faults, "zero_faults", st.ZeroFaults,
		"pages_served", st.PagesServed, "zero_pages", st.ZeroPages, "bytes_copied", st.BytesCopied, "removes", st.Removes, "max_fault_time", st.MaxFaultTime)
	return err
}

// Close stops Serve (waiting for it to return) and releases the socket.
// It may be called any number of times, before, during or after Serve.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	done := s.serveDone
	s.mu.Unlock()
	s.interrupt()
	if done != nil {
		<-done
	}
	s.release()
	return nil
}

// interrupt wakes whatever Serve is blocked in.
func (s *Server) interrupt() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.wake >= 0 {
		one := [8]byte{1}
		_, _ = unix.Write(s.wake, one[:])
	}
	if s.conn != nil {
		_ = s.conn.SetReadDeadline(time.Unix(1, 0))
	}
	_ = s.ln.Close()
}

// release closes the listener and the wake eventfd and removes the
// socket; idempotent.
func (s *Server) release() {
	s.closeListener()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.wake >= 0 {
		_ = unix.Close(s.wake)
		s.wake = -1
	}
}

// closeListener closes the listener and removes the socket file, once:
// the path may be someone else's afterwards.
func (s *Server) closeListener() {
	_ = s.ln.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.unlinked {
		return
	}
	s.unlinked = true
	if err := os.Remove(s.cfg.SocketPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("uffd server: socket not removed", "err", err)
	}
}

func (s *Server) stopping(ctx context.Context) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed || ctx.Err() != nil
}

// stopErr is what Serve returns when it was told to stop.
func (s *Server) stopErr(ctx context.Context, doing string) error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed || ctx.Err() == nil {
		return nil
	}
	return fmt.Errorf("uffd server %s: %s: %w", s.cfg.SocketPath, doing, ctx.Err())
}

func (s *Server) serve(ctx context.Context) error {
	conn, peer, err := s.accept(ctx)
	if err != nil || conn == nil {
		return err
	}
	fd, maps, err := s.handshake(ctx, conn, peer)
	conn.Close()
	s.closeListener() // the VMM is here: nobody else may connect
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	s.mu.Lock()
	s.maps = maps
	s.mu.Unlock()

	pidfd, err := unix.PidfdOpen(peer.PID, 0)
	switch {
	case errors.Is(err, unix.ESRCH):
		s.log.Info("uffd server: the VMM exited right after connecting", "pid", peer.PID)
		return nil
	case err != nil:
		// Without a pidfd the server cannot notice the VMM's exit and
		// serves until Close.
		s.log.Warn("uffd server: cannot watch the VMM", "pid", peer.PID, "err", err)
		pidfd = -1
	default:
		defer unix.Close(pidfd)
	}
	s.log.Info("uffd server: VMM connected", "pid", peer.PID, "regions", fmtMappings(maps))
	close(s.connected)
	return s.serveFaults(ctx, fd, pidfd, maps)
}

// accept returns the first connection AllowPeer accepts; nil, nil when
// told to stop.
func (s *Server) accept(ctx context.Context) (*net.UnixConn, Peer, error) {
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if s.stopping(ctx) {
				return nil, Peer{}, s.stopErr(ctx, "waiting for the VMM to connect")
			}
			return nil, Peer{}, fmt.Errorf("uffd server %s: accept: %w", s.cfg.SocketPath, err)
		}
		peer, err := peerOf(c)
		if err == nil {
			err = s.cfg.AllowPeer(peer)
		}
		if err != nil {
			s.mu.Lock()
			s.stats.RejectedPeers++
			s.mu.Unlock()
			s.log.Warn("uffd server: connection refused", "pid", peer.PID, "uid", peer.UID, "err", err)
			c.Close()
			continue
		}
		return c, peer, nil
	}
}

func peerOf(c *net.UnixConn) (Peer, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return Peer{}, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Peer{}, err
	}
	if cerr != nil {
		return Peer{}, fmt.Errorf("SO_PEERCRED: %w", cerr)
	}
	return Peer{PID: int(cred.Pid), UID: cred.Uid, GID: cred.Gid}, nil
}

// maxHandshakeFDs is how many passed fds a handshake message may carry
// before the kernel truncates (and we reject) it.
const maxHandshakeFDs = 8

// handshake reads the mappings message and the userfaultfd that comes
// with it. Every fd received is closed unless returned.
func (s *Server) handshake(ctx context.Context, conn *net.UnixConn, peer Peer) (ufd int, maps []Mapping, err error) {
	s.mu.Lock()
	s.conn = conn
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.conn = nil
		s.mu.Unlock()
	}()
	if s.stopping(ctx) { // interrupted before s.conn was set
		return -1, nil, s.stopErr(ctx, "handshake")
	}
	if err := conn.SetReadDeadline(time.Now().Add(s.cfg.HandshakeTimeout)); err != nil {
		return -1, nil, fmt.Errorf("uffd handshake: %w", err)
	}
	var fds []int
	defer func() {
		if err != nil {
			for _, fd := range fds {
				_ = unix.Close(fd)
			}
		}
	}()
	failf := func(format string, args ...any) error {
		return fmt.Errorf("uffd handshake with pid %d: %s", peer.PID, fmt.Sprintf(format, args...))
	}
	var msg []byte
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4*maxHandshakeFDs))
	for {
		n, oobn, flags, _, rerr := conn.ReadMsgUnix(buf, oob)
		n, oobn = max(n, 0), max(oobn, 0) // -1 with some errors
		got, perr := unixRights(oob[:oobn])
		fds = append(fds, got...)
		if perr != nil {
			return -1, nil, failf("control message: %v", perr)
		}
		if flags&unix.MSG_CTRUNC != 0 {
			return -1, nil, failf("control data truncated: more than %d fds sent", maxHandshakeFDs)
		}
		msg = append(msg, buf[:n]...)
		if n > 0 {
			maps, err = parseMappings(msg, s.cfg.Memory.Size())
			if err == nil {
				break
			}
			if !errors.Is(err, errIncomplete) {
				return -1, nil, fmt.Errorf("uffd handshake with pid %d: %w", peer.PID, err)
			}
			if len(msg) > maxMappingsMessage {
				return -1, nil, failf("mappings message exceeds %d bytes", maxMappingsMessage)
			}
		}
		if rerr != nil {
			switch {
			case s.stopping(ctx):
				return -1, nil, s.stopErr(ctx, "handshake")
			case errors.Is(rerr, os.ErrDeadlineExceeded):
				return -1, nil, fmt.Errorf("uffd handshake with pid %d: %w: no complete mappings within %s (got %d bytes)",
					peer.PID, errdefs.ErrDeadlineExceeded, s.cfg.HandshakeTimeout, len(msg))
			case errors.Is(rerr, io.EOF):
				return -1, nil, failf("connection closed after %d bytes, before the mappings were complete", len(msg))
			default:
				return -1, nil, failf("read: %v", rerr)
			}
		}
	}
	switch {
	case len(fds) == 0:
		return -1, nil, fmt.Errorf("uffd handshake with pid %d: %w", peer.PID,
			errdefs.InvalidArgument("no userfaultfd attached to the mappings"))
	case len(fds) > 1:
		return -1, nil, fmt.Errorf("uffd handshake with pid %d: %w", peer.PID,
			errdefs.InvalidArgument("%d fds attached to the mappings, want one userfaultfd", len(fds)))
	case !uffdsys.IsUserfaultfd(fds[0]):
		return -1, nil, fmt.Errorf("uffd handshake with pid %d: %w", peer.PID,
			errdefs.InvalidArgument("the fd attached to the mappings is not a userfaultfd"))
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		return -1, nil, failf("userfaultfd: %v", err)
	}
	return fds[0], maps, nil
}

// unixRights returns the fds in SCM_RIGHTS control messages.
func unixRights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	cmsgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	var errs []error
	for _, c := range cmsgs {
		if c.Header.Level != unix.SOL_SOCKET || c.Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&c)
		fds = append(fds, got...)
		errs = append(errs, err)
	}
	return fds, errors.Join(errs...)
}

// region is a Mapping being served.
type region struct {
	Mapping
	removed []uint64 // pages given back (UFFD_EVENT_REMOVE): serve zeros
}

func (r *region) contains(addr uint64) bool {
	return addr >= r.BaseHostVirtAddr && addr-r.BaseHostVirtAddr < r.Size
}

func (r *region) page(addr uint64) uint64 { return (addr - r.BaseHostVirtAddr) / r.PageSize }

// isRemoved reports whether page p (index in r) was given back.
func (r *region) isRemoved(p uint64) bool {
	return r.removed[p/64]&(1<<(p%64)) != 0
}

// markRemoved marks the pages of [start, end) inside r.
func (r *region) markRemoved(start, end uint64) {
	lo, hi := max(start, r.BaseHostVirtAddr), min(end, r.BaseHostVirtAddr+r.Size)
	for a := lo &^ (r.PageSize - 1); a < hi; a += r.PageSize {
		p := r.page(a)
		r.removed[p/64] |= 1 << (p % 64)
	}
}

// retryDelay is how long the fault loop waits before retrying faults the
// kernel refused with EAGAIN when no new event arrives meanwhile: the
// thread whose address-space change caused it finishes its part after we
// have read its event, so there may be nothing to wake us.
const retryDelay = 1 // ms

// msgBatch is how many events one read takes at most.
const msgBatch = 64

// errVMMGone: the faulting process has exited.
var errVMMGone = errors.New("the VMM exited")

func (s *Server) serveFaults(ctx context.Context, fd, pidfd int, maps []Mapping) error {
	regions := make([]*region, len(maps))
	for i, m := range maps {
		regions[i] = &region{Mapping: m, removed: make([]uint64, (m.Size/m.PageSize+63)/64)}
	}
	// UFFDIO_COPY copies from an address in this process: a buffer of
	// our own outside the Go heap, one readahead window long.
	page, err := unix.Mmap(-1, 0, s.cfg.Readahead*PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("uffd server: page buffer: %w", err)
	}
	defer unix.Munmap(page)
	s.mu.Lock()
	wake := s.wake
	s.mu.Unlock()
	pfds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: int32(wake), Events: unix.POLLIN}}
	if pidfd >= 0 {
		pfds = append(pfds, unix.PollFd{Fd: int32(pidfd), Events: unix.POLLIN})
	}
	raw := make([]byte, uffdsys.MsgSize*msgBatch)
	var events, retry []uffdsys.Msg
	for {
		timeout := -1
		if len(retry) > 0 {
			timeout = retryDelay
		}
		if _, err := unix.Poll(pfds, timeout); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("uffd server: poll: %w", err)
		}
		if pfds[1].Revents != 0 {
			return s.stopErr(ctx, "serving faults")
		}
		if len(pfds) > 2 && pfds[2].Revents != 0 {
			s.log.Info("uffd server: the VMM exited")
			return nil
		}
		if pfds[0].Revents&(unix.POLLERR|unix.POLLNVAL) != 0 {
			return fmt.Errorf("uffd server: userfaultfd poll error (revents %#x)", pfds[0].Revents)
		}
		// Faults refused last round go first: they are older.
		events = append(events[:0], retry...)
		retry = retry[:0]
		for {
			n, err := unix.Read(fd, raw)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if errors.Is(err, unix.EAGAIN) {
				break
			}
			if err != nil {
				return fmt.Errorf("uffd server: read events: %w", err)
			}
			for off := 0; off+uffdsys.MsgSize <= n; off += uffdsys.MsgSize {
				m, _ := uffdsys.DecodeMsg(raw[off:])
				events = append(events, m)
			}
			if n < len(raw) {
				break
			}
		}
		// Removes first: once a remove event is read, the kernel lets
		// copies into its range through, and its thread zaps the range
		// concurrently; a readahead run resolved after the zap would
		// leave file data in pages that must read as zeros. Marked
		// first, the range stops every run of this batch and later
		// ones. (A fault queued before the remove, in its range, gets
		// zeros: the guest raced itself, either answer is valid.)
		for _, m := range events {
			if m.Event != uffdsys.EventRemove {
				continue
			}
			for _, r := range regions {
				r.markRemoved(m.Start, m.End)
			}
			s.mu.Lock()
			s.stats.Removes++
			s.stats.RemovedBytes += m.End - m.Start
			s.mu.Unlock()
		}
		for _, m := range events {
			switch m.Event {
			case uffdsys.EventPagefault:
				again, err := s.fault(fd, regions, m.Address, page)
				if errors.Is(err, errVMMGone) {
					s.log.Info("uffd server: the VMM exited")
					return nil
				}
				if err != nil {
					return err
				}
				if again {
					retry = append(retry, m)
				}
			case uffdsys.EventRemove:
				// Applied above.
			case uffdsys.EventFork:
				// Not asked for, but the kernel installed an fd for it
				// in this process: do not leak it.
				_ = unix.Close(int(m.UFD))
				s.log.Warn("uffd server: unexpected fork event")
			default:
				s.log.Warn("uffd server: unexpected event", "event", m.Event)
			}
		}
	}
}

// fault resolves the page fault at addr, with readahead. again means the
// kernel asked for a retry (EAGAIN).
func (s *Server) fault(fd int, regions []*region, addr uint64, buf []byte) (again bool, err error) {
	start := time.Now()
	var r *region
	for _, c := range regions {
		if c.contains(addr) {
			r = c
			break
		}
	}
	if r == nil {
		return false, fmt.Errorf("uffd server: fault at %#x is outside every region the VMM sent", addr)
	}
	ps := r.PageSize
	dst := addr &^ (ps - 1)
	pages, zero := s.window(r, dst)
	n, err := s.resolve(fd, r, dst, pages, zero, buf)
	if err != nil && n == 0 && pages > 1 && !errors.Is(err, errRead) &&
		!errors.Is(err, unix.EEXIST) && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.ESRCH) {
		// The kernel fills a run only inside one mapping (ENOENT when
		// the run crosses into another, as after an mprotect split
		// the region): the faulting page alone must still be served.
		pages = 1
		n, err = s.resolve(fd, r, dst, pages, zero, buf)
	}
	switch {
	case errors.Is(err, errRead):
		return false, err
	case n > 0:
		// The faulting page (the run's first) at least is mapped and
		// its waiters woken; a run cut short by a page already present
		// reports what it filled along with EAGAIN (or EEXIST): the
		// rest is left to later faults.
		err = nil
	case err == nil:
		return false, fmt.Errorf("uffd server: resolving [%#x,+%d pages) mapped nothing and reported no error", dst, pages)
	case errors.Is(err, unix.EEXIST):
		// Another event for this page, or readahead, got there first;
		// make sure nobody still waits on it.
		if werr := uffdsys.Wake(fd, dst, ps); werr != nil && !errors.Is(werr, unix.ESRCH) {
			return false, fmt.Errorf("uffd server: %w", werr)
		}
	case errors.Is(err, unix.EAGAIN):
		s.mu.Lock()
		s.stats.Retries++
		s.mu.Unlock()
		return true, nil
	case errors.Is(err, unix.ESRCH):
		return false, errVMMGone
	case errors.Is(err, unix.ENOENT):
		// The range is no longer registered (unmapped): nobody waits.
		s.log.Debug("uffd server: fault on an unmapped page dropped", "addr", dst)
		return false, nil
	default:
		op := "UFFDIO_COPY"
		if zero {
			op = "UFFDIO_ZEROPAGE"
		}
		return false, fmt.Errorf("uffd server: %s at %#x: %w", op, dst, err)
	}
	d := time.Since(start)
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &s.stats
	st.Faults++
	switch {
	case n == 0:
		st.AlreadyMapped++
	case zero:
		st.ZeroFaults++
		st.ZeroPages += uint64(n) / ps
	default:
		st.BytesCopied += uint64(n)
	}
	st.PagesServed += uint64(n) / ps
	st.FaultTime += d
	st.MaxFaultTime = max(st.MaxFaultTime, d)
	st.FaultLatency[min(bits.Len64(uint64(d/time.Microsecond)), LatencyBuckets-1)]++
	return false, nil
}

// window returns the run of pages to resolve for a fault on the page at
// dst in r: dst's page and up to Readahead-1 following ones, all zero
// (given back, or zero in the memory) or all data. A data run never
// includes a page given back. The region lies inside the memory
// (checkMappings), so the run does too.
func (s *Server) window(r *region, dst uint64) (pages uint64, zero bool) {
	ps := r.PageSize
	first := r.page(dst)
	limit := min(uint64(s.cfg.Readahead), r.Size/ps-first)
	off := int64(r.Offset + first*ps)
	isZero := func(i uint64) bool {
		return r.isRemoved(first+i) || (s.zero != nil && s.zero.IsZero(off+int64(i*ps), int64(ps)))
	}
	zero = isZero(0)
	pages = 1
	for pages < limit && isZero(pages) == zero {
		pages++
	}
	return pages, zero
}

// errRead marks a failure to read the memory.
var errRead = errors.New("read memory")

// resolve installs the run of pages at dst: the zero page, or the
// memory's bytes copied through buf. It returns the bytes installed,
// which may be fewer than the run, with an error.
func (s *Server) resolve(fd int, r *region, dst, pages uint64, zero bool, buf []byte) (int64, error) {
	ps := r.PageSize
	if zero {
		return uffdsys.Zeropage(fd, dst, pages*ps, 0)
	}
	off := int64(r.Offset + (dst - r.BaseHostVirtAddr))
	got, rerr := s.cfg.Memory.ReadAt(buf[:pages*ps], off)
	if got < int(pages*ps) {
		if got < int(ps) {
			return 0, fmt.Errorf("uffd server: %w at %d for the page at %#x: %w", errRead, off, dst, cmpOr(rerr, io.ErrUnexpectedEOF))
		}
		pages = uint64(got) / ps // serve what was read; later faults report the rest
	}
	return uffdsys.Copy(fd, dst, uint64(uintptr(unsafe.Pointer(&buf[0]))), pages*ps, 0)
}

func cmpOr(err, fallback error) error {
	if err == nil || errors.Is(err, io.EOF) {
		return fallback
	}
	return err
}
