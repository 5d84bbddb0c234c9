//go:build linux

package process

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	rpc "wrenn.dev/wrenn/internal/gen/process"
)

func TestStartOutputAndExit(t *testing.T) {
	forEachFlavor(t, func(t *testing.T, fl flavor) {
		h := newHarness(t, fl, nil)
		ev := h.start(h.ctx(), shell("echo out; echo err >&2; exit 3"))
		end := ev.wait()
		if got := ev.stdout.String(); got != "out\n" {
			t.Errorf("stdout = %q, want %q", got, "out\n")
		}
		if got := ev.stderr.String(); got != "err\n" {
			t.Errorf("stderr = %q, want %q", got, "err\n")
		}
		if ev.pty.Len() != 0 {
			t.Errorf("pty output %q from a pipe process", &ev.pty)
		}
		want := &rpc.ProcessEvent_EndEvent{ExitCode: 3, Exited: true, Status: "exit status 3", Error: proto.String("exit status 3")}
		if !proto.Equal(end, want) {
			t.Errorf("end = %v, want %v", end, want)
		}
	})
}

// A process without a PTY exiting must not touch the (nil) PTY.
func TestNonPTYExit(t *testing.T) {
	forEachFlavor(t, func(t *testing.T, fl flavor) {
		h := newHarness(t, fl, nil)
		for _, stdin := range []bool{true, false} {
			req := command("true")
			req.Stdin = proto.Bool(stdin)
			ev := h.start(h.ctx(), req)
			end := ev.wait()
			want := &rpc.ProcessEvent_EndEvent{ExitCode: 0, Exited: true, Status: "exit status 0"}
			if !proto.Equal(end, want) {
				t.Errorf("stdin=%v: end = %v, want %v", stdin, end, want)
			}
		}
	})
}

func TestStdinEcho(t *testing.T) {
	forEachFlavor(t, func(t *testing.T, fl flavor) {
		h := newHarness(t, fl, nil)
		ev := h.start(h.ctx(), command("cat")) // stdin unset means true
		sel := byPID(ev.pid)
		if err := h.sendInput(sel, stdinInput([]byte("hello\n"))); err != nil {
			t.Fatalf("SendInput(stdin) = %v", err)
		}
		ev.until("the echo", func() bool { return ev.stdout.String() == "hello\n" })
		if err := h.sendInput(sel, stdinInput([]byte("world\n"))); err != nil {
			t.Fatalf("SendInput(stdin) = %v", err)
		}
		if err := h.closeStdin(sel); err != nil {
			t.Fatalf("CloseStdin() = %v", err)
		}
		if end := ev.wait(); end.GetExitCode() != 0 || !end.GetExited() {
			t.Errorf("end = %v, want exit status 0", end)
		}
		if got := ev.stdout.String(); got != "hello\nworld\n" {
			t.Errorf("stdout = %q, want %q", got, "hello\nworld\n")
		}
		if err := h.closeStdin(sel); connect.CodeOf(err) != connect.CodeNotFound {
			t.Errorf("CloseStdin(exited) = %v, want NotFound", err)
		}
	})
}

func TestStreamInput(t *testing.T) {
	forEachFlavor(t, func(t *testing.T, fl flavor) {
		h := newHarness(t, fl, nil)
		ev := h.start(h.ctx(), command("cat"))

		in := h.client.StreamInput(h.ctx())
		msgs := []*rpc.StreamInputRequest{
			{Event: &rpc.StreamInputRequest_Start{Start: &rpc.StreamInputRequest_StartEvent{Process: byPID(ev.pid)}}},
		}
		var want strings.Builder
		for i := range 50 {
			line := fmt.Sprintf("line %d\n", i)
			want.WriteString(line)
			msgs = append(msgs, &rpc.StreamInputRequest{Event: &rpc.StreamInputRequest_Data{Data: &rpc.StreamInputRequest_DataEvent{Input: stdinInput([]byte(line))}}})
			if i%10 == 0 {
				msgs = append(msgs, &rpc.StreamInputRequest{Event: &rpc.StreamInputRequest_Keepalive{Keepalive: &rpc.StreamInputRequest_KeepAlive{}}})
			}
		}
		for _, m := range msgs {
			if err := in.Send(m); err != nil {
				t.Fatalf("StreamInput.Send() = %v", err)
			}
		}
		if _, err := in.CloseAndReceive(); err != nil {
			t.Fatalf("StreamInput.CloseAndReceive() = %v", err)
		}
		if err := h.closeStdin(byPID(ev.pid)); err != nil {
			t.Fatalf("CloseStdin() = %v", err)
		}
		ev.wait()
		if got := ev.stdout.String(); got != want.String() {
			t.Errorf("stdout = %q, want %q", got, want.String())
		}
	})
}

func TestStreamInputErrors(t *testing.T) {
	h := newHarness(t, h2cBinary, nil)
	tests := []struct {
		name string
		msgs []*rpc.StreamInputRequest
		want connect.Code
	}{
		{"no start", []*rpc.StreamInputRequest{{Event: &rpc.StreamInputRequest_Keepalive{Keepalive: &rpc.StreamInputRequest_KeepAlive{}}}}, connect.CodeInvalidArgument},
		{"empty", nil, connect.CodeInvalidArgument},
		{"unknown process", []*rpc.StreamInputRequest{{Event: &rpc.StreamInputRequest_Start{Start: &rpc.StreamInputRequest_StartEvent{Process: byTag("nope")}}}}, connect.CodeNotFound},
		{"no selector", []*rpc.StreamInputRequest{{Event: &rpc.StreamInputRequest_Start{Start: &rpc.StreamInputRequest_StartEvent{}}}}, connect.CodeInvalidArgument},
	}
	for _, tt := range tests {
		in := h.client.StreamInput(h.ctx())
		for _, m := range tt.msgs {
			in.Send(m) // errors surface in CloseAndReceive
		}
		_, err := in.CloseAndReceive()
		wantCode(t, fmt.Sprintf("StreamInput(%s)", tt.name), err, tt.want)
	}
}

