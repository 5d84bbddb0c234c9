//go:build linux

package process

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"wrenn.dev/wrenn/internal/envd/identity"
	"wrenn.dev/wrenn/internal/errdefs"
	rpc "wrenn.dev/wrenn/internal/gen/process"
)

// Defaults for values a request leaves out.
const (
	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	defaultCols = 80
	defaultRows = 24
)

// Cgroup kinds asked of [CgroupPlacer].
const (
	cgroupUser = "user"
	cgroupPTYs = "ptys"
)

// spec is a validated, resolved StartRequest.
type spec struct {
	user     *identity.User
	path     string   // executable to run
	argv     []string // argv[0] is the command as requested
	env      []string
	dir      string
	pty      *pty.Winsize // nil: stdout and stderr pipes
	stdin    bool
	tag      string
	info     *rpc.ProcessConfig
	deadline time.Time // zero: none
}

// prepare validates req and resolves what it leaves implicit: the working
// directory, the environment and the executable.
func (s *Service) prepare(u *identity.User, req *rpc.StartRequest) (*spec, error) {
	pc := req.GetProcess()
	if pc == nil {
		return nil, errdefs.InvalidArgument("process is required")
	}
	if pc.GetCmd() == "" {
		return nil, errdefs.InvalidArgument("process.cmd is required")
	}
	if strings.IndexByte(pc.GetCmd(), 0) >= 0 {
		return nil, errdefs.InvalidArgument("process.cmd contains a NUL byte")
	}
	for i, a := range pc.GetArgs() {
		if strings.IndexByte(a, 0) >= 0 {
			return nil, errdefs.InvalidArgument("process.args[%d] contains a NUL byte", i)
		}
	}
	for k, v := range pc.GetEnvs() {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return nil, errdefs.InvalidArgument("invalid environment variable name %q", k)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return nil, errdefs.InvalidArgument("environment variable %s contains a NUL byte", k)
		}
	}

	dir, err := s.cfg.Users.ResolvePath(u, pc.GetCwd())
	if err != nil {
		return nil, err
	}
	switch fi, err := os.Stat(dir); {
	case errors.Is(err, os.ErrNotExist):
		return nil, errdefs.InvalidArgument("working directory %q does not exist", dir)
	case err != nil:
		return nil, errdefs.InvalidArgument("working directory %q: %v", dir, errors.Unwrap(err))
	case !fi.IsDir():
		return nil, errdefs.InvalidArgument("working directory %q is not a directory", dir)
	}

	env := map[string]string{"PATH": os.Getenv("PATH")}
	if env["PATH"] == "" {
		env["PATH"] = defaultPath
	}
	env["HOME"], env["USER"], env["LOGNAME"] = u.Home, u.Name, u.Name
	if s.cfg.Env != nil {
		maps.Copy(env, s.cfg.Env())
	}
	maps.Copy(env, pc.GetEnvs())
	envList := make([]string, 0, len(env))
	for _, k := range slices.Sorted(maps.Keys(env)) {
		envList = append(envList, k+"="+env[k])
	}

	path, err := lookPath(pc.GetCmd(), env["PATH"], dir)
	if err != nil {
		return nil, err
	}

	sp := &spec{
		user:  u,
		path:  path,
		argv:  append([]string{pc.GetCmd()}, pc.GetArgs()...),
		env:   envList,
		dir:   dir,
		stdin: req.Stdin == nil || req.GetStdin(),
		tag:   req.GetTag(),
	}
	if req.Pty != nil {
		size := req.GetPty().GetSize()
		cols, rows := size.GetCols(), size.GetRows()
		if cols > 0xffff || rows > 0xffff {
			return nil, errdefs.InvalidArgument("pty size %dx%d is too large", cols, rows)
		}
		if cols == 0 {
			cols = defaultCols
		}
		if rows == 0 {
			rows = defaultRows
		}
		sp.pty = &pty.Winsize{Cols: uint16(cols), Rows: uint16(rows)}
	}
	sp.info = proto.CloneOf(pc)
	sp.info.Cwd = &sp.dir
	return sp, nil
}

