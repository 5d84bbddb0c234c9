package hostnet

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	"wrenn.dev/wrenn/internal/errdefs"
)

func TestConfigDefaults(t *testing.T) {
	c, err := Config{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.Prefix != "wrenn" || c.First != 1 || c.Last != 1024 ||
		c.HostCIDR != netip.MustParsePrefix("10.11.0.0/16") || c.VethCIDR != netip.MustParsePrefix("10.12.0.0/16") ||
		c.Logger == nil || c.tableName() != "wrenn_1_1024" {
		t.Fatalf("defaults = %+v", c)
	}
}

// The layout of slot N (E2B's): host IP = Nth address of the host CIDR,
// veth /31 at 2N (host end) and 2N+1 (namespace end).
func TestSlotLayout(t *testing.T) {
	m, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		n                       int
		host, vethHost, vethNS  string
		nsName, netns, hostVeth string
	}{
		{1, "10.11.0.1", "10.12.0.2", "10.12.0.3", "wrenn-1", "/run/netns/wrenn-1", "wrennv1"},
		{300, "10.11.1.44", "10.12.2.88", "10.12.2.89", "wrenn-300", "/run/netns/wrenn-300", "wrennv300"},
		{1024, "10.11.4.0", "10.12.8.0", "10.12.8.1", "wrenn-1024", "/run/netns/wrenn-1024", "wrennv1024"},
	} {
		s := m.slot(tc.n)
		got := []string{s.HostIP.String(), m.cfg.vethHostAddr(tc.n).String(), m.cfg.vethNSAddr(tc.n).String(), s.NSName, s.NetNS, s.HostVeth}
		want := []string{tc.host, tc.vethHost, tc.vethNS, tc.nsName, tc.netns, tc.hostVeth}
		if !slices.Equal(got, want) {
			t.Errorf("slot %d: %v; want %v", tc.n, got, want)
		}
		if s.GuestIP != GuestIP || s.GuestMAC != GuestMAC || s.Tap != "tap0" {
			t.Errorf("slot %d guest side = %s %s %s", tc.n, s.GuestIP, s.GuestMAC, s.Tap)
		}
	}
}

func TestKernelIPArg(t *testing.T) {
	got := (&Slot{}).KernelIPArg()
	if want := "ip=169.254.0.21::169.254.0.22:255.255.255.252::eth0:off"; got != want {
		t.Fatalf("KernelIPArg = %q; want %q", got, want)
	}
}

func TestConfigInvalid(t *testing.T) {
	for _, c := range []Config{
		{Prefix: "Wrenn"},
		{Prefix: "1wrenn"},
		{Prefix: "wr-enn"},
		{Prefix: "averylongprefix"}, // veth name over 15 bytes
		{First: 0, Last: 5},         // index 0
		{First: 5, Last: 4},         // empty
		{First: 1, Last: 300, HostCIDR: netip.MustParsePrefix("10.11.0.0/24")},
		{First: 1, Last: 200, VethCIDR: netip.MustParsePrefix("10.12.0.0/24")},
		{HostCIDR: netip.MustParsePrefix("10.12.0.0/16")},   // overlaps the veth CIDR
		{HostCIDR: netip.MustParsePrefix("169.254.0.0/16")}, // the guest's range
		{HostCIDR: netip.MustParsePrefix("fd00::/64")},      // IPv6
		{Uplinks: []string{"eth0", ""}},
	} {
		if _, err := New(c); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("New(%+v) = %v; want ErrInvalidArgument", c, err)
		}
	}
}

func TestParseNames(t *testing.T) {
	for _, tc := range []struct {
		name, prefix, sep string
		n                 int
		ok                bool
	}{
		{"wrenn-5", "wrenn", "-", 5, true},
		{"wrennv1024", "wrenn", "v", 1024, true},
		{"wrenn-05", "wrenn", "-", 0, false},
		{"wrenn-", "wrenn", "-", 0, false},
		{"wrenn-5-3", "wrenn", "-", 0, false},
		{"wrenn2-5", "wrenn", "-", 0, false},
		{"wrennv2v1", "wrennv", "v", 0, false}, // prefix "wrennv2"'s veth is not "wrennv"'s
		{"wrenn-+5", "wrenn", "-", 0, false},
	} {
		n, ok := parseIndex(tc.name, tc.prefix, tc.sep)
		if n != tc.n || ok != tc.ok {
			t.Errorf("parseIndex(%q, %q, %q) = %d, %v; want %d, %v", tc.name, tc.prefix, tc.sep, n, ok, tc.n, tc.ok)
		}
	}
	if f, l, ok := parseTableName("wrenn_1_1024", "wrenn"); !ok || f != 1 || l != 1024 {
		t.Errorf("parseTableName(wrenn_1_1024) = %d, %d, %v", f, l, ok)
	}
	for _, name := range []string{"wrenn", "wrenn_1", "wrenn2_1_4", "wrenn_a_4", "wrenn_1_4_5"} {
		if _, _, ok := parseTableName(name, "wrenn"); ok {
			t.Errorf("parseTableName(%q) matched", name)
		}
	}
}

// The allocator hands out indices next-fit and reports exhaustion; this
// needs no kernel objects.
func TestReserve(t *testing.T) {
	m, err := New(Config{First: 7, Last: 9})
	if err != nil {
		t.Fatal(err)
	}
	var got []int
	for range 3 {
		s, err := m.reserve(false)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, s.Index)
	}
	if !slices.Equal(got, []int{7, 8, 9}) {
		t.Fatalf("reserved %v", got)
	}
	if _, err := m.reserve(false); !errors.Is(err, errdefs.ErrResourceExhausted) {
		t.Fatalf("reserve when full: %v", err)
	}
	m.unreserve(m.held[8].slot)
	s, err := m.reserve(true)
	if err != nil || s.Index != 8 || !s.Egress {
		t.Fatalf("reserve after freeing 8 = %+v, %v", s, err)
	}
	m.unreserve(m.held[7].slot)
	m.unreserve(m.held[9].slot)
	// Next-fit: the search goes on after 8, so 9 comes before 7.
	if s, _ := m.reserve(false); s.Index != 9 {
		t.Fatalf("next-fit reserved %d; want 9", s.Index)
	}
	if got := m.InUse(); !slices.Equal(got, []int{8, 9}) {
		t.Fatalf("InUse = %v", got)
	}
}
