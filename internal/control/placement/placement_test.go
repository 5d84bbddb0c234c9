package placement

import (
	"errors"
	"strings"
	"testing"
	"time"

	"wrenn.dev/wrenn/internal/errdefs"
)

var now = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

const ttl = 30 * time.Second

// host returns a live qemu host with the given free capacity.
func host(id string, freeVCPUs int, freeMiB int64) Host {
	return Host{
		ID: id, Driver: "qemu", Accelerator: "tcg",
		VCPUsTotal: 16, VCPUsUsed: 16 - freeVCPUs,
		MemoryMiBTotal: 32768, MemoryMiBUsed: 32768 - freeMiB,
		LastHeartbeat: now.Add(-5 * time.Second),
	}
}

func with(h Host, f func(*Host)) Host { f(&h); return h }

func TestChoose(t *testing.T) {
	small := Request{VCPUs: 2, MemoryMiB: 512}
	tests := []struct {
		name    string
		hosts   []Host
		req     Request
		want    string   // chosen host ID; "" when an error is expected
		wantErr error    // error class
		msg     []string // substrings the error message must hold
	}{
		{name: "most free memory wins", hosts: []Host{host("a", 8, 4096), host("b", 8, 8192), host("c", 8, 2048)}, req: small, want: "b"},
		{name: "memory tie goes to most free vCPUs", hosts: []Host{host("a", 4, 4096), host("b", 8, 4096)}, req: small, want: "b"},
		{name: "full tie goes to smallest ID", hosts: []Host{host("b", 8, 4096), host("a", 8, 4096), host("c", 8, 4096)}, req: small, want: "a"},
		{name: "exact fit is accepted", hosts: []Host{host("a", 2, 512)}, req: small, want: "a"},
		{name: "host with most memory but too few vCPUs is skipped", hosts: []Host{host("a", 1, 16384), host("b", 2, 1024)}, req: small, want: "b"},
		{name: "stale heartbeat is not live", hosts: []Host{with(host("a", 8, 16384), func(h *Host) { h.LastHeartbeat = now.Add(-ttl - time.Second) }), host("b", 8, 1024)}, req: small, want: "b"},
		{name: "heartbeat exactly at TTL is live", hosts: []Host{with(host("a", 8, 1024), func(h *Host) { h.LastHeartbeat = now.Add(-ttl) })}, req: small, want: "a"},
		{name: "future heartbeat from clock skew is live", hosts: []Host{with(host("a", 8, 1024), func(h *Host) { h.LastHeartbeat = now.Add(time.Second) })}, req: small, want: "a"},
		{name: "draining host is skipped", hosts: []Host{with(host("a", 8, 16384), func(h *Host) { h.Draining = true }), host("b", 8, 1024)}, req: small, want: "b"},
		{name: "driver filter", hosts: []Host{host("a", 8, 16384), with(host("fc", 8, 1024), func(h *Host) { h.Driver = "firecracker" })}, req: Request{VCPUs: 1, MemoryMiB: 256, Driver: "firecracker"}, want: "fc"},
		{name: "empty driver means any", hosts: []Host{host("a", 8, 1024), with(host("fc", 8, 4096), func(h *Host) { h.Driver = "firecracker" })}, req: small, want: "fc"},

		{name: "no hosts at all", hosts: nil, req: small, wantErr: errdefs.ErrResourceExhausted, msg: []string{"no live hosts", "0 registered"}},
		{name: "only stale and draining hosts", hosts: []Host{
			with(host("a", 8, 4096), func(h *Host) { h.LastHeartbeat = now.Add(-time.Hour) }),
			with(host("b", 8, 4096), func(h *Host) { h.Draining = true }),
			with(host("c", 8, 4096), func(h *Host) { h.LastHeartbeat = time.Time{} }),
		}, req: small, wantErr: errdefs.ErrResourceExhausted, msg: []string{"no live hosts", "3 registered"}},
		{name: "no host with the driver", hosts: []Host{host("a", 8, 4096)}, req: Request{VCPUs: 1, MemoryMiB: 256, Driver: "firecracker"}, wantErr: errdefs.ErrResourceExhausted, msg: []string{`driver "firecracker"`, "live hosts run: qemu"}},
		{name: "no host with the capacity names best candidate", hosts: []Host{host("a", 1, 256), host("b", 1, 300)}, req: small, wantErr: errdefs.ErrResourceExhausted, msg: []string{"2 vCPUs and 512 MiB free", "best candidate b has 1 vCPUs and 300 MiB free"}},
		{name: "capacity error names the driver", hosts: []Host{with(host("fc", 1, 128), func(h *Host) { h.Driver = "firecracker" })}, req: Request{VCPUs: 2, MemoryMiB: 512, Driver: "firecracker"}, wantErr: errdefs.ErrResourceExhausted, msg: []string{"running firecracker", "best candidate fc"}},
		{name: "overcommitted host has negative free capacity", hosts: []Host{host("a", -2, -100)}, req: small, wantErr: errdefs.ErrResourceExhausted, msg: []string{"best candidate a has -2 vCPUs and -100 MiB free"}},
		{name: "zero vCPUs is invalid", hosts: []Host{host("a", 8, 4096)}, req: Request{VCPUs: 0, MemoryMiB: 512}, wantErr: errdefs.ErrInvalidArgument},
		{name: "negative memory is invalid", hosts: []Host{host("a", 8, 4096)}, req: Request{VCPUs: 1, MemoryMiB: -1}, wantErr: errdefs.ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Choose(tc.hosts, tc.req, now, ttl)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Choose(%d hosts, %+v) error = %v, want class %v", len(tc.hosts), tc.req, err, tc.wantErr)
				}
				for _, m := range tc.msg {
					if !strings.Contains(err.Error(), m) {
						t.Errorf("Choose(%d hosts, %+v) error = %q, want it to contain %q", len(tc.hosts), tc.req, err, m)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Choose(%d hosts, %+v) error = %v, want host %q", len(tc.hosts), tc.req, err, tc.want)
			}
			if got.ID != tc.want {
				t.Errorf("Choose(%d hosts, %+v) = host %q, want %q", len(tc.hosts), tc.req, got.ID, tc.want)
			}
		})
	}
}

func TestChooseDoesNotReorderCallersSlice(t *testing.T) {
	hosts := []Host{host("a", 8, 1024), host("b", 8, 4096)}
	if _, err := Choose(hosts, Request{VCPUs: 1, MemoryMiB: 1}, now, ttl); err != nil {
		t.Fatalf("Choose: %v", err)
	}
	if hosts[0].ID != "a" || hosts[1].ID != "b" {
		t.Errorf("Choose reordered the caller's slice: %q, %q", hosts[0].ID, hosts[1].ID)
	}
}

func TestChooseIsDeterministicWhateverTheInputOrder(t *testing.T) {
	hosts := []Host{host("c", 8, 4096), host("a", 8, 4096), host("b", 8, 4096)}
	req := Request{VCPUs: 1, MemoryMiB: 1}
	for i := range hosts {
		rotated := append(append([]Host{}, hosts[i:]...), hosts[:i]...)
		got, err := Choose(rotated, req, now, ttl)
		if err != nil || got.ID != "a" {
			t.Errorf("Choose(rotation %d, %+v) = %q, %v; want \"a\", nil", i, req, got.ID, err)
		}
	}
}