func TestStdinDisabled(t *testing.T) {
	h := newHarness(t, h2cBinary, nil)
	req := shell("cat; echo done")
	req.Stdin = proto.Bool(false)
	ev := h.start(h.ctx(), req)
	// cat sees EOF at once: its stdin is /dev/null.
	if end := ev.wait(); end.GetExitCode() != 0 || ev.stdout.String() != "done\n" {
		t.Errorf("end = %v stdout %q, want exit 0 and %q", end, &ev.stdout, "done\n")
	}

	req = command("sleep", "1000")
	req.Stdin = proto.Bool(false)
	ev = h.start(h.ctx(), req)
	sel := byPID(ev.pid)
	wantCode(t, "SendInput(stdin, stdin=false)", h.sendInput(sel, stdinInput([]byte("x"))), connect.CodeFailedPrecondition, "stdin=false")
	wantCode(t, "CloseStdin(stdin=false)", h.closeStdin(sel), connect.CodeFailedPrecondition, "stdin=false")
	if err := h.sendSignal(sel, rpc.Signal_SIGNAL_SIGKILL); err != nil {
		t.Fatalf("SendSignal(SIGKILL) = %v", err)
	}
	ev.wait()
}

func TestInputMismatch(t *testing.T) {
	h := newHarness(t, h2cBinary, nil)
	pipe := h.start(h.ctx(), command("cat"))
	term := h.start(h.ctx(), &rpc.StartRequest{Process: &rpc.ProcessConfig{Cmd: "cat"}, Pty: &rpc.PTY{}})
	pipeSel, ptySel := byPID(pipe.pid), byPID(term.pid)

	tests := []struct {
		call string
		err  error
		want connect.Code
		msg  string
	}{
		{"SendInput(pty to pipe process)", h.sendInput(pipeSel, ptyInput([]byte("x"))), connect.CodeFailedPrecondition, "no PTY"},
		{"SendInput(stdin to PTY process)", h.sendInput(ptySel, stdinInput([]byte("x"))), connect.CodeFailedPrecondition, "PTY"},
		{"SendInput(no input)", h.sendInput(pipeSel, nil), connect.CodeInvalidArgument, "input"},
		{"SendInput(no selector)", h.sendInput(nil, stdinInput([]byte("x"))), connect.CodeInvalidArgument, "selector"},
		{"SendInput(unknown pid)", h.sendInput(byPID(1<<31), stdinInput([]byte("x"))), connect.CodeNotFound, "not found"},
		{"SendInput(unknown tag)", h.sendInput(byTag("nope"), stdinInput([]byte("x"))), connect.CodeNotFound, "not found"},
		{"SendInput(empty tag)", h.sendInput(byTag(""), stdinInput([]byte("x"))), connect.CodeInvalidArgument, "tag"},
		{"CloseStdin(PTY process)", h.closeStdin(ptySel), connect.CodeFailedPrecondition, "0x04"},
		{"Update(pipe process)", h.resize(pipeSel, 100, 30), connect.CodeFailedPrecondition, "no PTY"},
		{"Update(zero size)", h.resize(ptySel, 0, 0), connect.CodeInvalidArgument, "size"},
		{"Update(zero rows)", h.resize(ptySel, 80, 0), connect.CodeInvalidArgument, "size"},
		{"Update(too large)", h.resize(ptySel, 1<<16, 10), connect.CodeInvalidArgument, "size"},
		{"Update(unknown)", h.resize(byPID(1<<31), 80, 24), connect.CodeNotFound, "not found"},
	}
	for _, tt := range tests {
		wantCode(t, tt.call, tt.err, tt.want, tt.msg)
	}
	_, err := h.client.Update(h.ctx(), connect.NewRequest(&rpc.UpdateRequest{Process: ptySel}))
	wantCode(t, "Update(no pty)", err, connect.CodeInvalidArgument, "size")

	// Both processes still work.
	if err := h.sendInput(pipeSel, stdinInput([]byte("ok\n"))); err != nil {
		t.Fatalf("SendInput(stdin) = %v", err)
	}
	pipe.until("the echo", func() bool { return pipe.stdout.String() == "ok\n" })
	if err := h.closeStdin(pipeSel); err != nil {
		t.Fatalf("CloseStdin() = %v", err)
	}
	pipe.wait()
	if err := h.sendInput(ptySel, ptyInput([]byte{4})); err != nil { // Ctrl-D: EOF for cat
		t.Fatalf("SendInput(pty ^D) = %v", err)
	}
	if end := term.wait(); end.GetExitCode() != 0 {
		t.Errorf("PTY cat end = %v, want exit 0", end)
	}
}

func TestPTYSizeAndResize(t *testing.T) {
	forEachFlavor(t, func(t *testing.T, fl flavor) {
		h := newHarness(t, fl, nil)
		// Default size when none is given.
		ev := h.start(h.ctx(), &rpc.StartRequest{Process: &rpc.ProcessConfig{Cmd: "stty", Args: []string{"size"}}, Pty: &rpc.PTY{}})
		ev.wait()
		if got := ev.pty.String(); got != "24 80\r\n" {
			t.Errorf("stty size with no size = %q, want %q", got, "24 80\r\n")
		}
		if ev.stdout.Len()+ev.stderr.Len() != 0 {
			t.Errorf("PTY process produced stdout %q stderr %q", &ev.stdout, &ev.stderr)
		}

		req := shell("stty size; read line; echo got $line; stty size")
		req.Pty = &rpc.PTY{Size: &rpc.PTY_Size{Cols: 100, Rows: 40}}
		ev = h.start(h.ctx(), req)
		ev.until("the first size", func() bool { return strings.Contains(ev.pty.String(), "40 100\r\n") })
		if err := h.resize(byPID(ev.pid), 120, 50); err != nil {
			t.Fatalf("Update(120x50) = %v", err)
		}
		if err := h.sendInput(byPID(ev.pid), ptyInput([]byte("abc\n"))); err != nil {
			t.Fatalf("SendInput(pty) = %v", err)
		}
		ev.wait()
		want := "40 100\r\nabc\r\ngot abc\r\n50 120\r\n" // the line is echoed by the terminal
		if got := ev.pty.String(); got != want {
			t.Errorf("pty output = %q, want %q", got, want)
		}
	})
}