// lookPath finds the executable for name the way the process's own PATH
// would: a name with a slash is a path (relative to dir), any other name is
// searched in pathEnv.
func lookPath(name, pathEnv, dir string) (string, error) {
	if strings.Contains(name, "/") {
		p := name
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		fi, err := os.Stat(p)
		switch {
		case err != nil:
			return "", errdefs.InvalidArgument("executable not found: %q", name)
		case fi.IsDir():
			return "", errdefs.InvalidArgument("cannot execute %q: it is a directory", name)
		case fi.Mode()&0o111 == 0:
			return "", errdefs.PermissionDenied("cannot execute %q: permission denied (not executable)", name)
		}
		return p, nil
	}
	for _, d := range filepath.SplitList(pathEnv) {
		if d == "" {
			d = "."
		}
		if !filepath.IsAbs(d) {
			d = filepath.Join(dir, d)
		}
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", errdefs.InvalidArgument("executable not found: %q is not in PATH (%s)", name, pathEnv)
}

// spawn starts the process described by sp with one subscriber attached,
// registers it, and starts its goroutines. On error nothing is left behind.
func (s *Service) spawn(sp *spec) (*proc, *subscriber, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, nil, errShuttingDown
	}
	if sp.tag != "" {
		// Checked again at registration, which is what counts; this saves
		// starting a process only to kill it.
		if other := s.runningWithTag(sp.tag); other != nil {
			s.mu.Unlock()
			return nil, nil, errdefs.AlreadyExists("a running process (pid %d) already has tag %q", other.pid, sp.tag)
		}
	}
	s.wg.Add(1) // lets Close wait for this spawn and the goroutines it starts
	s.mu.Unlock()
	defer s.wg.Done()

	p := &proc{
		svc:         s,
		tag:         sp.tag,
		info:        sp.info,
		subs:        make(map[*subscriber]struct{}),
		readersDone: make(chan struct{}),
		done:        make(chan struct{}),
	}

	// Descriptors the child inherits are closed here once it has them; the
	// parent's ends are closed too if it never starts. Once it has, they
	// belong to its goroutines.
	var childFiles, parentFiles []*os.File
	started := false
	defer func() {
		for _, f := range childFiles {
			f.Close()
		}
		if !started {
			for _, f := range parentFiles {
				f.Close()
			}
		}
	}()
	pipe := func() (r, w *os.File, err error) {
		r, w, err = os.Pipe()
		if err != nil {
			return nil, nil, fmt.Errorf("create pipe: %w", err)
		}
		return r, w, nil
	}

	var (
		stdin          io.Reader
		stdout, stderr io.Writer
		attr           = &syscall.SysProcAttr{}
		cgroupKind     = cgroupUser
	)
	// As root, always switch: that also resets the supplementary groups.
	// Otherwise switching is only possible to oneself, so skip it then.
	if euid := os.Geteuid(); euid == 0 || uint32(euid) != sp.user.UID || uint32(os.Getegid()) != sp.user.GID {
		attr.Credential = &syscall.Credential{Uid: sp.user.UID, Gid: sp.user.GID, Groups: sp.user.Groups}
	}
	if sp.pty != nil {
		master, tty, err := pty.Open()
		if err != nil {
			return nil, nil, fmt.Errorf("open pty: %w", err)
		}
		childFiles = append(childFiles, tty)
		err = pty.Setsize(master, sp.pty)
		if err == nil {
			master, err = pollable(master)
		} else {
			master.Close()
		}
		if err != nil {
			return nil, nil, fmt.Errorf("set up pty: %w", err)
		}
		parentFiles = append(parentFiles, master)
		if attr.Credential != nil {
			// Like login: the user owns their terminal.
			if err := os.Chown(tty.Name(), int(sp.user.UID), -1); err != nil {
				s.log.Debug("cannot chown pty", logKeyErr, err)
			}
		}
		p.pty = master
		p.outputs = []output{{master, streamPTY}}
		stdin, stdout, stderr = tty, tty, tty
		attr.Setsid, attr.Setctty, attr.Ctty = true, true, 0
		cgroupKind = cgroupPTYs
	} else {
		outR, outW, err := pipe()
		if err != nil {
			return nil, nil, err
		}
		childFiles, parentFiles = append(childFiles, outW), append(parentFiles, outR)
		errR, errW, err := pipe()
		if err != nil {
			return nil, nil, err
		}
		childFiles, parentFiles = append(childFiles, errW), append(parentFiles, errR)
		if sp.stdin {
			inR, inW, err := pipe()
			if err != nil {
				return nil, nil, err
			}
			childFiles, parentFiles = append(childFiles, inR), append(parentFiles, inW)
			stdin, p.stdin = inR, inW
		}
		stdout, stderr = outW, errW
		p.outputs = []output{{outR, streamStdout}, {errR, streamStderr}}
		attr.Setpgid = true
	}

	cmd, err := s.startCmd(sp, attr, cgroupKind, stdin, stdout, stderr)
	if err != nil {
		return nil, nil, err
	}
	started = true
	p.cmd = cmd
	p.pid = uint32(cmd.Process.Pid)
	p.log = s.log.With(logKeyPID, p.pid)
	if p.tag != "" {
		p.log = p.log.With(logKeyTag, p.tag)
	}
	sub := newSubscriber(s.cfg.SubscriberBuffer)
	p.subs[sub] = struct{}{}

	regErr := s.register(p)
	if regErr == nil && !sp.deadline.IsZero() {
		p.mu.Lock()
		p.killTimer = time.AfterFunc(time.Until(sp.deadline), p.expire)
		p.mu.Unlock()
	}
	p.launch()
	if regErr != nil {
		// Close began, or the tag is taken: the process must not run. It
		// is reaped and released by the goroutines just launched.
		p.unsubscribe(sub)
		p.signal(syscall.SIGKILL)
		return nil, nil, regErr
	}
	p.log.Info("process started", logKeyCmd, sp.path, logKeyUser, sp.user.Name, logKeyPTY, sp.pty != nil)
	return p, sub, nil
}

