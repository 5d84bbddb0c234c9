package agente2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "wrenn.dev/wrenn/internal/gen/hostagent/v1"
)

// vmPID returns the pid of sandbox id's qemu process, found in /proc by
// its name and checked against the pid file the driver wrote.
func vmPID(t *testing.T, id string) int {
	t.Helper()
	procs, err := vmProcesses(id)
	if err != nil || len(procs) != 1 {
		t.Fatalf("qemu processes of sandbox %s = %v, %v; want one", id, procs, err)
	}
	pidFile := filepath.Join(dataDir, "sandboxes", id, "vm", "qemu.pid")
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("read %s: %v", pidFile, err)
	}
	if got, _ := strconv.Atoi(strings.TrimSpace(string(b))); got != procs[0].PID {
		t.Fatalf("%s holds %q; the qemu named wrenn-%s is pid %d", pidFile, b, id, procs[0].PID)
	}
	return procs[0].PID
}

func slotsFree(t *testing.T) uint32 {
	t.Helper()
	info, err := client().GetHostInfo(testCtx(t, time.Minute), connect.NewRequest(&pb.GetHostInfoRequest{}))
	if err != nil {
		t.Fatalf("GetHostInfo() = %v", err)
	}
	return info.Msg.GetSlotsFree()
}

// TestKilledVMIsDead kills a sandbox's VM process from outside and checks
// that the agent marks the sandbox Dead with the reason, and that its VM,
// slot and files are released by then.
func TestKilledVMIsDead(t *testing.T) {
	dumpLogOnFailure(t)
	sb := createSandbox(t, &pb.CreateSandboxRequest{Id: "killed"})
	id, slot := sb.GetId(), slotOf(t, sb)
	pid := vmPID(t, id)
	free := slotsFree(t)

	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 %d: %v", pid, err)
	}
	ctx := testCtx(t, time.Minute)
	var got *pb.Sandbox
	ok, desc := waitFor(30*time.Second, func() (bool, string) {
		s, err := getSandbox(ctx, id)
		if err != nil {
			return false, fmt.Sprintf("GetSandbox(%s) = %v", id, err)
		}
		got = s
		return s.GetState() == pb.SandboxState_SANDBOX_STATE_DEAD, fmt.Sprintf("GetSandbox(%s) = %v", id, s)
	})
	if !ok {
		t.Fatalf("within 30s of SIGKILL to its qemu: %s; want state dead", desc)
	}
	t.Logf("GetSandbox(%s) after SIGKILL: state %s, reason %q", id, got.GetState(), got.GetReason())
	if r := got.GetReason(); !strings.Contains(r, "exited unexpectedly") || strings.Contains(r, "failed precondition") {
		t.Errorf("GetSandbox(%s).reason = %q, want it to say the VM exited unexpectedly, without error-class jargon", id, r)
	}
	// Dead means it holds nothing: checked at once, no waiting.
	checkReleased(t, id, slot, pid)
	if n := slotsFree(t); n != free+1 {
		t.Errorf("GetHostInfo().slots_free = %d after the VM died, want %d", n, free+1)
	}
	r := execIn(ctx, &pb.ExecRequest{SandboxId: id, Cmd: "/bin/true"})
	if connect.CodeOf(r.err) != connect.CodeFailedPrecondition {
		t.Errorf("%s on a dead sandbox = %v, want FailedPrecondition", r.call, r.err)
	}
	if _, err := client().DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{Id: id})); err != nil {
		t.Errorf("DestroySandbox(%s) of a dead sandbox = %v, want nil", id, err)
	}
	if s, err := getSandbox(ctx, id); err != nil || s.GetState() != pb.SandboxState_SANDBOX_STATE_DEAD {
		t.Errorf("GetSandbox(%s) after destroying the dead sandbox = %v, %v; want it still dead", id, s, err)
	}
}