// PTY output is read completely by one reader, however much there is. The
// JSON run is smaller only to keep the race-enabled test quick.
func TestPTYLargeOutput(t *testing.T) {
	tests := []struct {
		fl    flavor
		total int
	}{
		{h2cBinary, 100 << 20},
		{flavors[0], 16 << 20},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s-%dMiB", tt.fl.name, tt.total>>20), func(t *testing.T) {
			testPTYOutput(t, tt.fl, tt.total)
		})
	}
}

func testPTYOutput(t *testing.T, fl flavor, total int) {
	const line = "abcdefghijklmnopqrstuvwxyz0123456789\n"
	// What the terminal makes of the output: \n becomes \r\n.
	wantHash := sha256.New()
	var wantLen int
	block := []byte(strings.Repeat(line, 4096))
	for left := total; left > 0; {
		part := bytes.ReplaceAll(block[:min(left, len(block))], []byte("\n"), []byte("\r\n"))
		wantHash.Write(part)
		wantLen += len(part)
		left -= min(left, len(block))
	}

	h := newHarness(t, fl, nil)
	// Like the e2b SDKs, the client does not ask for compressed responses.
	// (Per-message gzip is too slow under the race detector to keep up.)
	client := h.newClient(fl, connect.WithAcceptCompression("gzip", nil, nil))
	req := shell(fmt.Sprintf("yes %s | head -c %d", strings.TrimSuffix(line, "\n"), total))
	req.Pty = &rpc.PTY{Size: &rpc.PTY_Size{Cols: 80, Rows: 24}}
	stream, err := client.Start(h.ctx(), connect.NewRequest(req))
	if err != nil {
		t.Fatalf("Start() = %v", err)
	}
	defer stream.Close()
	gotHash := sha256.New()
	var gotLen, events int
	var end *rpc.ProcessEvent_EndEvent
	for stream.Receive() {
		ev := stream.Msg().GetEvent()
		events++
		switch {
		case events == 1:
			if ev.GetStart() == nil {
				t.Fatalf("first event = %v, want start", ev)
			}
		case end != nil:
			t.Fatalf("event %v after the end event", ev)
		case ev.GetEnd() != nil:
			end = ev.GetEnd()
		case ev.GetData() != nil:
			pty := ev.GetData().GetPty()
			if pty == nil {
				t.Fatalf("data event %d is not pty output", events)
			}
			if len(pty) > maxMerged {
				t.Fatalf("pty data event of %d bytes, larger than %d", len(pty), maxMerged)
			}
			gotHash.Write(pty)
			gotLen += len(pty)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("stream failed after %d bytes: %v", gotLen, err)
	}
	if end == nil || end.GetExitCode() != 0 {
		t.Fatalf("end = %v, want exit status 0", end)
	}
	if gotLen != wantLen {
		t.Errorf("read %d bytes of pty output, want %d", gotLen, wantLen)
	}
	if !bytes.Equal(gotHash.Sum(nil), wantHash.Sum(nil)) {
		t.Errorf("pty output hash differs from the expected output")
	}
	t.Logf("%d bytes in %d events", gotLen, events)
}

func TestSignals(t *testing.T) {
	forEachFlavor(t, func(t *testing.T, fl flavor) {
		// A long grace: the end event arrives quickly only if the
		// grandchild holding stdout died with the group.
		h := newHarness(t, fl, func(s *Service) { s.drainGrace = time.Hour })
		tests := []struct {
			sig        rpc.Signal
			pty        bool
			wantStatus string
		}{
			{rpc.Signal_SIGNAL_SIGTERM, false, "signal: terminated"},
			{rpc.Signal_SIGNAL_SIGKILL, false, "signal: killed"},
			{rpc.Signal_SIGNAL_SIGTERM, true, "signal: terminated"},
			{rpc.Signal_SIGNAL_SIGKILL, true, "signal: killed"},
		}
		for _, tt := range tests {
			// bash runs sleep as a child (the trailing true prevents exec).
			req := command("bash", "-c", "sleep 1000; true")
			if tt.pty {
				req.Pty = &rpc.PTY{}
			}
			ev := h.start(h.ctx(), req)
			if err := h.sendSignal(byPID(ev.pid), tt.sig); err != nil {
				t.Fatalf("SendSignal(%v) = %v", tt.sig, err)
			}
			end := ev.wait()
			if end.GetStatus() != tt.wantStatus || end.GetExited() || end.GetExitCode() != -1 || end.GetError() == "" {
				t.Errorf("SendSignal(%v, pty=%v): end = %v, want status %q, exited false, exit code -1, an error", tt.sig, tt.pty, end, tt.wantStatus)
			}
			wantCode(t, fmt.Sprintf("SendSignal(%v) after exit", tt.sig), h.sendSignal(byPID(ev.pid), tt.sig), connect.CodeNotFound, "exited")
		}
	})
}

func TestBadSignal(t *testing.T) {
	h := newHarness(t, h2cBinary, nil)
	ev := h.start(h.ctx(), command("sleep", "1000"))
	for _, sig := range []rpc.Signal{rpc.Signal_SIGNAL_UNSPECIFIED, rpc.Signal(1), rpc.Signal(2), rpc.Signal(19)} {
		wantCode(t, fmt.Sprintf("SendSignal(%v)", sig), h.sendSignal(byPID(ev.pid), sig), connect.CodeInvalidArgument, "SIGNAL_SIGTERM")
	}
	wantCode(t, "SendSignal(no selector)", h.sendSignal(nil, rpc.Signal_SIGNAL_SIGTERM), connect.CodeInvalidArgument)
	wantCode(t, "SendSignal(unknown)", h.sendSignal(byPID(1<<31), rpc.Signal_SIGNAL_SIGTERM), connect.CodeNotFound)
	if len(h.list()) != 1 {
		t.Fatalf("List() after bad signals = %v, want the process still running", h.list())
	}
	if err := h.sendSignal(byPID(ev.pid), rpc.Signal_SIGNAL_SIGKILL); err != nil {
		t.Fatalf("SendSignal(SIGKILL) = %v", err)
	}
	ev.wait()
}

func TestUsers(t *testing.T) {
	forEachFlavor(t, func(t *testing.T, fl flavor) {
		h := newHarness(t, fl, nil)

		s, err := h.startStream(h.ctx(), command("true"), "Authorization", basicAuth("no-such-user-wrenn"))
		_, err = tryOpenEvents(t, s, err)
		wantCode(t, "Start(unknown user)", err, connect.CodeUnauthenticated, "no-such-user-wrenn")

		req := shell(`id -u; id -g; id -G; echo "$HOME $USER $LOGNAME"; pwd`)
		req.Process.Cwd = proto.String("/tmp")
		ev := h.start(h.ctx(), req, "Authorization", basicAuth("nobody"))
		ev.wait()
		if got, want := ev.stdout.String(), "65534\n65534\n65534\n/nonexistent nobody nobody\n/tmp\n"; got != want {
			t.Errorf("as nobody: stdout = %q, want %q (stderr %q)", got, want, &ev.stderr)
		}

		req = command("id", "-u")
		req.Process.Cwd = proto.String("/")
		req.Pty = &rpc.PTY{}
		ev = h.start(h.ctx(), req, "Authorization", basicAuth("nobody"))
		ev.wait()
		if got := ev.pty.String(); got != "65534\r\n" {
			t.Errorf("as nobody in a PTY: output = %q, want %q", got, "65534\r\n")
		}

		// nobody's home does not exist, and is the default working directory.
		s, err = h.startStream(h.ctx(), command("true"), "Authorization", basicAuth("nobody"))
		_, err = tryOpenEvents(t, s, err)
		wantCode(t, "Start(as nobody, no cwd)", err, connect.CodeInvalidArgument, "/nonexistent", "does not exist")

		// Root's own groups are reset to root's.
		ev = h.start(h.ctx(), command("id", "-u"))
		ev.wait()
		if got := ev.stdout.String(); got != "0\n" {
			t.Errorf("as the default user: id -u = %q, want %q", got, "0\n")
		}
	})
}

func TestStartErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	badInterp := filepath.Join(dir, "bad-interp")
	if err := os.WriteFile(badInterp, []byte("#!/no/such/interpreter\n"), 0o755); err != nil {
		t.Fatal(err)
	}

	forEachFlavor(t, func(t *testing.T, fl flavor) {
		h := newHarness(t, fl, nil)
		withCwd := func(req *rpc.StartRequest, cwd string) *rpc.StartRequest {
			req.Process.Cwd = proto.String(cwd)
			return req
		}
		tests := []struct {
			name string
			req  *rpc.StartRequest
			want connect.Code
			msg  []string
		}{
			{"unknown command", command("no-such-command-wrenn"), connect.CodeInvalidArgument, []string{"executable not found", "no-such-command-wrenn"}},
			{"unknown path", command("/no/such/binary"), connect.CodeInvalidArgument, []string{"executable not found", "/no/such/binary"}},
			{"directory", command("/tmp"), connect.CodeInvalidArgument, []string{"directory"}},
			{"not executable", command(file), connect.CodePermissionDenied, []string{"not executable"}},
			{"bad interpreter", command(badInterp), connect.CodeInvalidArgument, []string{"interpreter"}},
			{"missing cwd", withCwd(command("true"), "/no/such/dir"), connect.CodeInvalidArgument, []string{"/no/such/dir", "does not exist"}},
			{"cwd is a file", withCwd(command("true"), file), connect.CodeInvalidArgument, []string{file, "not a directory"}},
			{"no process", &rpc.StartRequest{}, connect.CodeInvalidArgument, []string{"process"}},
			{"no cmd", command(""), connect.CodeInvalidArgument, []string{"cmd"}},
			{"bad env", &rpc.StartRequest{Process: &rpc.ProcessConfig{Cmd: "true", Envs: map[string]string{"A=B": "x"}}}, connect.CodeInvalidArgument, []string{"A=B"}},
			{"NUL in arg", command("true", "a\x00b"), connect.CodeInvalidArgument, []string{"NUL"}},
		}
		for _, tt := range tests {
			s, err := h.startStream(h.ctx(), tt.req)
			_, err = tryOpenEvents(t, s, err)
			wantCode(t, fmt.Sprintf("Start(%s)", tt.name), err, tt.want, tt.msg...)
		}
		if l := h.list(); len(l) != 0 {
			t.Errorf("List() after failed starts = %v, want none", l)
		}
	})
}

