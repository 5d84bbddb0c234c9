package reconcile

import (
	"reflect"
	"testing"
	"time"

	"wrenn.dev/wrenn/internal/sandbox"
)

const (
	running  = sandbox.StateRunning
	starting = sandbox.StateStarting
	paused   = sandbox.StatePaused
	pausing  = sandbox.StatePausing
	resuming = sandbox.StateResuming
	stopping = sandbox.StateStopping
	stopped  = sandbox.StateStopped
	dead     = sandbox.StateDead
)

func TestCompute(t *testing.T) {
	up := map[string]bool{"h1": true, "h2": true}
	tests := []struct {
		name      string
		db        []DBSandbox
		agents    map[string][]AgentSandbox
		reachable map[string]bool
		want      Plan
	}{
		{
			name:      "in agreement: nothing to do",
			db:        []DBSandbox{{"a", "h1", running, false}, {"b", "h1", starting, false}},
			agents:    map[string][]AgentSandbox{"h1": {{ID: "a", State: running}, {ID: "b", State: running}}},
			reachable: up,
		},
		{
			name:      "live sandbox missing from reachable host is marked dead",
			db:        []DBSandbox{{"a", "h1", running, false}, {"b", "h1", starting, false}, {"c", "h1", resuming, false}},
			agents:    map[string][]AgentSandbox{"h1": nil},
			reachable: up,
			want: Plan{MarkDead: []Mark{
				{ID: "a", From: running, Reason: "not found on host h1: reaped or crashed"},
				{ID: "b", From: starting, Reason: "not found on host h1: reaped or crashed"},
				{ID: "c", From: resuming, Reason: "not found on host h1: reaped or crashed"},
			}},
		},
		{
			name:      "paused and pausing sandboxes absent from agent are left alone",
			db:        []DBSandbox{{"p", "h1", paused, false}, {"q", "h1", pausing, false}},
			agents:    map[string][]AgentSandbox{"h1": nil},
			reachable: up,
		},
		{
			name:      "a sandbox whose create is in flight is neither marked dead nor destroyed",
			db:        []DBSandbox{{"n", "h1", starting, true}, {"m", "h1", starting, true}},
			agents:    map[string][]AgentSandbox{"h1": {{ID: "m", State: starting}}},
			reachable: up,
		},
		{
			name:      "stopping sandbox gone from agent is recorded stopped",
			db:        []DBSandbox{{"s", "h1", stopping, false}},
			agents:    map[string][]AgentSandbox{"h1": nil},
			reachable: up,
			want:      Plan{UpdateState: []StateChange{{ID: "s", From: stopping, To: stopped, Reason: "stopped; no longer on host h1"}}},
		},
		{
			name: "agent-reported stopped and dead are recorded with reasons",
			db:   []DBSandbox{{"a", "h1", running, false}, {"b", "h1", running, false}, {"c", "h2", paused, false}},
			agents: map[string][]AgentSandbox{
				"h1": {{ID: "a", State: dead, Reason: "vm exited: signal 9"}, {ID: "b", State: stopped}},
				"h2": {{ID: "c", State: dead, Reason: "snapshot corrupt"}},
			},
			reachable: up,
			want: Plan{UpdateState: []StateChange{
				{ID: "a", From: running, To: dead, Reason: "vm exited: signal 9"},
				{ID: "b", From: running, To: stopped, Reason: "reported stopped by host h1"},
				{ID: "c", From: paused, To: dead, Reason: "snapshot corrupt"},
			}},
		},
		{
			name:      "host missing from agents map is unreachable",
			db:        []DBSandbox{{"a", "h1", running, false}},
			agents:    map[string][]AgentSandbox{},
			reachable: up,
		},
		{
			name:      "host not marked reachable is left alone even if listed",
			db:        []DBSandbox{{"a", "h1", running, false}},
			agents:    map[string][]AgentSandbox{"h1": {{ID: "x", State: running}}},
			reachable: map[string]bool{},
		},
		{
			name: "unknown VMs are destroyed; terminal and stopping ones are not",
			db:   []DBSandbox{{"a", "h1", running, false}},
			agents: map[string][]AgentSandbox{
				"h1": {{ID: "a", State: running}, {ID: "z", State: running}, {ID: "old", State: stopped}, {ID: "bye", State: stopping}},
				"h2": {{ID: "y", State: paused}, {ID: "x", State: starting}},
			},
			reachable: up,
			want:      Plan{Destroy: []Orphan{{"h1", "z"}, {"h2", "x"}, {"h2", "y"}}},
		},
		{
			name:      "VM on a different host than the database says is an orphan there",
			db:        []DBSandbox{{"a", "h1", running, false}},
			agents:    map[string][]AgentSandbox{"h1": {{ID: "a", State: running}}, "h2": {{ID: "a", State: running}}},
			reachable: up,
			want:      Plan{Destroy: []Orphan{{"h2", "a"}}},
		},
		{
			name: "unplaced and terminal database rows are ignored",
			db:   []DBSandbox{{"u", "", starting, false}, {"t", "h1", dead, false}, {"s", "h1", stopped, false}},
			agents: map[string][]AgentSandbox{
				"h1": {{ID: "t", State: dead}},
			},
			reachable: up,
		},
		{
			name:      "duplicate database rows count once",
			db:        []DBSandbox{{"a", "h1", running, false}, {"a", "h1", running, false}},
			agents:    map[string][]AgentSandbox{"h1": nil},
			reachable: up,
			want:      Plan{MarkDead: []Mark{{ID: "a", From: running, Reason: "not found on host h1: reaped or crashed"}}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Compute(tc.db, tc.agents, tc.reachable)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Compute(%v, %v, %v)\n got  %+v\n want %+v", tc.db, tc.agents, tc.reachable, got, tc.want)
			}
			again := Compute(tc.db, tc.agents, tc.reachable)
			if !reflect.DeepEqual(again, got) {
				t.Errorf("Compute is not idempotent: second pass %+v, first %+v", again, got)
			}
		})
	}
}

