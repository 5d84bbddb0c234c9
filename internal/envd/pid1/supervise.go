package pid1

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Supervisor defaults.
const (
	DefaultMinBackoff  = 250 * time.Millisecond
	DefaultMaxBackoff  = 8 * time.Second
	DefaultMaxRestarts = 10
	DefaultStableAfter = 30 * time.Second
	DefaultStopGrace   = 10 * time.Second
)

// exitStartFailed is the code of a child that could not be started, as a
// shell reports a command it cannot run.
const exitStartFailed = 127

// Supervisor runs one child process, restarts it when it crashes and reaps
// every process that becomes a child of this one.
//
// Run must be the only thing in the process that starts and waits for
// child processes: it reaps with wait4(-1), which would take exit statuses
// that an exec.Cmd.Wait elsewhere in the process is waiting for.
type Supervisor struct {
	Argv []string // program and arguments; Argv[0] must be a path
	Env  []string
	// Stdin, Stdout and Stderr are the child's; default this process's.
	Stdin, Stdout, Stderr *os.File
	// MinBackoff is the delay before the first restart, doubling up to
	// MaxBackoff; defaults DefaultMinBackoff and DefaultMaxBackoff.
	MinBackoff, MaxBackoff time.Duration
	// MaxRestarts is how many crashes in a row are followed by a restart;
	// one more and Run gives up and returns the crash's code. A run that
	// lasts StableAfter clears the count and the backoff. 0 means
	// DefaultMaxRestarts; negative means never restart.
	MaxRestarts int
	// StableAfter defaults to DefaultStableAfter.
	StableAfter time.Duration
	// StopGrace is how long the child has to exit after SIGTERM before it
	// gets SIGKILL; default DefaultStopGrace.
	StopGrace time.Duration
	// Logger receives the supervisor's logs; default discards.
	Logger *slog.Logger
}

// Supervise runs argv with env as the child of this process, which should
// be PID 1, with the default Supervisor settings. It returns:
//   - the child's exit code when it exits after ctx ended or after a
//     SIGTERM or SIGINT sent to this process (both are forwarded as they
//     are: ctx ending sends SIGTERM);
//   - 0 when the child exits with status 0 by itself;
//   - the code of the last crash when the child keeps crashing.
//
// A child killed by a signal has code 128+signal, like in a shell.
func Supervise(ctx context.Context, argv []string, env []string, log *slog.Logger) int {
	s := &Supervisor{Argv: argv, Env: env, Logger: log}
	return s.Run(ctx)
}

func (s *Supervisor) defaults() {
	if s.MinBackoff <= 0 {
		s.MinBackoff = DefaultMinBackoff
	}
	if s.MaxBackoff < s.MinBackoff {
		s.MaxBackoff = max(DefaultMaxBackoff, s.MinBackoff)
	}
	if s.MaxRestarts == 0 {
		s.MaxRestarts = DefaultMaxRestarts
	}
	if s.StableAfter <= 0 {
		s.StableAfter = DefaultStableAfter
	}
	if s.StopGrace <= 0 {
		s.StopGrace = DefaultStopGrace
	}
	if s.Logger == nil {
		s.Logger = slog.New(slog.DiscardHandler)
	}
	if s.Stdin == nil {
		s.Stdin = os.Stdin
	}
	if s.Stdout == nil {
		s.Stdout = os.Stdout
	}
	if s.Stderr == nil {
		s.Stderr = os.Stderr
	}
}

// run is the state of one Run.
type run struct {
	s        *Supervisor
	log      *slog.Logger
	child    *os.Process // nil while none runs
	started  time.Time
	stopping bool // a stop was forwarded: the next exit ends Run
	crashes  int
	backoff  time.Duration

	restart *time.Timer
	kill    *time.Timer
}