func TestEnvironment(t *testing.T) {
	t.Setenv("WRENN_TEST_NOT_INHERITED", "1")
	h := newHarness(t, h2cBinary, func(s *Service) {
		s.cfg.Env = func() map[string]string {
			return map[string]string{"FROM_INIT": "init", "OVERRIDDEN": "init", "USER": "init-user"}
		}
	})
	req := command("env")
	req.Process.Envs = map[string]string{"OVERRIDDEN": "request", "FROM_REQUEST": "request"}
	ev := h.start(h.ctx(), req)
	ev.wait()
	env := map[string]string{}
	for l := range strings.Lines(ev.stdout.String()) {
		k, v, _ := strings.Cut(strings.TrimSuffix(l, "\n"), "=")
		env[k] = v
	}
	want := map[string]string{
		"PATH":         os.Getenv("PATH"),
		"HOME":         "/root",
		"USER":         "init-user",
		"LOGNAME":      "root",
		"FROM_INIT":    "init",
		"OVERRIDDEN":   "request",
		"FROM_REQUEST": "request",
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("env %s = %q, want %q", k, env[k], v)
		}
	}
	if _, ok := env["WRENN_TEST_NOT_INHERITED"]; ok {
		t.Errorf("envd's own environment leaked into the process: %v", env)
	}
	if len(env) != len(want) {
		t.Errorf("env = %v, want exactly %v", env, want)
	}
}

