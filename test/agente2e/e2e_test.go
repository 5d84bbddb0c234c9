package agente2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "wrenn.dev/wrenn/internal/gen/hostagent/v1"
)

// TestSandboxEndToEnd creates a sandbox from the minimal image, runs
// commands in it with streamed output, moves a few MiB in and out of it,
// drives a terminal in it, and destroys it.
func TestSandboxEndToEnd(t *testing.T) {
	dumpLogOnFailure(t)
	info, err := client().GetHostInfo(testCtx(t, time.Minute), connect.NewRequest(&pb.GetHostInfoRequest{}))
	if err != nil {
		t.Fatalf("GetHostInfo() = %v", err)
	}
	if info.Msg.GetDriver() != "qemu" || info.Msg.GetAccelerator() == "" || !containsString(info.Msg.GetTemplates(), "minimal") {
		t.Fatalf("GetHostInfo() = %v; want driver qemu with an accelerator and the minimal template", info.Msg)
	}
	sb := createSandbox(t, &pb.CreateSandboxRequest{Id: "e2e", EnvVars: map[string]string{"WRENN_E2E": "from-create"}})
	id := sb.GetId()

	t.Run("Exec streams output", func(t *testing.T) { testExecStreams(t, id) })
	t.Run("Exec", func(t *testing.T) { testExecTable(t, id) })
	t.Run("WriteFile then ReadFile", func(t *testing.T) { testFileRoundTrip(t, id) })
	t.Run("PTY", func(t *testing.T) { testPTY(t, id) })
	t.Run("Destroy", func(t *testing.T) { testDestroy(t, sb) })
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// testExecStreams checks that output is streamed as it is written: the
// lines the command writes 500 ms apart arrive as separate events, the
// first long before the exit, and stderr and the exit code come through.
func testExecStreams(t *testing.T, id string) {
	const script = `for i in 1 2 3 4; do echo "chunk $i"; sleep 0.5; done; echo "to stderr" >&2; exit 7`
	r := shell(t, id, script)
	if r.pid == 0 {
		t.Errorf("%s streamed no started event with a pid", r.call)
	}
	if got, want := r.Stdout(), "chunk 1\nchunk 2\nchunk 3\nchunk 4\n"; got != want {
		t.Errorf("%s stdout = %q, want %q", r.call, got, want)
	}
	if len(r.stdout) < 3 {
		t.Errorf("%s streamed stdout in %d event(s), want one per line (4; at least 3): output is not streamed as written", r.call, len(r.stdout))
	}
	if got := r.Stderr(); got != "to stderr\n" {
		t.Errorf("%s stderr = %q, want %q", r.call, got, "to stderr\n")
	}
	if r.exit == nil || r.exit.GetExitCode() != 7 {
		t.Fatalf("%s exit = %v, want exit code 7", r.call, r.exit)
	}
	if r.afterEnd != 0 {
		t.Errorf("%s streamed %d events after the exit", r.call, r.afterEnd)
	}
	// The first line is written 2 s before the exit and the last 1.5 s
	// after the first: allow 0.5 s of delivery lag on each.
	if len(r.stdout) > 0 {
		first, last := r.stdout[0].at, r.stdout[len(r.stdout)-1].at
		if lead := r.exitAt.Sub(first); lead < 1500*time.Millisecond {
			t.Errorf("%s: the first stdout event arrived only %s before the exit; want >= 1.5s (buffered until exit?)", r.call, lead)
		}
		if spread := last.Sub(first); spread < time.Second {
			t.Errorf("%s: stdout events arrived within %s; want them >= 1s apart, as written", r.call, spread)
		}
	}
}

// testExecTable checks exit codes, stdin, users, environment and working
// directory.
func testExecTable(t *testing.T, id string) {
	tests := []struct {
		name       string
		req        *pb.ExecRequest
		wantStdout string
		wantStderr string
		wantCode   int32
	}{
		{"exit code and stderr", &pb.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "echo out; echo err >&2; exit 3"}},
			"out\n", "err\n", 3},
		{"stdin is fed then closed", &pb.ExecRequest{Cmd: "/bin/cat", Stdin: []byte("hello\nstdin")},
			"hello\nstdin", "", 0},
		{"default user", &pb.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "id -un; echo $HOME"}},
			"user\n/home/user\n", "", 0},
		{"root", &pb.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "id -u"}, User: "root"}, "0\n", "", 0},
		{"create env vars, request env vars and cwd",
			&pb.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", `echo "$WRENN_E2E $GREETING"; pwd`},
				Envs: map[string]string{"GREETING": "hi"}, Cwd: "/tmp"},
			"from-create hi\n/tmp\n", "", 0},
		{"killed by a signal", &pb.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "kill -9 $$"}}, "", "", -1},
	}
	for _, tt := range tests {
		tt.req.SandboxId = id
		r := execIn(testCtx(t, time.Minute), tt.req)
		if r.err != nil {
			t.Errorf("%s: %s = %v", tt.name, r.call, r.err)
			continue
		}
		if r.Stdout() != tt.wantStdout || r.Stderr() != tt.wantStderr || r.exit.GetExitCode() != tt.wantCode {
			t.Errorf("%s: %s = stdout %q, stderr %q, exit %v; want %q, %q, code %d",
				tt.name, r.call, r.Stdout(), r.Stderr(), r.exit, tt.wantStdout, tt.wantStderr, tt.wantCode)
		}
	}
	// A sandbox that does not exist is NotFound.
	r := execIn(testCtx(t, time.Minute), &pb.ExecRequest{SandboxId: "no-such-sandbox", Cmd: "/bin/true"})
	if connect.CodeOf(r.err) != connect.CodeNotFound {
		t.Errorf("%s = %v, want NotFound", r.call, r.err)
	}
}