// Run supervises until the child exits for good (see Supervise) and
// returns its code. It may be called again after it returns.
func (s *Supervisor) Run(ctx context.Context) int {
	s.defaults()
	if len(s.Argv) == 0 {
		s.Logger.Error("pid1: nothing to supervise: empty argv")
		return exitStartFailed
	}
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, unix.SIGCHLD, unix.SIGTERM, unix.SIGINT)
	defer signal.Stop(sigs)

	r := &run{s: s, log: s.Logger, backoff: s.MinBackoff}
	defer r.stopTimers()
	if code, done := r.start(); done {
		return code
	}
	ctxDone := ctx.Done()
	for {
		select {
		case <-ctxDone:
			ctxDone = nil
			if code, done := r.stop(unix.SIGTERM); done {
				return code
			}
		case sig := <-sigs:
			if sig == unix.SIGCHLD {
				if code, done := r.reap(); done {
					return code
				}
				continue
			}
			ssig := sig.(syscall.Signal)
			r.log.Info("pid1: forwarding signal", logKeySignal, ssig.String())
			if code, done := r.stop(ssig); done {
				return code
			}
		case <-timerC(r.restart):
			r.restart = nil
			if code, done := r.start(); done {
				return code
			}
		case <-timerC(r.kill):
			r.kill = nil
			if r.child != nil {
				r.log.Warn("pid1: child did not stop in time; killing it", logKeyPID, r.child.Pid)
				_ = r.child.Signal(unix.SIGKILL)
			}
		}
	}
}

// timerC is t's channel, or nil (never ready) without a timer.
func timerC(t *time.Timer) <-chan time.Time {
	if t == nil {
		return nil
	}
	return t.C
}

func (r *run) stopTimers() {
	if r.restart != nil {
		r.restart.Stop()
	}
	if r.kill != nil {
		r.kill.Stop()
	}
}

// start starts the child. A failure to start counts as a crash; done
// means that was one crash too many.
func (r *run) start() (code int, done bool) {
	p, err := os.StartProcess(r.s.Argv[0], r.s.Argv, &os.ProcAttr{
		Env:   r.s.Env,
		Files: []*os.File{r.s.Stdin, r.s.Stdout, r.s.Stderr},
	})
	if err != nil {
		r.log.Error("pid1: cannot start child", logKeyArgv, r.s.Argv, logKeyErr, err)
		return exitStartFailed, !r.crashed(exitStartFailed)
	}
	r.child, r.started = p, time.Now()
	r.log.Info("pid1: child started", logKeyPID, p.Pid, logKeyArgv, r.s.Argv)
	return 0, false
}

// stop forwards sig to the child and arms the kill timer. With no child
// running (between restarts), Run ends at once with 128+sig.
func (r *run) stop(sig syscall.Signal) (int, bool) {
	r.stopping = true
	if r.child == nil {
		return 128 + int(sig), true
	}
	if err := r.child.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		r.log.Warn("pid1: forward signal", logKeySignal, sig.String(), logKeyErr, err)
	}
	if r.kill == nil {
		r.kill = time.NewTimer(r.s.StopGrace)
	}
	return 0, false
}

// reap collects every exited child. It reports done when the supervised
// child's exit ends Run.
func (r *run) reap() (int, bool) {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 { // ECHILD: none left; 0: none exited yet
			return 0, false
		}
		if r.child == nil || pid != r.child.Pid {
			r.log.Debug("pid1: reaped orphan", logKeyPID, pid, logKeyCode, exitCode(ws))
			continue
		}
		code := exitCode(ws)
		_ = r.child.Release()
		r.child = nil
		if r.kill != nil {
			r.kill.Stop()
			r.kill = nil
		}
		switch {
		case r.stopping:
			r.log.Info("pid1: child stopped", logKeyPID, pid, logKeyCode, code)
			r.reapRest()
			return code, true
		case code == 0:
			r.log.Info("pid1: child exited", logKeyPID, pid, logKeyCode, code)
			r.reapRest()
			return 0, true
		}
		if time.Since(r.started) >= r.s.StableAfter {
			r.crashes, r.backoff = 0, r.s.MinBackoff
		}
		if !r.crashed(code) {
			r.reapRest()
			return code, true
		}
	}
}

// reapRest collects exited processes left before Run returns.
func (r *run) reapRest() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
	}
}

// crashed counts a crash and schedules a restart; false means give up.
func (r *run) crashed(code int) bool {
	r.crashes++
	if r.s.MaxRestarts < 0 || r.crashes > r.s.MaxRestarts {
		r.log.Error("pid1: child keeps crashing; giving up", logKeyCode, code, logKeyCrashes, r.crashes)
		return false
	}
	r.log.Warn("pid1: child crashed; restarting", logKeyCode, code, logKeyDelay, r.backoff)
	r.restart = time.NewTimer(r.backoff)
	r.backoff = min(2*r.backoff, r.s.MaxBackoff)
	return true
}

// exitCode is the shell's view of a wait status.
func exitCode(ws unix.WaitStatus) int {
	switch {
	case ws.Exited():
		return ws.ExitStatus()
	case ws.Signaled():
		return 128 + int(ws.Signal())
	}
	return -1
}
