package controle2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"wrenn.dev/wrenn/internal/agent/agentcmd"
	"wrenn.dev/wrenn/internal/control/controltest"
	"wrenn.dev/wrenn/internal/control/reconcile"
	pb "wrenn.dev/wrenn/internal/gen/hostagent/v1"
	"wrenn.dev/wrenn/internal/testlog"
)

type sandboxJSON struct {
	ID     string `json:"id"`
	State  string `json:"state"`
	HostID string `json:"host_id"`
	Reason string `json:"reason"`
}

func create(t *testing.T, p *controltest.Platform, key string) sandboxJSON {
	t.Helper()
	r := p.Do(t, "POST", "/v1/sandboxes", key, map[string]any{"template": "minimal", "memory_mib": 128, "egress": false})
	var sb sandboxJSON
	r.JSON(t, &sb)
	if r.Status != http.StatusCreated || sb.State != "running" {
		t.Fatalf("create = %d %s", r.Status, r.Body)
	}
	return sb
}

func get(t *testing.T, p *controltest.Platform, key, id string) sandboxJSON {
	t.Helper()
	var sb sandboxJSON
	p.Do(t, "GET", "/v1/sandboxes/"+id, key, nil).JSON(t, &sb)
	return sb
}

func execOut(t *testing.T, p *controltest.Platform, key, id, script string) (string, int) {
	t.Helper()
	var res struct {
		ExitCode int    `json:"exit_code"`
		Stdout   string `json:"stdout"`
	}
	r := p.Do(t, "POST", "/v1/sandboxes/"+id+"/exec", key, map[string]any{"cmd": "/bin/sh", "args": []string{"-c", script}})
	if r.Status != 200 {
		t.Fatalf("exec %q = %d %s", script, r.Status, r.Body)
	}
	r.JSON(t, &res)
	return res.Stdout, res.ExitCode
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Since(start)
}

func agentHas(t *testing.T, a *hostAgent, id string) (pb.SandboxState, bool) {
	t.Helper()
	resp, err := a.client.GetSandbox(context.Background(), connect.NewRequest(&pb.GetSandboxRequest{Id: id}))
	if connect.CodeOf(err) == connect.CodeNotFound {
		return 0, false
	}
	if err != nil {
		t.Fatalf("agent %s GetSandbox(%s) = %v", a.id, id, err)
	}
	return resp.Msg.GetSandbox().GetState(), true
}