// testFileRoundTrip writes a few MiB of random bytes into the sandbox in
// chunks, reads them back, and compares digests (also the guest's own).
func testFileRoundTrip(t *testing.T, id string) {
	const size = 4<<20 + 12345
	data := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{'w', 'r', 'e', 'n', 'n'})
	_, _ = rng.Read(data)
	sum := sha256.Sum256(data)
	want := hex.EncodeToString(sum[:])
	const path = "/home/user/e2e/blob.bin"

	ctx := testCtx(t, 2*time.Minute)
	start := time.Now()
	ws := client().WriteFile(ctx)
	if err := ws.Send(&pb.WriteFileRequest{Part: &pb.WriteFileRequest_Header_{Header: &pb.WriteFileRequest_Header{
		SandboxId: id, Path: path,
	}}}); err != nil {
		t.Fatalf("WriteFile(%s) header: %v", path, err)
	}
	for off := 0; off < len(data); off += 1 << 20 {
		end := min(off+1<<20, len(data))
		if err := ws.Send(&pb.WriteFileRequest{Part: &pb.WriteFileRequest_Data{Data: data[off:end]}}); err != nil {
			t.Fatalf("WriteFile(%s) chunk at %d: %v", path, off, err)
		}
	}
	wres, err := ws.CloseAndReceive()
	if err != nil {
		t.Fatalf("WriteFile(%s) = %v", path, err)
	}
	if wres.Msg.GetSize() != size {
		t.Errorf("WriteFile(%s) = size %d, want %d", path, wres.Msg.GetSize(), size)
	}
	wrote := time.Since(start)

	start = time.Now()
	rs, err := client().ReadFile(ctx, connect.NewRequest(&pb.ReadFileRequest{SandboxId: id, Path: path}))
	if err != nil {
		t.Fatalf("ReadFile(%s) = %v", path, err)
	}
	h := sha256.New()
	var n, chunks int
	for rs.Receive() {
		h.Write(rs.Msg().GetData())
		n += len(rs.Msg().GetData())
		chunks++
	}
	if err := rs.Err(); err != nil {
		t.Fatalf("ReadFile(%s) stream = %v", path, err)
	}
	rs.Close()
	t.Logf("%d bytes: WriteFile %s, ReadFile %s in %d chunks", size, wrote.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), chunks)
	if got := hex.EncodeToString(h.Sum(nil)); n != size || got != want {
		t.Errorf("ReadFile(%s) = %d bytes with sha256 %s; want %d bytes with sha256 %s", path, n, got, size, want)
	}
	r := shell(t, id, "sha256sum "+path+" && stat -c '%U %s' "+path)
	if got := r.Stdout(); r.exit.GetExitCode() != 0 || got != want+"  "+path+"\nuser "+fmt.Sprint(size)+"\n" {
		t.Errorf("%s in the guest = %q (exit %v); want the same sha256, owned by user", r.call, got, r.exit)
	}

	rs, err = client().ReadFile(ctx, connect.NewRequest(&pb.ReadFileRequest{SandboxId: id, Path: "/home/user/no-such-file"}))
	if err == nil {
		for rs.Receive() {
		}
		err = rs.Err()
		rs.Close()
	}
	if connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("ReadFile(/home/user/no-such-file) = %v, want NotFound", err)
	}
}

