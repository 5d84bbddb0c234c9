//go:build linux

package process

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"wrenn.dev/wrenn/internal/errdefs"
	rpc "wrenn.dev/wrenn/internal/gen/process"
)

// output is a file the process writes to and envd reads until EOF.
type output struct {
	file   *os.File
	stream stream
}

// proc is one process started by the service, from spawn until its end
// event is no longer retained.
//
// Lock order: Service.mu, then proc.inMu, then proc.mu, then subscriber.mu.
type proc struct {
	svc  *Service
	log  *slog.Logger
	seq  uint64 // start order, to pick the newest of several exited processes sharing a tag
	pid  uint32
	tag  string             // "" when untagged
	info *rpc.ProcessConfig // what List reports; never modified
	cmd  *exec.Cmd

	pty     *os.File // PTY master; nil for a pipe process
	stdin   *os.File // write end of the stdin pipe; nil with a PTY or stdin=false
	outputs []output

	readersLeft atomic.Int32
	readersDone chan struct{} // closed when every output reached EOF or was cut off

	inMu sync.Mutex // serialises input writes so they keep their order

	mu          sync.Mutex
	subs        map[*subscriber]struct{}
	exited      bool // the process exited; once set, its pid may be reaped and reused
	stdinClosed bool
	timedOut    bool        // killed because the Start call's deadline passed
	killTimer   *time.Timer // enforces the Start call's deadline; nil without one
	end         *rpc.ProcessEvent_EndEvent
	done        chan struct{} // closed once end is set

	retainTimer *time.Timer // guarded by Service.mu
}

// errExited reports that a process exited before an operation reached it.
func (p *proc) errExited() error {
	return errdefs.NotFound("process %d has already exited", p.pid)
}

// running reports whether the process has not exited yet.
func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.exited
}

// launch starts the goroutines that read the process's output and wait for
// it. Each is counted in the service's WaitGroup.
func (p *proc) launch() {
	p.readersLeft.Store(int32(len(p.outputs)))
	for _, o := range p.outputs {
		p.svc.wg.Go(func() { p.read(o) })
	}
	p.svc.wg.Go(p.wait)
}

// read copies one output to the subscribers until EOF (or EIO, for a PTY
// whose every slave descriptor is closed), or until the drain grace after
// exit cuts it off with a read deadline.
func (p *proc) read(o output) {
	defer func() {
		if p.readersLeft.Add(-1) == 0 {
			close(p.readersDone)
		}
	}()
	buf := make([]byte, o.stream.maxChunk())
	for {
		n, err := o.file.Read(buf)
		if n > 0 {
			p.broadcast(o.stream, buf[:n])
		}
		if err != nil {
			return
		}
	}
}

// broadcast queues a copy of data for every subscriber. A subscriber whose
// queue is full is waited for, without holding p.mu, so the output stops
// being read and the process is slowed to its readers' pace; one that
// takes nothing for SubscriberStall is dropped with an explicit error.
// With no subscribers the data is discarded.
func (p *proc) broadcast(st stream, data []byte) {
	var full []*subscriber
	p.mu.Lock()
	for sub := range p.subs {
		if !sub.offer(st, data) {
			full = append(full, sub)
		}
	}
	p.mu.Unlock()
	for _, sub := range full {
		p.waitRoom(sub, st, data)
	}
}

// waitRoom queues data for sub once its queue has room, or drops sub when
// it stays full for the stall limit.
func (p *proc) waitRoom(sub *subscriber, st stream, data []byte) {
	stall := time.NewTimer(p.svc.cfg.SubscriberStall)
	defer stall.Stop()
	for {
		select {
		case <-sub.room:
			if sub.offer(st, data) {
				return
			}
			// Room for a chunk but not this one (the byte bound): keep
			// waiting, the stall timer still running.
		case <-stall.C:
			p.mu.Lock()
			if _, ok := p.subs[sub]; ok {
				delete(p.subs, sub)
				sub.close(nil, errdefs.ResourceExhausted(
					"output buffer overflow: the subscriber took no output for %s, %d bytes dropped (%d chunks were already queued); reconnect to follow the live output",
					p.svc.cfg.SubscriberStall, len(data), sub.limit))
				p.log.Warn("process output subscriber dropped: stalled", logKeyDropped, len(data))
			}
			p.mu.Unlock()
			return
		}
	}
}