// startCmd starts the command, placing it in its cgroup when there is one.
// If the kernel refuses the cgroup placement the process starts outside it.
func (s *Service) startCmd(sp *spec, attr *syscall.SysProcAttr, cgroupKind string, stdin io.Reader, stdout, stderr io.Writer) (*exec.Cmd, error) {
	newCmd := func(attr *syscall.SysProcAttr) *exec.Cmd {
		return &exec.Cmd{
			Path:        sp.path,
			Args:        sp.argv,
			Env:         sp.env,
			Dir:         sp.dir,
			Stdin:       stdin,
			Stdout:      stdout,
			Stderr:      stderr,
			SysProcAttr: attr,
		}
	}
	if s.cfg.Cgroups != nil {
		if fd, ok := s.cfg.Cgroups.FD(cgroupKind); ok {
			inCgroup := *attr
			inCgroup.UseCgroupFD, inCgroup.CgroupFD = true, fd
			cmd := newCmd(&inCgroup)
			err := cmd.Start()
			if err == nil {
				setOOMScore(cmd.Process.Pid)
				return cmd, nil
			}
			if !isCgroupError(err) {
				return nil, startError(sp, err)
			}
			s.log.Warn("cannot start process in its cgroup; starting it outside", logKeyCgroup, cgroupKind, logKeyErr, err)
		}
	}
	cmd := newCmd(attr)
	if err := cmd.Start(); err != nil {
		return nil, startError(sp, err)
	}
	setOOMScore(cmd.Process.Pid)
	return cmd, nil
}

// userOOMScore makes user processes the OOM killer's first choice over envd
// (which lowers its own score when it runs in a guest), so a runaway
// command never takes the sandbox's control channel down with it.
const userOOMScore = "100"

// setOOMScore is best effort: a process that already exited has no score.
func setOOMScore(pid int) {
	_ = os.WriteFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid), []byte(userOOMScore), 0)
}

// isCgroupError reports whether a start failure may come from the cgroup
// placement (clone3 with CLONE_INTO_CGROUP) rather than the command.
func isCgroupError(err error) bool {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return false
	}
	switch errno {
	case unix.EBUSY, unix.EBADF, unix.EINVAL, unix.ENOSYS, unix.EOPNOTSUPP:
		return true
	}
	return false
}

// startError classifies an exec failure for the caller.
func startError(sp *spec, err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case unix.ENOENT:
			return errdefs.InvalidArgument("cannot execute %q: %s or its interpreter does not exist", sp.argv[0], sp.path)
		case unix.EACCES, unix.EPERM:
			return errdefs.PermissionDenied("cannot execute %q as user %q: permission denied (on the executable or the working directory %s)", sp.argv[0], sp.user.Name, sp.dir)
		case unix.ENOEXEC:
			return errdefs.InvalidArgument("cannot execute %q: exec format error (not a binary for this machine, and no #! line)", sp.argv[0])
		case unix.E2BIG:
			return errdefs.InvalidArgument("cannot execute %q: argument list and environment too long", sp.argv[0])
		case unix.ETXTBSY:
			return errdefs.FailedPrecondition("cannot execute %q: the file is open for writing", sp.argv[0])
		case unix.ENOTDIR:
			return errdefs.InvalidArgument("cannot execute %q: a path component is not a directory", sp.argv[0])
		case unix.ELOOP:
			return errdefs.InvalidArgument("cannot execute %q: too many levels of symbolic links", sp.argv[0])
		case unix.EAGAIN, unix.ENOMEM:
			return errdefs.ResourceExhausted("cannot start %q: %v", sp.argv[0], errno)
		}
	}
	return fmt.Errorf("start %s: %w", sp.path, err)
}

// pollable returns a copy of f that is in non-blocking mode and registered
// with the runtime poller, and closes f. creack/pty hands the PTY master
// out in blocking mode; in that mode read and write deadlines do not work
// and Close does not interrupt a blocked Read, which would make the drain
// grace and cancellable input impossible.
func pollable(f *os.File) (*os.File, error) {
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd, dupErr := -1, error(nil)
	if err := rc.Control(func(raw uintptr) {
		fd, dupErr = unix.FcntlInt(raw, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, err
	}
	if dupErr != nil {
		return nil, dupErr
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}