// ptySession is an open Pty stream with its output collected.
type ptySession struct {
	t      *testing.T
	stream *connect.BidiStreamForClient[pb.PtyRequest, pb.PtyResponse]
	notify chan struct{}
	done   chan struct{}

	mu   sync.Mutex
	out  bytes.Buffer
	pid  uint32
	exit *pb.PtyResponse_Exited
	err  error
}

func openPTY(t *testing.T, ctx context.Context, open *pb.PtyRequest_Open) *ptySession {
	t.Helper()
	p := &ptySession{t: t, stream: client().Pty(ctx), notify: make(chan struct{}, 1), done: make(chan struct{})}
	if err := p.stream.Send(&pb.PtyRequest{Event: &pb.PtyRequest_Open_{Open: open}}); err != nil {
		t.Fatalf("Pty(open %v) = %v", open, err)
	}
	go p.read()
	return p
}

func (p *ptySession) read() {
	defer close(p.done)
	for {
		msg, err := p.stream.Receive()
		p.mu.Lock()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				p.err = err
			}
			p.mu.Unlock()
			return
		}
		switch ev := msg.GetEvent().(type) {
		case *pb.PtyResponse_Started_:
			p.pid = ev.Started.GetPid()
		case *pb.PtyResponse_Output:
			p.out.Write(ev.Output)
		case *pb.PtyResponse_Exited_:
			p.exit = ev.Exited
		}
		p.mu.Unlock()
		select {
		case p.notify <- struct{}{}:
		default:
		}
	}
}

func (p *ptySession) input(s string) {
	p.t.Helper()
	if err := p.stream.Send(&pb.PtyRequest{Event: &pb.PtyRequest_Input{Input: []byte(s)}}); err != nil {
		p.t.Fatalf("Pty input %q = %v", s, err)
	}
}

func (p *ptySession) resize(cols, rows uint32) {
	p.t.Helper()
	if err := p.stream.Send(&pb.PtyRequest{Event: &pb.PtyRequest_Resize_{Resize: &pb.PtyRequest_Resize{Cols: cols, Rows: rows}}}); err != nil {
		p.t.Fatalf("Pty resize %dx%d = %v", cols, rows, err)
	}
}

// expect waits until the output after mark contains want, and returns
// the new mark (the end of want).
func (p *ptySession) expect(mark int, want string, d time.Duration) int {
	p.t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		p.mu.Lock()
		out := p.out.String()
		p.mu.Unlock()
		if i := strings.Index(out[mark:], want); i >= 0 {
			return mark + i + len(want)
		}
		select {
		case <-p.notify:
		case <-p.done:
			p.mu.Lock()
			out, err := p.out.String(), p.err
			p.mu.Unlock()
			if !strings.Contains(out[mark:], want) {
				p.t.Fatalf("Pty ended (err %v) before printing %q; output after the last match: %q", err, want, out[mark:])
			}
		case <-timer.C:
			p.t.Fatalf("Pty did not print %q within %s; output after the last match: %q", want, d, out[mark:])
		}
	}
}