// TestPlatformWithRealVMs drives real VMs through the API on two hosts:
// sandboxes spread across both, commands and files work, teams are
// isolated, kill destroys the VM, and a host that stops is noticed and its
// sandboxes are reported lost.
func TestPlatformWithRealVMs(t *testing.T) {
	a1 := startAgent(t, "host-1", 890)
	a2 := startAgent(t, "host-2", 900)
	p := controltest.New(t, controltest.Options{
		Agents: []string{a1.url, a2.url}, HeartbeatInterval: time.Second, HeartbeatTTL: 4 * time.Second,
	})
	mon := p.Svc.NewHostMonitor()
	mon.Start()
	defer mon.Stop()
	rec, err := reconcile.New(reconcile.Config{
		Store: p.Svc.ReconcileStore(), Agents: p.Svc.ReconcileAgents(), Logger: testlog.New(t),
		Interval: time.Second, HeartbeatTTL: p.Svc.HeartbeatTTL(),
	})
	if err != nil {
		t.Fatal(err)
	}
	rec.Start()
	defer rec.Stop()

	// Four sandboxes of two teams spread across the two hosts.
	var sbs []sandboxJSON
	perHost := map[string]int{}
	for i := range 4 {
		key := p.A.MemberKey
		if i%2 == 1 {
			key = p.B.MemberKey
		}
		sb := create(t, p, key)
		sbs = append(sbs, sb)
		perHost[sb.HostID]++
	}
	if perHost["host-1"] != 2 || perHost["host-2"] != 2 {
		t.Fatalf("placement: %v, want two on each host", perHost)
	}

	// Each is a VM: the guest kernel was booted with Wrenn's parameters.
	a := sbs[0]
	out, code := execOut(t, p, p.A.MemberKey, a.ID, "cat /proc/cmdline; echo; uname -r; exit 6")
	if code != 6 || !strings.Contains(out, "wrenn.root=/dev/vda") {
		t.Fatalf("exec in the VM = %q, exit %d; want a guest booted with wrenn.root=", out, code)
	}

	// Files in and out of the VM, checked by digest on both sides.
	data := make([]byte, 3<<20)
	rand.NewChaCha8([32]byte{1}).Read(data)
	h := http.Header{"X-Api-Key": {p.A.MemberKey}, "Content-Type": {"application/octet-stream"}}
	if r := p.DoHeader(t, "POST", "/v1/sandboxes/"+a.ID+"/files?path=/tmp/blob", h, data); r.Status != 200 {
		t.Fatalf("upload = %d %s", r.Status, r.Body)
	}
	sum := fmt.Sprintf("%x", sha256.Sum256(data))
	if out, _ := execOut(t, p, p.A.MemberKey, a.ID, "sha256sum /tmp/blob"); !strings.HasPrefix(out, sum) {
		t.Fatalf("in the guest the upload hashes to %q, want %s", out, sum)
	}
	if r := p.Do(t, "GET", "/v1/sandboxes/"+a.ID+"/files?path=/tmp/blob", p.A.MemberKey, nil); r.Status != 200 || !bytes.Equal(r.Body, data) {
		t.Fatalf("download = %d, %d bytes", r.Status, len(r.Body))
	}

	// Team B cannot reach team A's VM.
	if r := p.Do(t, "POST", "/v1/sandboxes/"+a.ID+"/exec", p.B.AdminKey, map[string]any{"cmd": "true"}); r.Status != 404 {
		t.Fatalf("team B exec in team A's sandbox = %d %s", r.Status, r.Body)
	}

	// Kill: the VM is gone from its host.
	hostOf := map[string]*hostAgent{"host-1": a1, "host-2": a2}
	if r := p.Do(t, "DELETE", "/v1/sandboxes/"+a.ID, p.A.MemberKey, nil); r.Status != 204 {
		t.Fatalf("kill = %d %s", r.Status, r.Body)
	}
	if st, ok := agentHas(t, hostOf[a.HostID], a.ID); ok && st != pb.SandboxState_SANDBOX_STATE_STOPPED {
		t.Fatalf("after kill the agent has %s in state %v", a.ID, st)
	}

	// Host 2 stops: its sandboxes are reported lost, host 1's keep running.
	a2.stop(t)
	waitFor(t, "host-2's sandboxes reported lost", time.Minute, func() bool {
		for _, sb := range sbs[1:] {
			if sb.HostID != "host-2" {
				continue
			}
			key := p.A.MemberKey
			if sb.ID == sbs[1].ID || sb.ID == sbs[3].ID {
				key = p.B.MemberKey
			}
			if got := get(t, p, key, sb.ID); got.State != "dead" {
				return false
			}
		}
		return true
	})
	for i, sb := range sbs {
		key := p.A.MemberKey
		if i%2 == 1 {
			key = p.B.MemberKey
		}
		got := get(t, p, key, sb.ID)
		switch {
		case sb.ID == a.ID:
		case sb.HostID == "host-2" && (got.State != "dead" || !strings.Contains(got.Reason, "host-2")):
			t.Errorf("sandbox %s on the stopped host: %+v, want dead naming host-2", sb.ID, got)
		case sb.HostID == "host-1" && got.State != "running":
			t.Errorf("sandbox %s on the live host: %+v, want running", sb.ID, got)
		}
	}
	var hosts struct {
		Hosts []struct {
			ID    string `json:"id"`
			State string `json:"state"`
		} `json:"hosts"`
	}
	p.Do(t, "GET", "/v1/hosts", p.A.AdminKey, nil).JSON(t, &hosts)
	states := map[string]string{}
	for _, h := range hosts.Hosts {
		states[h.ID] = h.State
	}
	if states["host-1"] != "ready" || states["host-2"] != "down" {
		t.Errorf("hosts = %v, want host-1 ready and host-2 down", states)
	}
	// A new sandbox goes to the live host.
	if sb := create(t, p, p.A.MemberKey); sb.HostID != "host-1" {
		t.Errorf("after host-2 stopped a create went to %s", sb.HostID)
	}
}

