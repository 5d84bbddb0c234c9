package httpapi_test

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"

	"wrenn.dev/wrenn/internal/control/controltest"
)

// TestSnapshotTemplates takes a named template through the API and makes
// sandboxes from it. The agent runs the fake driver with its FAKE
// snapshots (agenttest.Driver.Snapshots): the bookkeeping is real, the
// VM state is not (test/snapshote2e restores real QEMU VMs).
func TestSnapshotTemplates(t *testing.T) {
	agent := controltest.StartAgent(t, envdBin, "host-1")
	agent.Driver.Snapshots = true
	p := controltest.New(t, controltest.Options{Agents: []string{agent.URL}})
	key := p.A.MemberKey
	src := create(t, p, key, map[string]any{"template": "minimal", "vcpus": 2, "memory_mib": 384})

	type tmpl struct {
		Name      string `json:"name"`
		Kind      string `json:"kind"`
		ID        string `json:"id"`
		VCPUs     *int   `json:"vcpus"`
		MemoryMiB *int   `json:"memory_mib"`
		Source    string `json:"source_sandbox_id"`
	}
	var made tmpl
	r := p.Do(t, "POST", "/v1/snapshots", key, map[string]string{"sandbox_id": src.ID, "name": "warm"})
	r.JSON(t, &made)
	if r.Status != http.StatusCreated || made.Kind != "snapshot" || made.Name != "warm" || made.ID == "" ||
		*made.VCPUs != 2 || *made.MemoryMiB != 384 || made.Source != src.ID {
		t.Fatalf("POST /v1/snapshots = %d %s", r.Status, r.Body)
	}
	if r := p.Do(t, "POST", "/v1/snapshots", key, map[string]string{"sandbox_id": src.ID, "name": "warm"}); r.Status != http.StatusConflict {
		t.Errorf("the same name again = %d %s, want 409", r.Status, r.Body)
	}
	if r := p.Do(t, "POST", "/v1/snapshots", p.B.MemberKey, map[string]string{"sandbox_id": src.ID, "name": "theirs"}); r.Status != 404 {
		t.Errorf("team B snapshotting team A's sandbox = %d %s, want 404", r.Status, r.Body)
	}

	var list struct {
		Templates []tmpl `json:"templates"`
		Snapshots []tmpl `json:"snapshots"`
	}
	p.Do(t, "GET", "/v1/templates", key, nil).JSON(t, &list)
	names := []string{}
	for _, tp := range list.Templates {
		names = append(names, tp.Kind+":"+tp.Name)
	}
	if !slices.Contains(names, "image:minimal") || !slices.Contains(names, "snapshot:warm") {
		t.Fatalf("templates = %v", names)
	}
	p.Do(t, "GET", "/v1/snapshots", p.B.MemberKey, nil).JSON(t, &list)
	if len(list.Snapshots) != 0 {
		t.Fatalf("team B sees snapshots %+v", list.Snapshots)
	}

	// From the template: its size, or the same size given; anything else
	// is refused with the template's size in the message.
	if r := p.Do(t, "POST", "/v1/sandboxes", key, map[string]any{"template": "warm", "vcpus": 1}); r.Status != 400 || !strings.Contains(r.Message(), "2-vCPU, 384 MiB") {
		t.Errorf("create from warm with 1 vCPU = %d %s", r.Status, r.Body)
	}
	for _, body := range []map[string]any{{"template": "warm"}, {"template": "warm", "vcpus": 2, "memory_mib": 384}} {
		child := create(t, p, key, body)
		if child.VCPUs != 2 || child.MemoryMiB != 384 || child.Template != "warm" || child.State != "running" {
			t.Fatalf("child of warm = %+v", child)
		}
		if got, _ := agent.Manager.Get(context.Background(), child.ID); got == nil || got.Template != made.ID {
			t.Fatalf("the agent made %s from %+v, want template %s", child.ID, got, made.ID)
		}
	}
	if r := p.Do(t, "POST", "/v1/sandboxes", p.B.MemberKey, map[string]any{"template": "warm"}); r.Status != 400 {
		t.Errorf("team B creating from team A's template = %d %s, want 400 (no such template)", r.Status, r.Body)
	}

	// Pause frees the VM on the agent; resume brings it back.
	var sb sandboxJSON
	p.Do(t, "POST", "/v1/sandboxes/"+src.ID+"/pause", key, nil).JSON(t, &sb)
	if sb.State != "paused" {
		t.Fatalf("pause = %+v", sb)
	}
	if m := agent.Driver.Machine(src.ID); m != nil {
		select {
		case <-m.Done():
		default:
			t.Errorf("the paused sandbox's VM still runs")
		}
	}
	p.Do(t, "POST", "/v1/sandboxes/"+src.ID+"/resume", key, nil).JSON(t, &sb)
	if sb.State != "running" {
		t.Fatalf("resume = %+v", sb)
	}
	execOK(t, p, key, src.ID, "true")

	// Delete: gone from the list and from the agent; twice is not found.
	if r := p.Do(t, "DELETE", "/v1/snapshots/warm", p.B.AdminKey, nil); r.Status != 404 {
		t.Errorf("team B deleting team A's template = %d", r.Status)
	}
	if r := p.Do(t, "DELETE", "/v1/snapshots/warm", key, nil); r.Status != http.StatusNoContent {
		t.Fatalf("DELETE /v1/snapshots/warm = %d %s", r.Status, r.Body)
	}
	if r := p.Do(t, "DELETE", "/v1/snapshots/warm", key, nil); r.Status != 404 {
		t.Errorf("DELETE twice = %d, want 404", r.Status)
	}
	if slices.Contains(agent.Manager.HostInfo(context.Background()).Templates, made.ID) {
		t.Errorf("the agent still has template %s", made.ID)
	}
	if r := p.Do(t, "DELETE", "/v1/snapshots/minimal", key, nil); r.Status != 404 {
		t.Errorf("deleting the image minimal = %d, want 404", r.Status)
	}
}