// testPTY opens the default shell on a terminal, types commands, resizes
// the terminal and checks the shell sees it, and exits the shell.
func testPTY(t *testing.T, id string) {
	ctx := testCtx(t, 2*time.Minute)
	p := openPTY(t, ctx, &pb.PtyRequest_Open{SandboxId: id, Cols: 80, Rows: 24})
	defer func() {
		p.stream.CloseRequest()
		p.stream.CloseResponse()
		<-p.done
	}()
	mark := 0
	// The typed line echoes "pty-$((6*7))"; only the shell's output is
	// "pty-42".
	p.input("echo pty-$((6*7))\n")
	mark = p.expect(mark, "pty-42", 30*time.Second)
	p.input(`echo "size=[$(stty size)] tty=[$(tty)]"` + "\n")
	mark = p.expect(mark, "size=[24 80] tty=[/dev/pts/", 30*time.Second)
	p.resize(101, 37)
	p.input(`echo "size=[$(stty size)]"` + "\n")
	mark = p.expect(mark, "size=[37 101]", 30*time.Second)
	p.input("exit 5\n")
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatal("Pty stream did not end within 30s of typing exit")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		t.Errorf("Pty stream = %v, want a clean end after the exit", p.err)
	}
	if p.pid == 0 {
		t.Errorf("Pty sent no started event with a pid")
	}
	if p.exit == nil || p.exit.GetExitCode() != 5 {
		t.Errorf("Pty exit = %v, want exit code 5 from `exit 5`", p.exit)
	}
}

// testDestroy destroys the sandbox and checks that it is Stopped, that it
// no longer runs anything, that its VM, slot and files are gone, and that
// destroying it again is not an error.
func testDestroy(t *testing.T, sb *pb.Sandbox) {
	id := sb.GetId()
	slot := slotOf(t, sb)
	procs, err := vmProcesses(id)
	if err != nil || len(procs) != 1 {
		t.Fatalf("qemu processes of sandbox %s before destroy = %v, %v; want one", id, procs, err)
	}
	ctx := testCtx(t, time.Minute)
	if _, err := client().DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{Id: id})); err != nil {
		t.Fatalf("DestroySandbox(%s) = %v", id, err)
	}
	got, err := getSandbox(ctx, id)
	if err != nil || got.GetState() != pb.SandboxState_SANDBOX_STATE_STOPPED {
		t.Fatalf("GetSandbox(%s) after destroy = %v, %v; want stopped", id, got, err)
	}
	checkReleased(t, id, slot, procs[0].PID)
	if _, err := client().DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{Id: id})); err != nil {
		t.Errorf("DestroySandbox(%s) a second time = %v, want nil", id, err)
	}
	r := execIn(ctx, &pb.ExecRequest{SandboxId: id, Cmd: "/bin/true"})
	if connect.CodeOf(r.err) != connect.CodeFailedPrecondition {
		t.Errorf("%s on a destroyed sandbox = %v, want FailedPrecondition", r.call, r.err)
	}
}

// checkReleased checks that a sandbox that ended holds nothing on the
// host: its qemu process is gone (reaped), and so are its network
// namespace, its veth and its directory.
func checkReleased(t *testing.T, id string, slot, pid int) {
	t.Helper()
	if p, err := readProcess(pid); err == nil {
		t.Errorf("qemu pid %d of sandbox %s still exists: %s (state %c)", pid, id, p.Comm, p.State)
	}
	if procs, _ := vmProcesses(id); len(procs) != 0 {
		t.Errorf("qemu processes of sandbox %s left: %v", id, procs)
	}
	if _, err := os.Stat(filepath.Join("/run/netns", netnsName(slot))); !os.IsNotExist(err) {
		t.Errorf("network namespace %s of sandbox %s: stat = %v, want it gone", netnsName(slot), id, err)
	}
	if ifc, err := netInterface(vethName(slot)); err == nil {
		t.Errorf("veth %s of sandbox %s still exists (index %d)", vethName(slot), id, ifc)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "sandboxes", id)); !os.IsNotExist(err) {
		t.Errorf("directory of sandbox %s: stat = %v, want it gone", id, err)
	}
}
