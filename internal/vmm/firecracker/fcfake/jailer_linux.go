//go:build linux

package fcfake

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// jailerArgs is the jailer's command line.
type jailerArgs struct {
	id, execFile, chrootBase, netns string
	uid, gid                        int
	extra                           []string
}

// parseJailerArgs validates the command line as the jailer does. It has no
// side effects.
func parseJailerArgs(args []string) (jailerArgs, error) {
	fs := flag.NewFlagSet("jailer", flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	var j jailerArgs
	var uid, gid string
	fs.StringVar(&j.id, "id", "", "")
	fs.StringVar(&j.execFile, "exec-file", "", "")
	fs.StringVar(&uid, "uid", "", "")
	fs.StringVar(&gid, "gid", "", "")
	fs.StringVar(&j.chrootBase, "chroot-base-dir", "/srv/jailer", "")
	fs.StringVar(&j.netns, "netns", "", "")
	fs.String("cgroup-version", "1", "")
	fs.String("parent-cgroup", "", "")
	fs.Func("cgroup", "", func(string) error { return nil })
	fs.Func("resource-limit", "", func(string) error { return nil })
	daemonize := fs.Bool("daemonize", false, "")
	newPIDNS := fs.Bool("new-pid-ns", false, "")
	if err := fs.Parse(args); err != nil {
		return j, err
	}
	j.extra = fs.Args()
	var errs []error
	if !validInstanceID(j.id) {
		errs = append(errs, fmt.Errorf("invalid --id %q: alphanumerics and hyphens, at most 64", j.id))
	}
	if j.execFile == "" {
		errs = append(errs, errors.New("missing --exec-file"))
	} else if !strings.Contains(filepath.Base(j.execFile), "firecracker") {
		errs = append(errs, fmt.Errorf("--exec-file %q: the file name must contain \"firecracker\"", j.execFile))
	} else if fi, err := os.Stat(j.execFile); err != nil || !fi.Mode().IsRegular() {
		errs = append(errs, fmt.Errorf("--exec-file %q is not a regular file", j.execFile))
	}
	var err error
	if j.uid, err = strconv.Atoi(uid); err != nil {
		errs = append(errs, fmt.Errorf("invalid --uid %q", uid))
	}
	if j.gid, err = strconv.Atoi(gid); err != nil {
		errs = append(errs, fmt.Errorf("invalid --gid %q", gid))
	}
	if !filepath.IsAbs(j.chrootBase) {
		errs = append(errs, fmt.Errorf("--chroot-base-dir %q is not absolute", j.chrootBase))
	}
	// These change the pid or the session of the exec'd VMM; the fake
	// does not simulate them.
	if *daemonize {
		errs = append(errs, errors.New("--daemonize is not simulated by fcfake"))
	}
	if *newPIDNS {
		errs = append(errs, errors.New("--new-pid-ns is not simulated by fcfake"))
	}
	return j, errors.Join(errs...)
}

// JailerChrootDir is where the jailer builds the chroot for id.
func JailerChrootDir(chrootBase, execFile, id string) string {
	return filepath.Join(chrootBase, filepath.Base(execFile), id, "root")
}

// JailerMain runs the fake as the jailer binary. It validates the jailer's
// command line, creates <chroot-base-dir>/<exec-file name>/<id>/root and
// hands it to uid:gid, joins --netns, drops privileges to uid:gid, clears
// the environment and execs exec-file in place (same pid) with --id=<id>,
// the start-time flags and the arguments after "--".
//
// What it does not do: chroot (the exec'd fake would need its binary and
// libraries inside the jail). Instead it passes the chroot directory in
// EnvRoot and the fake resolves every path under it, which is what a
// chrooted Firecracker sees. It returns only on failure.
func JailerMain(args []string) int {
	j, err := parseJailerArgs(args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fcfake jailer: %v\n", err)
		return 1
	}
	root := JailerChrootDir(j.chrootBase, j.execFile, j.id)
	if err := os.MkdirAll(root, 0o755); err != nil {
		fmt.Fprintf(os.Stderr, "fcfake jailer: %v\n", err)
		return 1
	}
	if err := os.Chown(root, j.uid, j.gid); err != nil {
		fmt.Fprintf(os.Stderr, "fcfake jailer: %v\n", err)
		return 1
	}
	// Namespaces and credentials belong to the thread that execs.
	runtime.LockOSThread()
	if j.netns != "" {
		fd, err := unix.Open(j.netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			fmt.Fprintf(os.Stderr, "fcfake jailer: open netns: %v\n", err)
			return 1
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		_ = unix.Close(fd)
		if err != nil {
			fmt.Fprintf(os.Stderr, "fcfake jailer: join netns: %v\n", err)
			return 1
		}
	}
	if err := syscall.Setgroups(nil); err != nil {
		fmt.Fprintf(os.Stderr, "fcfake jailer: setgroups: %v\n", err)
		return 1
	}
	if err := syscall.Setgid(j.gid); err != nil {
		fmt.Fprintf(os.Stderr, "fcfake jailer: setgid: %v\n", err)
		return 1
	}
	if err := syscall.Setuid(j.uid); err != nil {
		fmt.Fprintf(os.Stderr, "fcfake jailer: setuid: %v\n", err)
		return 1
	}
	now := strconv.FormatInt(time.Now().UnixMicro(), 10)
	argv := append([]string{j.execFile, "--id=" + j.id, "--start-time-us=" + now, "--start-time-cpu-us=0"}, j.extra...)
	err = syscall.Exec(j.execFile, argv, []string{EnvRoot + "=" + root})
	fmt.Fprintf(os.Stderr, "fcfake jailer: exec %s: %v\n", j.execFile, err)
	return 1
}