func TestPathFromRequestEnv(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "wrenn-hello"), []byte("#!/bin/sh\necho hi from $0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, h2cBinary, nil)
	req := command("wrenn-hello")
	req.Process.Envs = map[string]string{"PATH": dir + ":/usr/bin:/bin"}
	ev := h.start(h.ctx(), req)
	ev.wait()
	if got, want := ev.stdout.String(), "hi from "+filepath.Join(dir, "wrenn-hello")+"\n"; got != want {
		t.Errorf("stdout = %q, want %q", got, want)
	}
}

// Lookups by tag must find each of several tagged processes.
func TestTagLookup(t *testing.T) {
	forEachFlavor(t, func(t *testing.T, fl flavor) {
		h := newHarness(t, fl, nil)
		h.start(h.ctx(), command("cat")) // untagged, to be skipped over
		var procs []*events[rpc.StartResponse]
		for i := range 6 {
			req := command("cat")
			req.Tag = proto.String(fmt.Sprintf("tag-%d", i))
			procs = append(procs, h.start(h.ctx(), req))
		}
		for i, ev := range procs {
			tag := fmt.Sprintf("tag-%d", i)
			msg := fmt.Sprintf("to %s\n", tag)
			if err := h.sendInput(byTag(tag), stdinInput([]byte(msg))); err != nil {
				t.Fatalf("SendInput(tag %q) = %v", tag, err)
			}
			ev.until("the echo", func() bool { return ev.stdout.Len() >= len(msg) })
			if got := ev.stdout.String(); got != msg {
				t.Errorf("process tagged %q got %q, want %q", tag, got, msg)
			}
		}

		dup := command("true")
		dup.Tag = proto.String("tag-3")
		s, err := h.startStream(h.ctx(), dup)
		_, err = tryOpenEvents(t, s, err)
		wantCode(t, "Start(duplicate running tag)", err, connect.CodeAlreadyExists, "tag-3")

		for i, ev := range procs {
			tag := fmt.Sprintf("tag-%d", i)
			if err := h.closeStdin(byTag(tag)); err != nil {
				t.Fatalf("CloseStdin(tag %q) = %v", tag, err)
			}
			ev.wait()
		}
		// An exited process's tag can be reused; the running one wins.
		reuse := command("cat")
		reuse.Tag = proto.String("tag-3")
		ev := h.start(h.ctx(), reuse)
		if err := h.sendInput(byTag("tag-3"), stdinInput([]byte("again\n"))); err != nil {
			t.Fatalf("SendInput(reused tag) = %v", err)
		}
		ev.until("the echo", func() bool { return ev.stdout.String() == "again\n" })
		if err := h.closeStdin(byTag("tag-3")); err != nil {
			t.Fatalf("CloseStdin(reused tag) = %v", err)
		}
		ev.wait()
	})
}

func TestList(t *testing.T) {
	h := newHarness(t, h2cBinary, nil)
	if l := h.list(); len(l) != 0 {
		t.Fatalf("List() = %v, want none", l)
	}
	a := command("sleep", "1000")
	a.Process.Envs = map[string]string{"K": "V"}
	a.Tag = proto.String("sleeper")
	b := command("cat")
	b.Process.Cwd = proto.String("/tmp")
	b.Pty = &rpc.PTY{}
	evA, evB := h.start(h.ctx(), a), h.start(h.ctx(), b)
	done := h.start(h.ctx(), command("true"))
	done.wait()

	want := []*rpc.ProcessInfo{
		{Pid: evA.pid, Tag: proto.String("sleeper"), Config: &rpc.ProcessConfig{Cmd: "sleep", Args: []string{"1000"}, Envs: map[string]string{"K": "V"}, Cwd: proto.String("/root")}},
		{Pid: evB.pid, Config: &rpc.ProcessConfig{Cmd: "cat", Cwd: proto.String("/tmp")}},
	}
	slices.SortFunc(want, func(x, y *rpc.ProcessInfo) int { return int(x.Pid) - int(y.Pid) })
	got := h.list()
	if len(got) != len(want) {
		t.Fatalf("List() = %v, want %v", got, want)
	}
	for i := range want {
		if !proto.Equal(got[i], want[i]) {
			t.Errorf("List()[%d] = %v, want %v", i, got[i], want[i])
		}
	}
	h.sendSignal(byPID(evA.pid), rpc.Signal_SIGNAL_SIGKILL)
	h.sendSignal(byPID(evB.pid), rpc.Signal_SIGNAL_SIGKILL)
	evA.wait()
	evB.wait()
	if l := h.list(); len(l) != 0 {
		t.Errorf("List() after exit = %v, want none", l)
	}
}