func TestComputeOrderDoesNotDependOnInputOrder(t *testing.T) {
	db := []DBSandbox{{"c", "h1", running, false}, {"a", "h2", running, false}, {"b", "h1", running, false}}
	agents := map[string][]AgentSandbox{"h1": {{ID: "z", State: running}, {ID: "y", State: running}}, "h2": {{ID: "w", State: running}}}
	up := map[string]bool{"h1": true, "h2": true}
	first := Compute(db, agents, up)
	reversed := []DBSandbox{db[2], db[1], db[0]}
	for range 20 { // map iteration order varies between calls
		if got := Compute(reversed, agents, up); !reflect.DeepEqual(got, first) {
			t.Fatalf("Compute(reversed) = %+v, want %+v", got, first)
		}
	}
	if first.MarkDead[0].ID != "a" || first.Destroy[0] != (Orphan{"h1", "y"}) {
		t.Errorf("Compute plan not sorted: %+v", first)
	}
}

func TestLostHosts(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	ttl := 90 * time.Second
	hosts := []Host{
		{ID: "fresh", LastHeartbeat: now.Add(-time.Second)},
		{ID: "edge", LastHeartbeat: now.Add(-ttl)},
		{ID: "stale", LastHeartbeat: now.Add(-ttl - time.Second)},
		{ID: "never", LastHeartbeat: time.Time{}},
		{ID: "future", LastHeartbeat: now.Add(time.Minute)},
	}
	got := LostHosts(hosts, now, ttl)
	want := []string{"never", "stale"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("LostHosts(%v, now, %s) = %v, want %v", hosts, ttl, got, want)
	}
}

func TestMarkLost(t *testing.T) {
	db := []DBSandbox{
		{"a", "lost", running, false},
		{"b", "lost", paused, false},
		{"c", "ok", running, false},
		{"d", "lost", starting, false},
		{"e", "lost", dead, false},
		{"a", "lost", running, false},
	}
	got := MarkLost(db, []string{"lost"})
	want := []Mark{
		{ID: "a", From: running, Reason: "host lost stopped heartbeating"},
		{ID: "d", From: starting, Reason: "host lost stopped heartbeating"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("MarkLost(%v, [lost]) = %+v, want %+v", db, got, want)
	}
	if got := MarkLost(db, nil); got != nil {
		t.Errorf("MarkLost(db, nil) = %+v, want nil", got)
	}
}