// TestReconciler runs the reconciler against a real agent: a VM destroyed
// behind the control plane's back is marked dead within one interval, a VM
// the database does not know is destroyed, and a paused sandbox is left
// alone.
func TestReconciler(t *testing.T) {
	a := startAgent(t, "host-3", 910)
	p := controltest.New(t, controltest.Options{Agents: []string{a.url}})
	const interval = 2 * time.Second
	rec, err := reconcile.New(reconcile.Config{
		Store: p.Svc.ReconcileStore(), Agents: p.Svc.ReconcileAgents(), Logger: testlog.New(t),
		Interval: interval, HeartbeatTTL: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	victim := create(t, p, p.A.MemberKey)
	paused := create(t, p, p.A.MemberKey)
	if r := p.Do(t, "POST", "/v1/sandboxes/"+paused.ID+"/pause", p.A.MemberKey, nil); r.Status != 200 {
		t.Fatalf("pause = %d %s", r.Status, r.Body)
	}
	// A VM nobody recorded: made on the agent directly.
	if _, err := a.client.CreateSandbox(context.Background(), connect.NewRequest(&pb.CreateSandboxRequest{
		Id: "stray", Template: "minimal", MemoryMib: 128,
	})); err != nil {
		t.Fatal(err)
	}
	rec.Start()
	defer rec.Stop()

	// Behind the control plane's back.
	if _, err := a.client.DestroySandbox(context.Background(), connect.NewRequest(&pb.DestroySandboxRequest{Id: victim.ID})); err != nil {
		t.Fatal(err)
	}
	took := waitFor(t, "the destroyed sandbox marked", 3*interval, func() bool {
		return get(t, p, p.A.MemberKey, victim.ID).State != "running"
	})
	got := get(t, p, p.A.MemberKey, victim.ID)
	if got.State != "stopped" && got.State != "dead" {
		t.Fatalf("the destroyed sandbox is %+v", got)
	}
	if took > interval+time.Second {
		t.Errorf("the destroyed sandbox was marked after %s, more than one interval (%s)", took, interval)
	}
	waitFor(t, "the stray VM destroyed", 3*interval, func() bool {
		st, ok := agentHas(t, a, "stray")
		return !ok || st == pb.SandboxState_SANDBOX_STATE_STOPPED
	})
	// Two more passes: the paused sandbox is untouched on both sides.
	passes := 0
	for passes < 2 {
		if _, err := rec.Tick(context.Background()); err != nil {
			t.Fatalf("Tick() = %v", err)
		}
		passes++
	}
	if got := get(t, p, p.A.MemberKey, paused.ID); got.State != "paused" {
		t.Errorf("the paused sandbox became %+v", got)
	}
	if st, ok := agentHas(t, a, paused.ID); !ok || st != pb.SandboxState_SANDBOX_STATE_PAUSED {
		t.Errorf("on the agent the paused sandbox is %v (present %v)", st, ok)
	}
	// It still resumes and runs commands.
	if r := p.Do(t, "POST", "/v1/sandboxes/"+paused.ID+"/resume", p.A.MemberKey, nil); r.Status != 200 {
		t.Fatalf("resume = %d %s", r.Status, r.Body)
	}
	if out, _ := execOut(t, p, p.A.MemberKey, paused.ID, "echo alive"); out != "alive\n" {
		t.Errorf("after resume: %q", out)
	}
}

// TestAgentRegistersItself starts an agent with -control-url: it shows up
// as a ready host and takes a sandbox; a member key is refused.
func TestAgentRegistersItself(t *testing.T) {
	p := controltest.New(t, controltest.Options{})
	refused := startAgent(t, "host-5", 940, func(c *agentcmd.Config) {
		c.ControlURL, c.ControlKey = p.URL, p.A.MemberKey
	})
	a := startAgent(t, "host-4", 930, func(c *agentcmd.Config) {
		c.ControlURL, c.ControlKey = p.URL, p.A.AdminKey
	})
	var hosts struct {
		Hosts []struct {
			ID, Address, State string
		} `json:"hosts"`
	}
	waitFor(t, "host-4 registered", time.Minute, func() bool {
		p.Do(t, "GET", "/v1/hosts", p.A.AdminKey, nil).JSON(t, &hosts)
		return len(hosts.Hosts) > 0
	})
	waitFor(t, "host-5's registration refused", time.Minute, func() bool {
		b, _ := os.ReadFile(filepath.Join(workDir, "host-5.log"))
		return strings.Contains(string(b), "refused the registration key")
	})
	p.Do(t, "GET", "/v1/hosts", p.A.AdminKey, nil).JSON(t, &hosts)
	if len(hosts.Hosts) != 1 || hosts.Hosts[0].ID != "host-4" || hosts.Hosts[0].Address != a.url || hosts.Hosts[0].State != "ready" {
		t.Fatalf("hosts = %+v, want only host-4 at %s (host-5's key was a member's: %s)", hosts.Hosts, a.url, refused.url)
	}
	if sb := create(t, p, p.B.MemberKey); sb.HostID != "host-4" {
		t.Errorf("created on %q", sb.HostID)
	}
}
