// Package placement chooses the host a new sandbox runs on.
//
// It is pure logic: the caller gathers what it knows about the hosts (from
// their registrations and heartbeats) and asks [Choose] for one. A host is a
// candidate when it is live (heartbeated within the TTL and not draining),
// runs the VMM driver the request needs, and has the vCPUs and memory free.
// Among candidates the one left with the most free memory after placement
// wins, which spreads sandboxes across hosts; ties go to the most free vCPUs
// and then to the smallest ID, so the choice is deterministic.
package placement

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"wrenn.dev/wrenn/internal/errdefs"
)

// Host is what placement needs to know about one host.
type Host struct {
	ID             string
	Driver         string // VMM driver: firecracker, qemu
	Accelerator    string // kvm, tcg
	VCPUsTotal     int
	VCPUsUsed      int
	MemoryMiBTotal int64
	MemoryMiBUsed  int64
	LastHeartbeat  time.Time
	Draining       bool
}

// FreeVCPUs is the number of vCPUs not yet given to sandboxes.
func (h Host) FreeVCPUs() int { return h.VCPUsTotal - h.VCPUsUsed }

// FreeMemoryMiB is the memory not yet given to sandboxes.
func (h Host) FreeMemoryMiB() int64 { return h.MemoryMiBTotal - h.MemoryMiBUsed }

// Live reports whether the host takes new sandboxes at now: it is not
// draining and its last heartbeat is no older than ttl. A heartbeat stamped
// slightly in the future (clock skew between replicas) counts as fresh.
func (h Host) Live(now time.Time, ttl time.Duration) bool {
	return !h.Draining && !h.LastHeartbeat.IsZero() && now.Sub(h.LastHeartbeat) <= ttl
}

// Request is what a new sandbox needs from its host.
type Request struct {
	VCPUs     int
	MemoryMiB int64
	// Driver is the VMM driver the sandbox must run under; "" means any.
	// Templates with memory snapshots need the driver that made them.
	Driver string
}

// Choose picks the host for req among hosts, judging liveness at now with
// heartbeatTTL. A request for no vCPUs or no memory is ErrInvalidArgument.
// When no host fits, the error is ErrResourceExhausted and its message says
// why: no live hosts, none with the driver, or none with the capacity free
// (naming the best candidate's free capacity).
func Choose(hosts []Host, req Request, now time.Time, heartbeatTTL time.Duration) (Host, error) {
	if req.VCPUs <= 0 || req.MemoryMiB <= 0 {
		return Host{}, errdefs.InvalidArgument("placement needs a positive vCPU count and memory size, got %d vCPUs and %d MiB", req.VCPUs, req.MemoryMiB)
	}
	var live []Host
	for _, h := range hosts {
		if h.Live(now, heartbeatTTL) {
			live = append(live, h)
		}
	}
	if len(live) == 0 {
		return Host{}, errdefs.ResourceExhausted("no live hosts: %d registered, none heartbeating within %s and not draining", len(hosts), heartbeatTTL)
	}

	var withDriver []Host
	drivers := map[string]bool{}
	for _, h := range live {
		drivers[h.Driver] = true
		if req.Driver == "" || h.Driver == req.Driver {
			withDriver = append(withDriver, h)
		}
	}
	if len(withDriver) == 0 {
		names := make([]string, 0, len(drivers))
		for d := range drivers {
			names = append(names, d)
		}
		slices.Sort(names)
		return Host{}, errdefs.ResourceExhausted("no live host with driver %q (live hosts run: %s)", req.Driver, strings.Join(names, ", "))
	}

	// Order by free memory, then free vCPUs, both descending, then by ID.
	// Subtracting the request from every host does not change the order, so
	// the best candidate before placement is also the best after it.
	slices.SortFunc(withDriver, func(a, b Host) int {
		if c := cmp.Compare(b.FreeMemoryMiB(), a.FreeMemoryMiB()); c != 0 {
			return c
		}
		if c := cmp.Compare(b.FreeVCPUs(), a.FreeVCPUs()); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	for _, h := range withDriver {
		if h.FreeVCPUs() >= req.VCPUs && h.FreeMemoryMiB() >= req.MemoryMiB {
			return h, nil
		}
	}
	best := withDriver[0]
	return Host{}, errdefs.ResourceExhausted("no live host%s with %d vCPUs and %d MiB free; best candidate %s has %d vCPUs and %d MiB free",
		driverPhrase(req.Driver), req.VCPUs, req.MemoryMiB, best.ID, best.FreeVCPUs(), best.FreeMemoryMiB())
}

func driverPhrase(d string) string {
	if d == "" {
		return ""
	}
	return fmt.Sprintf(" running %s", d)
}