func TestConnect(t *testing.T) {
	forEachFlavor(t, func(t *testing.T, fl flavor) {
		h := newHarness(t, fl, nil)
		req := command("cat")
		req.Tag = proto.String("shared")
		main := h.start(h.ctx(), req)
		if err := h.sendInput(byPID(main.pid), stdinInput([]byte("before\n"))); err != nil {
			t.Fatalf("SendInput() = %v", err)
		}
		main.until("the first echo", func() bool { return main.stdout.String() == "before\n" })

		// Attaching replays nothing and streams from now on.
		byPid := h.connect(h.ctx(), byPID(main.pid))
		byTagged := h.connect(h.ctx(), byTag("shared"))
		if byPid.pid != main.pid || byTagged.pid != main.pid {
			t.Fatalf("Connect start pids = %d, %d, want %d", byPid.pid, byTagged.pid, main.pid)
		}
		// Make sure both subscribers are attached before more output.
		if n := h.subscribers(main.pid); n != 3 {
			t.Fatalf("subscribers = %d, want 3", n)
		}
		if err := h.sendInput(byPID(main.pid), stdinInput([]byte("after\n"))); err != nil {
			t.Fatalf("SendInput() = %v", err)
		}
		if err := h.closeStdin(byPID(main.pid)); err != nil {
			t.Fatalf("CloseStdin() = %v", err)
		}
		for name, end := range map[string]*rpc.ProcessEvent_EndEvent{"Start": main.wait(), "Connect(pid)": byPid.wait(), "Connect(tag)": byTagged.wait()} {
			if end.GetExitCode() != 0 {
				t.Errorf("%s end = %v, want exit status 0", name, end)
			}
		}
		if got := main.stdout.String(); got != "before\nafter\n" {
			t.Errorf("Start stdout = %q, want %q", got, "before\nafter\n")
		}
		for name, got := range map[string]string{"Connect(pid)": byPid.stdout.String(), "Connect(tag)": byTagged.stdout.String()} {
			if got != "after\n" {
				t.Errorf("%s stdout = %q, want %q", name, got, "after\n")
			}
		}

		wantCode(t, "Connect(no selector)", connectErr(h, nil), connect.CodeInvalidArgument)
		wantCode(t, "Connect(unknown pid)", connectErr(h, byPID(1<<31)), connect.CodeNotFound)
	})
}

func connectErr(h *harness, sel *rpc.ProcessSelector) error {
	s, err := h.client.Connect(h.ctx(), connect.NewRequest(&rpc.ConnectRequest{Process: sel}))
	_, err = tryOpenEvents(h.t, s, err)
	return err
}

func TestConnectAfterExit(t *testing.T) {
	forEachFlavor(t, func(t *testing.T, fl flavor) {
		h := newHarness(t, fl, nil)
		req := shell("echo bye; exit 7")
		req.Tag = proto.String("gone")
		ev := h.start(h.ctx(), req)
		want := ev.wait()

		for _, sel := range []*rpc.ProcessSelector{byPID(ev.pid), byTag("gone")} {
			late := h.connect(h.ctx(), sel)
			if late.pid != ev.pid {
				t.Errorf("Connect(%v) start pid = %d, want %d", sel, late.pid, ev.pid)
			}
			if end := late.wait(); !proto.Equal(end, want) {
				t.Errorf("Connect(%v) end = %v, want %v", sel, end, want)
			}
			if late.stdout.Len() != 0 {
				t.Errorf("Connect(%v) replayed output %q", sel, &late.stdout)
			}
		}
		wantCode(t, "SendInput(exited)", h.sendInput(byPID(ev.pid), stdinInput([]byte("x"))), connect.CodeNotFound, "exited")
		if l := h.list(); len(l) != 0 {
			t.Errorf("List() = %v, want none", l)
		}
	})
}

func TestExitRetentionExpires(t *testing.T) {
	forgotten := make(chan uint32, 1)
	h := newHarness(t, h2cBinary, func(s *Service) {
		s.cfg.ExitRetention = 50 * time.Millisecond
		s.afterForget = func(pid uint32) { forgotten <- pid }
	})
	ev := h.start(h.ctx(), command("true"))
	ev.wait()
	select {
	case pid := <-forgotten:
		if pid != ev.pid {
			t.Fatalf("forgot pid %d, want %d", pid, ev.pid)
		}
	case <-time.After(testTimeout):
		t.Fatal("the exited process was never forgotten")
	}
	wantCode(t, "Connect(after retention)", connectErr(h, byPID(ev.pid)), connect.CodeNotFound)
	wantCode(t, "Connect(tag after retention)", connectErr(h, byTag("none")), connect.CodeNotFound)
}

func TestKeepalive(t *testing.T) {
	forEachFlavor(t, func(t *testing.T, fl flavor) {
		h := newHarness(t, fl, nil)
		ev := h.start(h.ctx(), command("cat"), keepaliveHeader, "1")
		ev.until("a keepalive", func() bool { return ev.keepalives >= 1 })
		if err := h.sendInput(byPID(ev.pid), stdinInput([]byte("x"))); err != nil {
			t.Fatalf("SendInput() = %v", err)
		}
		ev.until("the echo", func() bool { return ev.stdout.Len() == 1 })
		ev.until("a second keepalive", func() bool { return ev.keepalives >= 2 })

		late := h.connect(h.ctx(), byPID(ev.pid), keepaliveHeader, "1")
		late.until("a keepalive on Connect", func() bool { return late.keepalives >= 1 })
		if err := h.closeStdin(byPID(ev.pid)); err != nil {
			t.Fatalf("CloseStdin() = %v", err)
		}
		ev.wait()
		late.wait()
	})
}

