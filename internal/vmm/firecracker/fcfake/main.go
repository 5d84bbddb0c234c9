package fcfake

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
)

// Environment variables that shape the fake binary's behaviour. A test
// writes them into the wrapper script it uses as the firecracker binary
// (the jailer clears the environment, so they cannot come from the
// driver's process).
const (
	// EnvCallLog names a file (resolved like request paths) that receives
	// every call as a JSON line; read it with ReadCallLog.
	EnvCallLog = "WRENN_FCFAKE_CALL_LOG"
	// EnvRoot simulates the jailer's chroot (set by JailerMain).
	EnvRoot = "WRENN_FCFAKE_ROOT"
	// EnvIgnoreCtrlAltDel, when "1", makes the guest ignore SendCtrlAltDel.
	EnvIgnoreCtrlAltDel = "WRENN_FCFAKE_IGNORE_CTRL_ALT_DEL"
	// EnvIgnoreSIGTERM, when "1", makes the process ignore SIGTERM so that
	// only SIGKILL stops it.
	EnvIgnoreSIGTERM = "WRENN_FCFAKE_IGNORE_SIGTERM"
	// EnvExitCode makes the process exit at once with this status, before
	// opening its API socket (a VMM that fails to start).
	EnvExitCode = "WRENN_FCFAKE_EXIT_CODE"
	// EnvHang, when "1", makes the process never open its API socket.
	EnvHang = "WRENN_FCFAKE_HANG"
	// EnvVersion overrides the reported Firecracker version.
	EnvVersion = "WRENN_FCFAKE_VERSION"
	// EnvRequireMMDSConfig, when "1", sets Options.RequireMMDSConfig.
	EnvRequireMMDSConfig = "WRENN_FCFAKE_REQUIRE_MMDS_CONFIG"
)

// exitArgParsing is Firecracker's exit status for bad arguments.
const exitArgParsing = 153

// Main runs the fake as the firecracker binary: it accepts Firecracker's
// command line (--api-sock, --id and the flags the jailer adds), serves the
// API on the socket until the simulated VMM exits, and returns the exit
// status. Signals have their default effect, as in Firecracker: SIGTERM and
// SIGKILL end the process without cleaning up the socket.
func Main(args []string) int {
	fs := flag.NewFlagSet("firecracker", flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	apiSock := fs.String("api-sock", "/run/firecracker.socket", "path of the API socket")
	id := fs.String("id", "anonymous-instance", "microVM id")
	// Accepted and ignored, as the jailer passes them.
	fs.String("start-time-us", "", "")
	fs.String("start-time-cpu-us", "", "")
	fs.String("parent-cpu-time-us", "", "")
	fs.String("level", "", "")
	fs.String("log-path", "", "")
	fs.Bool("show-level", false, "")
	fs.Bool("show-log-origin", false, "")
	fs.Bool("boot-timer", false, "")
	fs.Bool("no-seccomp", false, "")
	if err := fs.Parse(args); err != nil {
		return exitArgParsing
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "fcfake: unexpected arguments %q\n", fs.Args())
		return exitArgParsing
	}
	if !validInstanceID(*id) {
		fmt.Fprintf(os.Stderr, "fcfake: Invalid instance ID: %q\n", *id)
		return exitArgParsing
	}

	if v := os.Getenv(EnvExitCode); v != "" {
		code, err := strconv.Atoi(v)
		if err != nil {
			code = 1
		}
		fmt.Fprintf(os.Stderr, "fcfake: exiting with status %d as asked\n", code)
		return code
	}
	if os.Getenv(EnvIgnoreSIGTERM) == "1" {
		signal.Ignore(syscall.SIGTERM)
	}
	if os.Getenv(EnvHang) == "1" {
		// Block until killed (a signal nobody sends keeps the runtime from
		// calling this a deadlock).
		never := make(chan os.Signal, 1)
		signal.Notify(never, syscall.SIGUSR2)
		<-never
		return 1
	}

	opts := Options{
		ID:                *id,
		Version:           os.Getenv(EnvVersion),
		Root:              os.Getenv(EnvRoot),
		IgnoreCtrlAltDel:  os.Getenv(EnvIgnoreCtrlAltDel) == "1",
		RequireMMDSConfig: os.Getenv(EnvRequireMMDSConfig) == "1",
	}
	if p := os.Getenv(EnvCallLog); p != "" {
		if opts.Root != "" {
			p = filepath.Join(opts.Root, p)
		}
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			fmt.Fprintf(os.Stderr, "fcfake: call log: %v\n", err)
			return 1
		}
		defer f.Close()
		opts.CallLog = f
	}
	srv, err := Listen(*apiSock, opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fcfake: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "fcfake: serving the API on %s\n", srv.Socket())
	<-srv.Exited()
	if err := srv.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "fcfake: close: %v\n", err)
	}
	code := srv.ExitCode()
	fmt.Fprintf(os.Stderr, "fcfake: vmm exited with status %d\n", code)
	return code
}

// validInstanceID is Firecracker's (and the jailer's) rule for --id.
func validInstanceID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, r := range id {
		if r != '-' && !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9') {
			return false
		}
	}
	return true
}

// ReadCallLog reads the calls a fake process recorded in its EnvCallLog
// file. A missing file is no calls.
func ReadCallLog(path string) ([]Call, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return decodeCalls(f)
}

func decodeCalls(r io.Reader) ([]Call, error) {
	var calls []Call
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var c Call
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			return calls, fmt.Errorf("fcfake: call log line %d: %w", len(calls)+1, err)
		}
		calls = append(calls, c)
	}
	return calls, sc.Err()
}
