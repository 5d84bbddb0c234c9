// Package reconcile keeps the control plane's sandbox records in line with
// what the host agents actually run.
//
// A pass is split in two. Deciding is pure: [Compute], [LostHosts] and
// [MarkLost] take what the database and the agents said and return a [Plan]
// of actions, doing no I/O, so every rule is tested with plain values.
// Acting is the [Reconciler]'s job: it gathers the inputs through the
// consumer-side [Store] and [Agents] interfaces, computes the plan and
// applies it, once per [Reconciler.Tick] and every Config.Interval between
// Start and Stop.
//
// The rules:
//   - A sandbox the database has as live on a reachable host that the
//     host's agent no longer has is marked dead: it was reaped or crashed.
//   - A sandbox the agent reports stopped or dead gets that state and the
//     agent's reason recorded.
//   - Paused sandboxes are expected to be absent from their agent (pausing
//     frees the VM and keeps only its files), so they are left alone, as
//     are sandboxes still pausing.
//   - A sandbox whose create may still be in flight (DBSandbox.Creating)
//     is left alone while its agent does not have it yet.
//   - A sandbox the database has as stopping that the agent no longer has
//     finished stopping: it is recorded as stopped, not dead.
//   - Sandboxes on a host that could not be listed are left alone by
//     [Compute]: one failed call is not proof of loss. Host loss is decided
//     by heartbeat expiry instead ([LostHosts], [MarkLost]).
//   - A VM an agent runs that the database does not have as live on that
//     host is destroyed.
//
// Every state change carries the state the pass saw (From), so a store can
// apply it as a compare-and-swap and a sandbox that moved on meanwhile
// (paused, resumed, destroyed) is not clobbered. Computing the same inputs
// twice gives the same plan, in a stable order.
package reconcile

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"wrenn.dev/wrenn/internal/sandbox"
)

// DBSandbox is the database's view of a sandbox.
type DBSandbox struct {
	ID     string
	HostID string // empty while not placed
	State  sandbox.State
	// Creating says a create for it may still be in flight, so its agent
	// may not have it yet.
	Creating bool
}

// AgentSandbox is a host agent's view of a sandbox.
type AgentSandbox struct {
	ID     string
	State  sandbox.State
	Reason string // why it stopped or died, when it did
}

// Host is what the reconciler needs to know about a registered host.
type Host struct {
	ID            string
	LastHeartbeat time.Time
}

// Mark records a sandbox as dead.
type Mark struct {
	ID string
	// From is the state the pass saw the sandbox in; the store should only
	// apply the mark while it is still in that state.
	From   sandbox.State
	Reason string
}

// StateChange records a state an agent reported for a sandbox.
type StateChange struct {
	ID     string
	From   sandbox.State // as for Mark.From
	To     sandbox.State
	Reason string
}

// Orphan is a VM an agent runs that the database does not know.
type Orphan struct {
	HostID string
	ID     string
}

// Plan is what one pass decided to do. Each list is sorted (by ID, orphans
// by host then ID).
type Plan struct {
	MarkDead    []Mark
	Destroy     []Orphan
	UpdateState []StateChange
}

// Empty reports whether the plan has nothing to do.
func (p Plan) Empty() bool {
	return len(p.MarkDead) == 0 && len(p.Destroy) == 0 && len(p.UpdateState) == 0
}

// Compute decides one pass. db holds the database's live sandboxes (others
// are ignored); agents holds each host's sandboxes by host ID. A host is
// reachable only when reachable says so and agents has an entry for it (a
// nil list then means the agent runs nothing); sandboxes on any other host
// are left alone.
func Compute(db []DBSandbox, agents map[string][]AgentSandbox, reachable map[string]bool) Plan {
	isReachable := func(hostID string) bool {
		_, listed := agents[hostID]
		return listed && reachable[hostID]
	}
	type key struct{ host, id string }
	onAgent := map[key]AgentSandbox{}
	for hostID, list := range agents {
		if !isReachable(hostID) {
			continue
		}
		for _, a := range list {
			onAgent[key{hostID, a.ID}] = a
		}
	}

	var p Plan
	known := map[key]bool{}
	seen := map[string]bool{}
	for _, s := range db {
		if s.HostID == "" || !s.State.Live() || seen[s.ID] {
			continue
		}
		seen[s.ID] = true
		k := key{s.HostID, s.ID}
		known[k] = true
		if !isReachable(s.HostID) {
			continue
		}
		a, present := onAgent[k]
		switch {
		case present && a.State.Terminal():
			reason := a.Reason
			if reason == "" {
				reason = fmt.Sprintf("reported %s by host %s", a.State, s.HostID)
			}
			p.UpdateState = append(p.UpdateState, StateChange{ID: s.ID, From: s.State, To: a.State, Reason: reason})
		case present:
			// Live on both sides; the agent's own events move the state.
		case s.State == sandbox.StatePaused || s.State == sandbox.StatePausing:
			// Expected to be absent: pausing frees the VM.
		case s.Creating:
			// The agent may not have been asked yet.
		case s.State == sandbox.StateStopping:
			p.UpdateState = append(p.UpdateState, StateChange{ID: s.ID, From: s.State, To: sandbox.StateStopped,
				Reason: fmt.Sprintf("stopped; no longer on host %s", s.HostID)})
		default:
			p.MarkDead = append(p.MarkDead, Mark{ID: s.ID, From: s.State,
				Reason: fmt.Sprintf("not found on host %s: reaped or crashed", s.HostID)})
		}
	}

	for k, a := range onAgent {
		// Terminal records hold no resources, and a sandbox already
		// stopping is on its way out: neither needs destroying.
		if known[k] || a.State.Terminal() || a.State == sandbox.StateStopping {
			continue
		}
		p.Destroy = append(p.Destroy, Orphan{HostID: k.host, ID: k.id})
	}

	slices.SortFunc(p.MarkDead, func(a, b Mark) int { return cmp.Compare(a.ID, b.ID) })
	slices.SortFunc(p.UpdateState, func(a, b StateChange) int { return cmp.Compare(a.ID, b.ID) })
	slices.SortFunc(p.Destroy, func(a, b Orphan) int {
		return cmp.Or(cmp.Compare(a.HostID, b.HostID), cmp.Compare(a.ID, b.ID))
	})
	return p
}

// LostHosts returns, sorted, the IDs of the hosts whose last heartbeat is
// older than ttl at now.
func LostHosts(hosts []Host, now time.Time, ttl time.Duration) []string {
	var lost []string
	for _, h := range hosts {
		if now.Sub(h.LastHeartbeat) > ttl {
			lost = append(lost, h.ID)
		}
	}
	slices.Sort(lost)
	return slices.Compact(lost)
}

// MarkLost marks dead the live sandboxes of db that are on one of
// lostHosts, with reason "host H stopped heartbeating". Paused sandboxes
// are left alone: they have no VM to lose, their files stay on the host,
// and the host may come back.
func MarkLost(db []DBSandbox, lostHosts []string) []Mark {
	lost := map[string]bool{}
	for _, h := range lostHosts {
		lost[h] = true
	}
	var marks []Mark
	seen := map[string]bool{}
	for _, s := range db {
		if !lost[s.HostID] || !s.State.Live() || s.State == sandbox.StatePaused || seen[s.ID] {
			continue
		}
		seen[s.ID] = true
		marks = append(marks, Mark{ID: s.ID, From: s.State, Reason: fmt.Sprintf("host %s stopped heartbeating", s.HostID)})
	}
	slices.SortFunc(marks, func(a, b Mark) int { return cmp.Compare(a.ID, b.ID) })
	return marks
}