// wait reaps the process, drains its output with a bounded grace, and
// publishes the end event.
func (p *proc) wait() {
	pid := p.cmd.Process.Pid
	// Wait for the exit without reaping, so a signal sent while exited is
	// false can never reach a reused pid or process group.
	waitExit(pid)
	p.mu.Lock()
	p.exited = true
	if p.killTimer != nil {
		p.killTimer.Stop()
	}
	timedOut := p.timedOut
	p.mu.Unlock()

	waitErr := p.cmd.Wait()
	p.closeStdin()

	// Output can outlive the process: a grandchild may still hold stdout or
	// the PTY. Give it a bounded grace, then cut the reads off.
	grace := time.NewTimer(p.svc.drainGrace)
	select {
	case <-p.readersDone:
	case <-grace.C:
		p.log.Info("process exited but its output is still open; closing it", logKeyGrace, p.svc.drainGrace)
		for _, o := range p.outputs {
			if err := o.file.SetReadDeadline(time.Unix(1, 0)); err != nil {
				p.log.Error("cannot interrupt process output read", logKeyErr, err)
			}
		}
		<-p.readersDone
	}
	grace.Stop()
	for _, o := range p.outputs {
		o.file.Close()
	}

	end := endEvent(p.cmd.ProcessState, waitErr, timedOut)
	p.log.Info("process ended", logKeyStatus, end.GetStatus(), logKeyExitCode, end.GetExitCode())
	p.mu.Lock()
	p.end = end
	for sub := range p.subs {
		sub.close(end, nil)
	}
	p.subs = nil
	close(p.done)
	p.mu.Unlock()
	p.svc.retire(p)
}

// waitExit blocks until the process pid has exited, leaving it waitable.
func waitExit(pid int) {
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			return
		}
	}
}

// endEvent describes how the process ended.
func endEvent(state *os.ProcessState, waitErr error, timedOut bool) *rpc.ProcessEvent_EndEvent {
	if state == nil {
		msg := "cannot wait for the process"
		if waitErr != nil {
			msg += ": " + waitErr.Error()
		}
		return &rpc.ProcessEvent_EndEvent{ExitCode: -1, Status: "unknown", Error: &msg}
	}
	ev := &rpc.ProcessEvent_EndEvent{
		ExitCode: int32(state.ExitCode()),
		Exited:   state.Exited(),
		Status:   state.String(),
	}
	if !state.Success() {
		msg := state.String()
		if timedOut {
			msg += " (the request's timeout passed)"
		}
		ev.Error = &msg
	}
	return ev
}

// subscribe adds a subscriber, or returns the end event when the process
// has already ended.
func (p *proc) subscribe(limit int) (*subscriber, *rpc.ProcessEvent_EndEvent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.end != nil {
		return nil, p.end
	}
	sub := newSubscriber(limit)
	p.subs[sub] = struct{}{}
	return sub, nil
}

// unsubscribe removes sub; its queue is discarded.
func (p *proc) unsubscribe(sub *subscriber) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.subs, sub)
}

// signal delivers sig to the process's group (which includes children such
// as the command under `bash -c`), and to the process itself if it left
// that group.
func (p *proc) signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.signalLocked(sig)
}

func (p *proc) signalLocked(sig syscall.Signal) error {
	if p.exited {
		return p.errExited()
	}
	pid := int(p.pid)
	errGroup := syscall.Kill(-pid, sig)
	if pgid, err := syscall.Getpgid(pid); err == nil && pgid == pid && errGroup == nil {
		return nil
	}
	// The process moved to another group (or the group is gone): signal it
	// directly as well.
	if err := syscall.Kill(pid, sig); err != nil && errGroup != nil {
		return err
	}
	return nil
}