func TestKeepaliveInterval(t *testing.T) {
	tests := []struct {
		header string
		want   time.Duration
	}{
		{"", defaultKeepalive},
		{"50", 50 * time.Second},
		{"1", time.Second},
		{"0", defaultKeepalive},
		{"-5", defaultKeepalive},
		{"soon", defaultKeepalive},
		{"99999999999", maxKeepalive},
	}
	for _, tt := range tests {
		h := make(map[string][]string)
		if tt.header != "" {
			h[keepaliveHeader] = []string{tt.header}
		}
		if got := keepaliveInterval(h); got != tt.want {
			t.Errorf("keepaliveInterval(%q) = %v, want %v", tt.header, got, tt.want)
		}
	}
}

// The Start call's deadline (Connect-Timeout-Ms) bounds the process.
func TestTimeoutKillsProcess(t *testing.T) {
	forEachFlavor(t, func(t *testing.T, fl flavor) {
		h := newHarness(t, fl, nil)
		ctx, cancel := context.WithTimeout(h.ctx(), time.Second)
		defer cancel()
		ev := h.start(ctx, command("sleep", "1000"))
		for {
			if _, err := ev.next(); err != nil {
				wantCode(t, "Start(sleep 1000) stream", err, connect.CodeDeadlineExceeded)
				break
			}
		}
		late := h.connect(h.ctx(), byPID(ev.pid))
		end := late.wait()
		if end.GetStatus() != "signal: killed" || !strings.Contains(end.GetError(), "timeout") {
			t.Errorf("end after timeout = %v, want signal: killed and an error naming the timeout", end)
		}
	})
}

// A client that disconnects does not kill the process.
func TestDisconnectKeepsProcess(t *testing.T) {
	forEachFlavor(t, func(t *testing.T, fl flavor) {
		h := newHarness(t, fl, nil)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ev := h.start(ctx, command("cat"))
		cancel()
		if _, err := ev.next(); connect.CodeOf(err) != connect.CodeCanceled {
			t.Fatalf("stream after cancel = %v, want Canceled", err)
		}
		again := h.connect(h.ctx(), byPID(ev.pid))
		if err := h.sendInput(byPID(ev.pid), stdinInput([]byte("alive\n"))); err != nil {
			t.Fatalf("SendInput() after disconnect = %v", err)
		}
		again.until("the echo", func() bool { return again.stdout.String() == "alive\n" })
		if err := h.closeStdin(byPID(ev.pid)); err != nil {
			t.Fatalf("CloseStdin() = %v", err)
		}
		again.wait()
	})
}

