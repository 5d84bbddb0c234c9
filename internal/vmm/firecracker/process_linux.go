//go:build linux

package firecracker

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"wrenn.dev/wrenn/internal/errdefs"
)

// setSession makes the process the leader of a new session, so it neither
// shares the agent's process group nor gets its terminal's signals, and
// survives the agent.
func setSession(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
}

// startProcess starts cmd, inside the network namespace at netns when set.
//
// Joining a namespace is per thread, and a forked child inherits the
// forking thread's namespaces. So the fork happens on a locked OS thread
// that joins netns first and rejoins its own namespace afterwards. If it
// cannot rejoin, the thread stays locked and the runtime retires it when
// the goroutine ends, so no goroutine of the agent ever runs in a VM's
// namespace.
func startProcess(cmd *exec.Cmd, netns string) error {
	if netns == "" {
		return cmd.Start()
	}
	target, err := unix.Open(netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", netns, err)
	}
	defer unix.Close(target)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		own, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own network namespace: %w", err)
			return
		}
		defer unix.Close(own)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("join network namespace %s: %w", netns, err)
			return
		}
		err = cmd.Start()
		if unix.Setns(own, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// childProcess is a firecracker this agent started.
type childProcess struct{ cmd *exec.Cmd }

func (p *childProcess) pid() int { return p.cmd.Process.Pid }

func (p *childProcess) signal(sig syscall.Signal) error {
	err := p.cmd.Process.Signal(sig)
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}

func (p *childProcess) wait() error { return p.cmd.Wait() }
func (p *childProcess) release()    {}

// adoptedProcess is a firecracker started by an earlier agent, watched
// through a pidfd: immune to pid reuse, pollable by the runtime's poller
// (no thread blocks while waiting), and able to reap the process when it
// is our child after all (when this agent is a child subreaper).
type adoptedProcess struct {
	pidv int
	f    *os.File
}

func adoptProcess(pid int) (*adoptedProcess, error) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if errors.Is(err, unix.ESRCH) {
		return nil, errdefs.NotFound("process %d does not exist", pid)
	}
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	return &adoptedProcess{pidv: pid, f: os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid))}, nil
}

func (p *adoptedProcess) pid() int { return p.pidv }

// alive reports whether the process has not exited yet.
func (p *adoptedProcess) alive() bool {
	rc, err := p.f.SyscallConn()
	if err != nil {
		return false
	}
	exited := true
	_ = rc.Control(func(fd uintptr) { exited = pidfdExited(int(fd), 0) })
	return !exited
}

func (p *adoptedProcess) signal(sig syscall.Signal) error {
	rc, err := p.f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.PidfdSendSignal(int(fd), sig, nil, 0)
	}); err != nil {
		return err
	}
	if errors.Is(serr, unix.ESRCH) {
		return nil
	}
	return serr
}

var errExitUnknown = errors.New("exit status unknown: not a child of this agent")

func (p *adoptedProcess) wait() error {
	rc, err := p.f.SyscallConn()
	if err != nil {
		return err
	}
	// A pidfd becomes readable when the process exits.
	if err := rc.Read(func(fd uintptr) bool { return pidfdExited(int(fd), 0) }); err != nil {
		// Not registered with the poller: block in poll(2) instead.
		_ = rc.Control(func(fd uintptr) {
			for !pidfdExited(int(fd), -1) {
			}
		})
	}
	exit := errExitUnknown
	_ = rc.Control(func(fd uintptr) {
		var info unix.Siginfo
		if unix.Waitid(unix.P_PIDFD, int(fd), &info, unix.WEXITED|unix.WNOHANG, nil) == nil {
			exit = siginfoExit(&info)
		}
	})
	return exit
}

func (p *adoptedProcess) release() { _ = p.f.Close() }

// pidfdExited polls the pidfd for up to timeout milliseconds (-1: forever).
func pidfdExited(fd, timeout int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, timeout)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err == nil && n > 0
	}
}

// si_code values of SIGCHLD (<asm-generic/siginfo.h>).
const (
	cldExited = 1
	cldKilled = 2
	cldDumped = 3
)

// siginfoExit turns waitid's siginfo into an exit error (nil for status 0).
// x/sys/unix keeps the union opaque: on Linux the SIGCHLD fields si_pid,
// si_uid and si_status open it, and it starts after three int32s, aligned
// to the pointer size.
func siginfoExit(info *unix.Siginfo) error {
	union := uintptr(12)
	if unsafe.Sizeof(uintptr(0)) == 8 {
		union = 16
	}
	status := *(*int32)(unsafe.Add(unsafe.Pointer(info), union+8))
	switch info.Code {
	case cldExited:
		if status == 0 {
			return nil
		}
		return fmt.Errorf("exit status %d", status)
	case cldKilled, cldDumped:
		return fmt.Errorf("signal: %v", syscall.Signal(status))
	}
	return errExitUnknown
}

// readCmdline returns the process's argv.
func readCmdline(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), nil
}