// expire kills the process because the Start call's deadline passed.
func (p *proc) expire() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited {
		return
	}
	p.timedOut = true
	p.log.Info("killing process: the request's timeout passed")
	if err := p.signalLocked(syscall.SIGKILL); err != nil {
		p.log.Error("cannot kill process", logKeyErr, err)
	}
}

// closeStdin closes the stdin pipe, if any. A write blocked on it fails.
func (p *proc) closeStdin() {
	if p.stdin == nil {
		return
	}
	p.mu.Lock()
	p.stdinClosed = true
	p.mu.Unlock()
	p.stdin.Close() // the second close of two racing ones reports ErrClosed; nothing to do
}

// requestCloseStdin is CloseStdin: EOF on stdin.
func (p *proc) requestCloseStdin() error {
	if p.pty != nil {
		return errdefs.FailedPrecondition("process %d runs in a PTY and has no separate stdin; send 0x04 (Ctrl-D) as pty input instead", p.pid)
	}
	if p.stdin == nil {
		return errdefs.FailedPrecondition("process %d was started without stdin (stdin=false)", p.pid)
	}
	if !p.running() {
		return p.errExited()
	}
	p.closeStdin()
	return nil
}

// write sends input to the stdin pipe or the PTY, in order with other
// writes. It gives up when ctx ends.
func (p *proc) write(ctx context.Context, in *rpc.ProcessInput) error {
	var (
		f     *os.File
		data  []byte
		stdin bool
	)
	switch v := in.GetInput().(type) {
	case *rpc.ProcessInput_Stdin:
		if p.pty != nil {
			return errdefs.FailedPrecondition("process %d runs in a PTY: send its input as pty, not stdin", p.pid)
		}
		if p.stdin == nil {
			return errdefs.FailedPrecondition("process %d was started without stdin (stdin=false)", p.pid)
		}
		f, data, stdin = p.stdin, v.Stdin, true
	case *rpc.ProcessInput_Pty:
		if p.pty == nil {
			return errdefs.FailedPrecondition("process %d has no PTY: send its input as stdin, not pty", p.pid)
		}
		f, data = p.pty, v.Pty
	default:
		return errdefs.InvalidArgument("input is required: set stdin or pty")
	}

	p.inMu.Lock()
	defer p.inMu.Unlock()
	if err := p.inputState(stdin); err != nil {
		return err
	}
	err := writeCtx(ctx, f, data)
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if stateErr := p.inputState(stdin); stateErr != nil {
		return stateErr
	}
	switch {
	case errors.Is(err, syscall.EPIPE):
		return errdefs.FailedPrecondition("process %d closed its stdin", p.pid)
	case errors.Is(err, syscall.EIO), errors.Is(err, os.ErrClosed):
		return p.errExited()
	}
	return err
}

// inputState reports why input can no longer be written, if it can't.
func (p *proc) inputState(stdin bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.exited:
		return p.errExited()
	case stdin && p.stdinClosed:
		return errdefs.FailedPrecondition("stdin of process %d is closed", p.pid)
	}
	return nil
}

// writeCtx writes data to f, a pollable file, giving up when ctx ends.
func writeCtx(ctx context.Context, f *os.File, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(fired)
		f.SetWriteDeadline(time.Unix(1, 0))
	})
	_, err := f.Write(data)
	if !stop() {
		<-fired
		f.SetWriteDeadline(time.Time{})
	}
	return err
}

// resize sets the PTY's window size; the kernel signals SIGWINCH.
func (p *proc) resize(cols, rows uint16) error {
	if p.pty == nil {
		return errdefs.FailedPrecondition("process %d has no PTY to resize", p.pid)
	}
	if !p.running() {
		return p.errExited()
	}
	rc, err := p.pty.SyscallConn()
	if err != nil {
		return err
	}
	var ioctlErr error
	err = rc.Control(func(fd uintptr) {
		ioctlErr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	})
	if errors.Is(err, os.ErrClosed) {
		return p.errExited()
	}
	return errors.Join(err, ioctlErr)
}