// A grandchild holding stdout open delays the end event by the drain grace
// only.
func TestGrandchildHoldsOutput(t *testing.T) {
	forEachFlavor(t, func(t *testing.T, fl flavor) {
		h := newHarness(t, fl, func(s *Service) { s.drainGrace = 100 * time.Millisecond })
		for _, pty := range []bool{false, true} {
			req := shell("sleep 1000 & echo $!")
			if pty {
				req.Pty = &rpc.PTY{}
			}
			ev := h.start(h.ctx(), req)
			end := ev.wait()
			if end.GetExitCode() != 0 {
				t.Errorf("pty=%v: end = %v, want exit status 0", pty, end)
			}
			out := strings.TrimSpace(ev.stdout.String() + ev.pty.String())
			if pid, err := strconv.Atoi(out); err != nil {
				t.Errorf("pty=%v: output %q is not the grandchild's pid", pty, out)
			} else {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
}

// A subscriber that stops reading is dropped with an explicit error once
// its queue overflows; the process and other subscribers carry on.
func TestSlowSubscriberOverflow(t *testing.T) {
	forEachFlavor(t, func(t *testing.T, fl flavor) {
		h := newHarness(t, fl, func(s *Service) { s.cfg.SubscriberBuffer = 4; s.cfg.SubscriberStall = 200 * time.Millisecond })
		// Incompressible input: transports and sockets hold compressed
		// output, so this bounds what they can absorb before the slow
		// subscriber's queue fills.
		client := h.newClient(fl, connect.WithAcceptCompression("gzip", nil, nil))
		mainStream, err := client.Start(h.ctx(), connect.NewRequest(command("cat")))
		main := openEvents(t, mainStream, err)
		slowStream, err := client.Connect(h.ctx(), connect.NewRequest(&rpc.ConnectRequest{Process: byPID(main.pid)}))
		slow := openEvents(t, slowStream, err)
		if n := h.subscribers(main.pid); n != 2 {
			t.Fatalf("subscribers = %d, want 2", n)
		}

		// Feed cat until the slow subscriber, which reads nothing, is
		// dropped; the main stream reads everything as it comes.
		rng := rand.NewChaCha8([32]byte{})
		chunk := make([]byte, 64<<10)
		var sent int
		for h.subscribers(main.pid) == 2 {
			rng.Read(chunk)
			if sent > 256<<20 {
				t.Fatalf("slow subscriber not dropped after %d bytes", sent)
			}
			if err := h.sendInput(byPID(main.pid), stdinInput(chunk)); err != nil {
				t.Fatalf("SendInput() = %v", err)
			}
			sent += len(chunk)
			main.until("the echo", func() bool { return main.stdout.Len() == sent })
		}
		if err := h.closeStdin(byPID(main.pid)); err != nil {
			t.Fatalf("CloseStdin() = %v", err)
		}
		main.wait()
		if main.stdout.Len() != sent {
			t.Errorf("main subscriber got %d bytes, want %d", main.stdout.Len(), sent)
		}

		// The slow subscriber gets a prefix of the output, then the error.
		for err = nil; err == nil; {
			_, err = slow.next()
		}
		wantCode(t, "slow subscriber stream", err, connect.CodeResourceExhausted, "output buffer overflow", "bytes dropped")
		if slow.end != nil {
			t.Errorf("slow subscriber got an end event after losing output")
		}
		got := slow.stdout.Bytes()
		if len(got) >= sent || !bytes.Equal(got, main.stdout.Bytes()[:len(got)]) {
			t.Errorf("slow subscriber got %d bytes, want a strict prefix of the %d sent", len(got), sent)
		}
	})
}

// A subscriber that goes away mid-stream never blocks the process, other
// subscribers or cleanup.
func TestCancelledSubscriber(t *testing.T) {
	forEachFlavor(t, func(t *testing.T, fl flavor) {
		h := newHarness(t, fl, func(s *Service) { s.cfg.SubscriberBuffer = 8 })
		main := h.start(h.ctx(), command("cat"))
		ctx, cancel := context.WithCancel(h.ctx())
		defer cancel()
		gone := h.connect(ctx, byPID(main.pid))
		chunk := bytes.Repeat([]byte("x"), 32<<10)
		var sent int
		for i := range 64 {
			if i == 8 {
				cancel() // in the middle of the output, with data queued
			}
			if err := h.sendInput(byPID(main.pid), stdinInput(chunk)); err != nil {
				t.Fatalf("SendInput() = %v", err)
			}
			sent += len(chunk)
			main.until("the echo", func() bool { return main.stdout.Len() == sent })
		}
		for {
			if _, err := gone.next(); err != nil {
				break
			}
		}
		if err := h.sendSignal(byPID(main.pid), rpc.Signal_SIGNAL_SIGKILL); err != nil {
			t.Fatalf("SendSignal(SIGKILL) = %v", err)
		}
		if end := main.wait(); end.GetStatus() != "signal: killed" {
			t.Errorf("end = %v, want signal: killed", end)
		}
		closeCtx, closeCancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer closeCancel()
		if err := h.svc.Close(closeCtx); err != nil {
			t.Errorf("Close() = %v, want nil", err)
		}
	})
}

// Close ends every process, escalating to SIGKILL, and is idempotent.
func TestClose(t *testing.T) {
	h := newHarness(t, h2cBinary, nil)
	plain := h.start(h.ctx(), command("sleep", "1000"))
	stubborn := h.start(h.ctx(), shell(`trap "" TERM; echo ready; sleep 1000; true`))
	stubborn.until("the trap", func() bool { return stubborn.stdout.String() == "ready\n" })
	term := h.start(h.ctx(), &rpc.StartRequest{Process: &rpc.ProcessConfig{Cmd: "sleep", Args: []string{"1000"}}, Pty: &rpc.PTY{}})

	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := h.svc.Close(ctx); err != context.DeadlineExceeded {
		t.Errorf("Close() = %v, want %v (a process ignored SIGTERM)", err, context.DeadlineExceeded)
	}
	if end := plain.wait(); end.GetStatus() != "signal: terminated" {
		t.Errorf("plain process end = %v, want signal: terminated", end)
	}
	if end := stubborn.wait(); end.GetStatus() != "signal: killed" {
		t.Errorf("SIGTERM-ignoring process end = %v, want signal: killed", end)
	}
	if end := term.wait(); end.GetExited() {
		t.Errorf("PTY process end = %v, want killed by a signal", end)
	}
	if err := h.svc.Close(context.Background()); err != nil {
		t.Errorf("second Close() = %v, want nil", err)
	}
	s, err := h.startStream(h.ctx(), command("true"))
	_, err = tryOpenEvents(t, s, err)
	wantCode(t, "Start(after Close)", err, connect.CodeUnavailable, "shutting down")
	if l := h.list(); len(l) != 0 {
		t.Errorf("List() after Close = %v, want none", l)
	}
}

// Every exit path releases its descriptors.
func TestNoDescriptorLeaks(t *testing.T) {
	dir := t.TempDir()
	badInterp := filepath.Join(dir, "bad-interp")
	if err := os.WriteFile(badInterp, []byte("#!/no/such/interpreter\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, h2cBinary, nil)
	// Warm up: the connection, the poller and the pidfd machinery.
	h.start(h.ctx(), command("true")).wait()
	h.start(h.ctx(), &rpc.StartRequest{Process: &rpc.ProcessConfig{Cmd: "true"}, Pty: &rpc.PTY{}}).wait()
	before := openFDs(t)

	for range 3 {
		h.start(h.ctx(), shell("echo out; echo err >&2")).wait()
		h.start(h.ctx(), &rpc.StartRequest{Process: &rpc.ProcessConfig{Cmd: "echo", Args: []string{"pty"}}, Pty: &rpc.PTY{}}).wait()
		noStdin := command("true")
		noStdin.Stdin = proto.Bool(false)
		h.start(h.ctx(), noStdin).wait()

		killed := h.start(h.ctx(), command("cat"))
		h.sendSignal(byPID(killed.pid), rpc.Signal_SIGNAL_SIGKILL)
		killed.wait()

		for _, req := range []*rpc.StartRequest{command("no-such-command-wrenn"), command(badInterp)} {
			s, err := h.startStream(h.ctx(), req)
			if _, err = tryOpenEvents(t, s, err); err == nil {
				t.Fatalf("Start(%v) succeeded", req)
			}
		}
		badPTY := command(badInterp)
		badPTY.Pty = &rpc.PTY{}
		s, err := h.startStream(h.ctx(), badPTY)
		if _, err = tryOpenEvents(t, s, err); err == nil {
			t.Fatalf("Start(%v) succeeded", badPTY)
		}
	}
	if after := openFDs(t); after != before {
		t.Errorf("open descriptors: %d before, %d after: %s", before, after, fdNames())
	}
}