// envdGet fetches path from a sandbox's envd directly from the host, with
// the access token when token is not empty.
func envdGet(t *testing.T, sb *pb.Sandbox, path, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t, 30*time.Second), http.MethodGet, sb.GetEnvdUrl()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("X-Access-Token", token)
	}
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	res, err := hc.Do(req)
	if err != nil {
		t.Fatalf("GET %s%s from the host: %v", sb.GetEnvdUrl(), path, err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(body)
}

// TestAgentRestartReattaches stops the agent with a sandbox running and
// starts a new one on the same data directory and slots: the sandbox
// carries on in the same VM (same pid, same guest boot), with the same
// envd token, and commands still run in it.
func TestAgentRestartReattaches(t *testing.T) {
	dumpLogOnFailure(t)
	sb := createSandbox(t, &pb.CreateSandboxRequest{Id: "survivor"})
	id := sb.GetId()
	pid := vmPID(t, id)
	bootID := shell(t, id, "cat /proc/sys/kernel/random/boot_id; echo kept > /tmp/marker").Stdout()
	if len(bootID) < 32 {
		t.Fatalf("boot_id of sandbox %s = %q", id, bootID)
	}

	restartAgent(t, "127.0.0.1:0")

	if p, err := readProcess(pid); err != nil || p.State == 'Z' {
		t.Fatalf("qemu pid %d of sandbox %s after the agent restarted: %+v, %v; want it running", pid, id, p, err)
	}
	ctx := testCtx(t, time.Minute)
	got, err := getSandbox(ctx, id)
	if err != nil {
		t.Fatalf("GetSandbox(%s) after the restart = %v", id, err)
	}
	if got.GetState() != pb.SandboxState_SANDBOX_STATE_RUNNING || got.GetEnvdAccessToken() != sb.GetEnvdAccessToken() ||
		got.GetHostIp() != sb.GetHostIp() || got.GetEnvdUrl() != sb.GetEnvdUrl() {
		t.Fatalf("GetSandbox(%s) after the restart = %v; want it running with the same token, host IP and envd URL as %v", id, got, sb)
	}
	if p := vmPID(t, id); p != pid {
		t.Errorf("sandbox %s runs in qemu pid %d after the restart, want %d", id, p, pid)
	}
	r := shell(t, id, "cat /proc/sys/kernel/random/boot_id /tmp/marker")
	if want := bootID + "kept\n"; r.Stdout() != want || r.exit.GetExitCode() != 0 {
		t.Errorf("%s after the restart = %q, exit %v; want %q (the same guest boot)", r.call, r.Stdout(), r.exit, want)
	}
	// envd still takes the token it was given before the restart, and
	// only that.
	if code, body := envdGet(t, got, "/files?path=/etc/hostname&username=user", got.GetEnvdAccessToken()); code != http.StatusOK || body != "sandbox\n" {
		t.Errorf("envd GET /files with the sandbox's token = %d %q, want 200 \"sandbox\\n\"", code, body)
	}
	if code, _ := envdGet(t, got, "/files?path=/etc/hostname&username=user", "not-"+got.GetEnvdAccessToken()); code != http.StatusUnauthorized {
		t.Errorf("envd GET /files with a wrong token = %d, want 401", code)
	}
	if _, err := client().DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{Id: id})); err != nil {
		t.Fatalf("DestroySandbox(%s) after the restart = %v", id, err)
	}
	if p, err := readProcess(pid); err == nil {
		t.Errorf("qemu pid %d still exists after DestroySandbox(%s) by the new agent: %+v", pid, id, p)
	}
}

// TestTimeoutDestroys checks that the reaper destroys a sandbox whose
// timeout passed, set at create or later with SetTimeout.
func TestTimeoutDestroys(t *testing.T) {
	dumpLogOnFailure(t)
	tests := []struct {
		name    string
		id      string
		create  uint32 // timeout_seconds at create
		setTo   uint32 // SetTimeout after create, when not 0
		timeout time.Duration
	}{
		{"CreateSandbox(timeout_seconds=1)", "ttl-create", 1, 0, time.Second},
		{"SetTimeout(timeout_seconds=1)", "ttl-set", 600, 1, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testCtx(t, 2*time.Minute)
			sb := createSandbox(t, &pb.CreateSandboxRequest{Id: tt.id, TimeoutSeconds: tt.create})
			slot := slotOf(t, sb)
			pid := 0
			if procs, err := vmProcesses(tt.id); err == nil && len(procs) == 1 {
				pid = procs[0].PID
			}
			expires := sb.GetExpiresAt().AsTime()
			if tt.setTo != 0 {
				res, err := client().SetTimeout(ctx, connect.NewRequest(&pb.SetTimeoutRequest{Id: tt.id, TimeoutSeconds: tt.setTo}))
				if err != nil {
					t.Fatalf("SetTimeout(%s, %d) = %v", tt.id, tt.setTo, err)
				}
				expires = res.Msg.GetExpiresAt().AsTime()
				if d := time.Until(expires); d > tt.timeout {
					t.Fatalf("SetTimeout(%s, %d) = expires in %s, want within %s", tt.id, tt.setTo, d, tt.timeout)
				}
			}
			// The agent's reaper runs every 5 s (agentcmd has no knob for
			// it): allow that, plus a destroy.
			var got *pb.Sandbox
			ok, desc := waitFor(30*time.Second, func() (bool, string) {
				s, err := getSandbox(ctx, tt.id)
				if connect.CodeOf(err) == connect.CodeNotFound {
					return true, "not found"
				}
				if err != nil {
					return false, err.Error()
				}
				got = s
				return s.GetState() == pb.SandboxState_SANDBOX_STATE_STOPPED, fmt.Sprintf("state %s, reason %q", s.GetState(), s.GetReason())
			})
			if !ok {
				t.Fatalf("GetSandbox(%s) 30s after it expired at %s: %s; want stopped (or gone)", tt.id, expires.Format(time.RFC3339Nano), desc)
			}
			if got != nil && !strings.Contains(got.GetReason(), "timeout") {
				t.Errorf("GetSandbox(%s).reason = %q, want it to say timeout", tt.id, got.GetReason())
			}
			t.Logf("%s: expired at %s, observed stopped %s later (reason %q)", tt.id, expires.Format("15:04:05.000"),
				time.Since(expires).Round(time.Millisecond), got.GetReason())
			checkReleased(t, tt.id, slot, pid)
		})
	}
}
