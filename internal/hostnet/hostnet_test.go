package hostnet

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"wrenn.dev/wrenn/internal/errdefs"
)

func TestHostReachesGuest(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	cfg, _ := testConfig(t, 4)
	cfg.Uplinks = nil // the default route's, here; this slot has no egress
	m := newManager(t, cfg)
	s := acquire(t, m, false)
	if want, err := defaultRouteLinks(); err != nil || !slices.Equal(m.uplinks, want) {
		t.Errorf("uplinks = %v; want the default route's %v (%v)", m.uplinks, want, err)
	}

	if s.Index != cfg.First || s.HostIP != cfg.hostIP(cfg.First) || s.GuestIP != GuestIP ||
		s.NSName != cfg.Prefix+"-"+itoa(cfg.First) || s.NetNS != "/run/netns/"+s.NSName || s.Tap != "tap0" {
		t.Fatalf("slot = %+v", s)
	}
	if !isNetNS(s.NetNS) {
		t.Fatalf("%s is not a network namespace", s.NetNS)
	}
	if ipPath, err := exec.LookPath("ip"); err == nil {
		out, err := exec.Command(ipPath, "netns", "list").CombinedOutput()
		if err != nil || !strings.Contains(string(out), s.NSName) {
			t.Errorf("ip netns list: %v\n%s\nwant %s listed", err, out, s.NSName)
		}
	}
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); err != nil || strings.TrimSpace(string(b)) != "1" {
		t.Errorf("ip_forward = %q, %v; want 1", b, err)
	}

	g := attachGuest(t, s) // also checks the tap and its MAC
	srv := g.listen(t)
	// The host reaches the guest at the slot's host IP; the guest sees the
	// host's address on the veth.
	name, from := mustConnect(t, hostDial, netipAddrPort(s.HostIP, srv.Port()))
	if name != "guest" || from != cfg.vethHostAddr(s.Index) {
		t.Fatalf("greeting = %q from %s; want guest from %s", name, from, cfg.vethHostAddr(s.Index))
	}
	if got := m.InUse(); !slices.Equal(got, []int{s.Index}) {
		t.Fatalf("InUse = %v", got)
	}
	if err := m.Release(t.Context(), s); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if err := m.Release(t.Context(), s); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	if got := m.InUse(); len(got) != 0 {
		t.Fatalf("InUse after Release = %v", got)
	}
}

func TestErrorsClassified(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	cfg, _ := testConfig(t, 2)
	m := newManager(t, cfg)
	if _, err := m.Adopt(cfg.First); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Adopt of a missing slot: %v; want ErrNotFound", err)
	}
	s := acquire(t, m, false)
	if err := m.Release(t.Context(), s); err != nil {
		t.Fatal(err)
	}
	if err := m.SetEgress(t.Context(), s, true); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("SetEgress of a released slot: %v; want ErrNotFound", err)
	}
	// A stale Slot does not release the index's new holder.
	acquire(t, m, false)
	s3 := acquire(t, m, false)
	if s3.Index != s.Index {
		t.Fatalf("got index %d; want %d reused", s3.Index, s.Index)
	}
	if err := m.Release(t.Context(), s); err != nil {
		t.Fatal(err)
	}
	if got := m.InUse(); !slices.Equal(got, []int{cfg.First, cfg.First + 1}) || !isNetNS(s3.NetNS) {
		t.Fatalf("after releasing a stale slot: InUse = %v", got)
	}
}

// An index occupied by something else is skipped, then reclaimed.
func TestAcquireSkipsOccupied(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	cfg, _ := testConfig(t, 3)
	m := newManager(t, cfg)
	foreign := nsPath(nsName(cfg.Prefix, cfg.First))
	if err := createNamedNS(foreign); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteNamedNS(foreign) })
	s := acquire(t, m, false)
	if s.Index != cfg.First+1 {
		t.Fatalf("Acquire got %d; want %d, skipping the occupied %d", s.Index, cfg.First+1, cfg.First)
	}
	if !isNetNS(foreign) {
		t.Fatal("Acquire removed the namespace it skipped")
	}
	if n, err := m.ReclaimLeftovers(t.Context()); err != nil || n != 1 {
		t.Fatalf("ReclaimLeftovers = %d, %v; want 1", n, err)
	}
	if isNetNS(foreign) || !isNetNS(s.NetNS) {
		t.Fatal("ReclaimLeftovers did not remove just the foreign namespace")
	}
}

// Slots reach neither each other nor the host, even with egress on; the
// only way out is the uplink.
func TestIsolation(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	cfg, k := testConfig(t, 4)
	inet := fakeInternet(t, k)
	cfg.Uplinks = []string{inet.uplink}
	m := newManager(t, cfg)
	a, b := acquire(t, m, true), acquire(t, m, true)
	ga, gb := attachGuest(t, a), attachGuest(t, b)
	bSrv := gb.listen(t)
	aSrv := ga.listen(t)

	// Servers on addresses of the host: the host ends of both slots' veths
	// and the host's address on the uplink.
	hostSrvs := []netip.AddrPort{
		hostListen(t, cfg.vethHostAddr(a.Index)),
		hostListen(t, cfg.vethHostAddr(b.Index)),
		hostListen(t, inet.hostAddr),
	}
	// Each server answers the host, so a refusal below is the rules' doing.
	mustConnect(t, hostDial, netip.AddrPortFrom(b.HostIP, bSrv.Port()))
	mustConnect(t, hostDial, netip.AddrPortFrom(a.HostIP, aSrv.Port()))
	for _, srv := range hostSrvs {
		mustConnect(t, hostDial, srv)
	}
	// The guest's network works: it reaches the internet.
	mustConnect(t, ga.dial, inet.server)

	mustBeRefused(t, ga.dial, netip.AddrPortFrom(b.HostIP, bSrv.Port()))
	mustBeRefused(t, gb.dial, netip.AddrPortFrom(a.HostIP, aSrv.Port()))
	// Hairpin to its own host IP goes through the host too.
	mustBeRefused(t, ga.dial, netip.AddrPortFrom(a.HostIP, aSrv.Port()))
	for _, srv := range hostSrvs {
		mustBeRefused(t, ga.dial, srv)
	}
	// The slot's namespace itself serves nothing to the guest.
	nsSrv := nsListen(t, a) // on every address of the namespace
	nsVeth := netip.AddrPortFrom(cfg.vethNSAddr(a.Index), nsSrv.Port())
	mustConnect(t, hostDial, nsVeth)
	mustBeRefused(t, ga.dial, nsVeth)
	mustBeRefused(t, ga.dial, netip.AddrPortFrom(GatewayIP, nsSrv.Port()))
}

// Egress goes out of the uplink, masqueraded, only while it is on.
func TestEgress(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	cfg, k := testConfig(t, 4)
	inet := fakeInternet(t, k)
	cfg.Uplinks = []string{inet.uplink}
	m := newManager(t, cfg)
	s := acquire(t, m, false)
	g := attachGuest(t, s)

	mustBeRefused(t, g.dial, inet.server)

	if err := m.SetEgress(t.Context(), s, true); err != nil {
		t.Fatalf("SetEgress(true): %v", err)
	}
	if !s.Egress {
		t.Fatal("Slot.Egress is false after SetEgress(true)")
	}
	ctx, cancel := context.WithTimeout(t.Context(), shortWait)
	defer cancel()
	c, err := g.dial(ctx, inet.server)
	if err != nil {
		t.Fatalf("connect to the internet with egress on: %v", err)
	}
	defer c.Close()
	name, from := hello(t, c)
	if name != "internet" || from != inet.hostAddr {
		t.Fatalf("greeting %q from %s; want internet from %s (masqueraded)", name, from, inet.hostAddr)
	}

	if err := m.SetEgress(t.Context(), s, false); err != nil {
		t.Fatalf("SetEgress(false): %v", err)
	}
	// The established connection is cut too: its next packet is reset.
	c.SetDeadline(time.Now().Add(shortWait))
	if _, err := c.Write([]byte("ping\n")); err == nil {
		_, err = bufio.NewReader(c).ReadString('\n')
		if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("established connection after egress off: read err %v; want reset", err)
		}
	}
	mustBeRefused(t, g.dial, inet.server)

	// Acquired with egress on from the start.
	s2 := acquire(t, m, true)
	g2 := attachGuest(t, s2)
	if name, from := mustConnect(t, g2.dial, inet.server); name != "internet" || from != inet.hostAddr {
		t.Fatalf("greeting %q from %s; want internet from %s", name, from, inet.hostAddr)
	}
}

// 20 acquire/release cycles leave nothing behind.
func TestCyclesLeaveNothing(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	cfg, _ := testConfig(t, 3)
	m := newManager(t, cfg)
	before := countLeftovers(t, cfg)
	if before != (leftovers{Tables: 1}) {
		t.Fatalf("before: %+v", before)
	}
	seen := map[int]bool{}
	for i := range 20 {
		s := acquire(t, m, i%2 == 0)
		seen[s.Index] = true
		if got := countLeftovers(t, cfg); got.NetNS != 1 || got.Links != 1 || got.Routes != 1 {
			t.Fatalf("cycle %d, acquired: %+v", i, got)
		}
		if err := m.Release(t.Context(), s); err != nil {
			t.Fatalf("cycle %d: Release: %v", i, err)
		}
	}
	if after := countLeftovers(t, cfg); after != before {
		t.Fatalf("after 20 cycles: %+v; before: %+v", after, before)
	}
	if len(seen) != 3 {
		t.Errorf("indices used: %v; want all 3 of the range (next-fit)", seen)
	}
}

// A failure at any step of Acquire leaves nothing behind.
func TestAcquireFailureLeavesNothing(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	cfg, _ := testConfig(t, 2)
	m := newManager(t, cfg)
	before := countLeftovers(t, cfg)
	injected := errors.New("injected")
	for _, step := range []string{stepIsolate, stepNetNS, stepVeth, stepNamespace, stepHostEnd, ""} {
		ctx, cancel := context.WithCancel(t.Context())
		m.buildHook = func(s string) error {
			if step == "" && s == stepNamespace {
				cancel() // cancellation midway is a failure too
			}
			if s == step {
				return injected
			}
			return nil
		}
		_, err := m.Acquire(ctx, true)
		cancel()
		if step == "" && !errors.Is(err, context.Canceled) || step != "" && !errors.Is(err, injected) {
			t.Fatalf("Acquire failing at %q: %v", step, err)
		}
		if got := countLeftovers(t, cfg); got != before {
			t.Fatalf("failure at %q left %+v; before: %+v", step, got, before)
		}
		if got := m.InUse(); len(got) != 0 {
			t.Fatalf("failure at %q: InUse = %v", step, got)
		}
	}
	m.buildHook = nil
	acquire(t, m, false)
}

// A restarted agent adopts the slots whose VMs still run and reclaims the
// rest.
func TestAdoptAndReclaim(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	cfg, k := testConfig(t, 4)
	inet := fakeInternet(t, k)
	cfg.Uplinks = []string{inet.uplink}
	crashed, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	acquire(t, crashed, false)
	kept := acquire(t, crashed, true)
	acquire(t, crashed, true)
	g := attachGuest(t, kept)
	srv := g.listen(t)
	// The agent "crashes": crashed is dropped as it is.

	m := openManager(t, cfg)
	if _, err := m.Adopt(cfg.Last); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Adopt of a slot never built: %v; want ErrNotFound", err)
	}
	if _, err := m.Adopt(cfg.Last + 1); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("Adopt out of range: %v; want ErrInvalidArgument", err)
	}
	s, err := m.Adopt(kept.Index)
	if err != nil {
		t.Fatalf("Adopt: %v", err)
	}
	if *s != *kept {
		t.Fatalf("adopted %+v; want %+v", s, kept)
	}
	if _, err := m.Adopt(kept.Index); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("second Adopt: %v; want ErrAlreadyExists", err)
	}

	n, err := m.ReclaimLeftovers(t.Context())
	if err != nil || n != 2 {
		t.Fatalf("ReclaimLeftovers = %d, %v; want 2 slots", n, err)
	}
	if got := countLeftovers(t, cfg); got != (leftovers{NetNS: 1, Links: 1, Routes: 1, SetElements: 2, Tables: 1}) {
		t.Fatalf("after reclaim: %+v; want the adopted slot only", got)
	}
	if got := m.InUse(); !slices.Equal(got, []int{kept.Index}) {
		t.Fatalf("InUse = %v", got)
	}
	// The adopted slot works as before: reachable, with egress.
	mustConnect(t, hostDial, netip.AddrPortFrom(s.HostIP, srv.Port()))
	mustConnect(t, g.dial, inet.server)
	// And new slots can be had on the reclaimed indices.
	acquire(t, m, false)
	acquire(t, m, false)
	if n, err := m.ReclaimLeftovers(t.Context()); err != nil || n != 0 {
		t.Fatalf("ReclaimLeftovers with nothing left over = %d, %v", n, err)
	}
}

// The allocator reports exhaustion, and the freed index is reused.
func TestExhaustion(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	cfg, _ := testConfig(t, 2)
	m := newManager(t, cfg)
	a := acquire(t, m, false)
	acquire(t, m, false)
	if _, err := m.Acquire(t.Context(), false); !errors.Is(err, errdefs.ErrResourceExhausted) {
		t.Fatalf("third Acquire of 2: %v; want ErrResourceExhausted", err)
	}
	if got := countLeftovers(t, cfg); got.NetNS != 2 || got.Links != 2 {
		t.Fatalf("failed Acquire left %+v", got)
	}
	if err := m.Release(t.Context(), a); err != nil {
		t.Fatal(err)
	}
	if c := acquire(t, m, false); c.Index != a.Index {
		t.Fatalf("Acquire after Release got %d; want the freed %d", c.Index, a.Index)
	}
}

// Two managers with disjoint ranges and prefixes share the host: each
// works, neither's slots reach the other's, and closing one leaves the
// other intact. A third shares a prefix with the first, on another range.
func TestManagersCoexist(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	cfg1, k := testConfig(t, 2)
	cfg2, _ := testConfig(t, 2)
	cfg3, _ := testConfig(t, 2)
	cfg3.Prefix = cfg1.Prefix
	inet := fakeInternet(t, k)
	for _, c := range []*Config{&cfg1, &cfg2, &cfg3} {
		c.Uplinks = []string{inet.uplink}
	}
	m1, m2 := newManager(t, cfg1), newManager(t, cfg2)
	m3 := newManager(t, cfg3) // reclaims with m1's prefix: must leave m1's slots
	s1, s2 := acquire(t, m1, true), acquire(t, m2, true)
	if n, err := m3.ReclaimLeftovers(t.Context()); err != nil || n != 0 {
		t.Fatalf("ReclaimLeftovers of a manager sharing the prefix = %d, %v", n, err)
	}
	s3 := acquire(t, m3, true)
	g1, g2, g3 := attachGuest(t, s1), attachGuest(t, s2), attachGuest(t, s3)
	srv1, srv2, srv3 := g1.listen(t), g2.listen(t), g3.listen(t)

	for _, c := range []struct {
		g   *guest
		s   *Slot
		srv netip.AddrPort
	}{{g1, s1, srv1}, {g2, s2, srv2}, {g3, s3, srv3}} {
		mustConnect(t, hostDial, netip.AddrPortFrom(c.s.HostIP, c.srv.Port()))
		mustConnect(t, c.g.dial, inet.server)
	}
	mustBeRefused(t, g1.dial, netip.AddrPortFrom(s2.HostIP, srv2.Port()))
	mustBeRefused(t, g2.dial, netip.AddrPortFrom(s1.HostIP, srv1.Port()))
	mustBeRefused(t, g3.dial, netip.AddrPortFrom(s1.HostIP, srv1.Port()))

	if err := m1.Close(t.Context()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got := countLeftovers(t, cfg1); got != (leftovers{}) {
		t.Fatalf("after closing m1, its range has %+v", got)
	}
	if got := countLeftovers(t, cfg3); got != (leftovers{NetNS: 1, Links: 1, Routes: 1, SetElements: 2, Tables: 1}) {
		t.Fatalf("after closing m1, m3 (same prefix) has %+v; want its slot and table intact", got)
	}
	for _, c := range []struct {
		g   *guest
		s   *Slot
		srv netip.AddrPort
	}{{g2, s2, srv2}, {g3, s3, srv3}} {
		mustConnect(t, hostDial, netip.AddrPortFrom(c.s.HostIP, c.srv.Port()))
		mustConnect(t, c.g.dial, inet.server)
	}
	if _, err := m1.Acquire(t.Context(), false); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("Acquire after Close: %v; want ErrFailedPrecondition", err)
	}
}

// Concurrent Acquire calls get distinct slots.
func TestConcurrentAcquire(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	cfg, _ := testConfig(t, 8)
	m := newManager(t, cfg)
	slots := make([]*Slot, 8)
	var wg sync.WaitGroup
	errs := make([]error, len(slots))
	for i := range slots {
		wg.Go(func() { slots[i], errs[i] = m.Acquire(t.Context(), i%2 == 0) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, s := range slots {
		seen[s.Index] = true
	}
	if len(seen) != len(slots) {
		t.Fatalf("indices %v are not distinct", seen)
	}
	if got := countLeftovers(t, cfg); got != (leftovers{NetNS: 8, Links: 8, Routes: 8, SetElements: 12, Tables: 1}) {
		t.Fatalf("after 8 acquires: %+v", got)
	}
	for i := range slots {
		wg.Go(func() { errs[i] = m.Release(t.Context(), slots[i]) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if got := countLeftovers(t, cfg); got != (leftovers{Tables: 1}) {
		t.Fatalf("after releasing all: %+v", got)
	}
}

// The refusals above are the rules' doing: without the manager's table, the
// same connections succeed. (A check on the tests, not on the package.)
func TestRefusalsComeFromRules(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	cfg, _ := testConfig(t, 2)
	m := newManager(t, cfg)
	a, b := acquire(t, m, false), acquire(t, m, false)
	ga, gb := attachGuest(t, a), attachGuest(t, b)
	bSrv := netip.AddrPortFrom(b.HostIP, gb.listen(t).Port())
	hostSrv := hostListen(t, cfg.vethHostAddr(a.Index))
	mustBeRefused(t, ga.dial, bSrv)
	mustBeRefused(t, ga.dial, hostSrv)

	m.nftMu.Lock()
	err := m.flushHost(func(c *nftables.Conn) error { c.DelTable(m.table.t); return nil })
	m.built = false // the next change rebuilds it
	m.nftMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	mustConnect(t, ga.dial, bSrv)
	mustConnect(t, ga.dial, hostSrv)
}

// BenchmarkAcquireRelease measures the cost of a slot: one Acquire and one
// Release.
func BenchmarkAcquireRelease(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	k := int(testSeq.Add(1))
	m, err := New(Config{
		Prefix: "wb" + strconv.Itoa(k), First: k*32 + 1, Last: k*32 + 4,
		HostCIDR: testHostCIDR, VethCIDR: testVethCIDR,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close(context.Background())
	if _, err := m.ReclaimLeftovers(b.Context()); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		s, err := m.Acquire(b.Context(), true)
		if err != nil {
			b.Fatal(err)
		}
		if err := m.Release(b.Context(), s); err != nil {
			b.Fatal(err)
		}
	}
}

// A slot is usable the moment Acquire returns: the first connection does
// not lose its first packets to a veth end not yet up (and wait a
// retransmission, a second, as about one in three did before Acquire
// waited for it).
func TestFirstConnectionImmediate(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	cfg, _ := testConfig(t, 2)
	m := newManager(t, cfg)
	for range 10 {
		s := acquire(t, m, false)
		srv := netip.AddrPortFrom(cfg.vethNSAddr(s.Index), nsListen(t, s).Port())
		ctx, cancel := context.WithTimeout(t.Context(), 700*time.Millisecond)
		c, err := hostDial(ctx, srv)
		cancel()
		if err != nil {
			t.Fatalf("first connection to slot %d: %v", s.Index, err)
		}
		c.Close()
		if err := m.Release(t.Context(), s); err != nil {
			t.Fatal(err)
		}
	}
}

// Egress leaves by the interfaces of the default routes unless told
// otherwise; looked up here in a namespace of the test's own.
func TestDefaultRouteLinks(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	fd := newAnonNS(t)
	var got []string
	err := inNS(fd, func() error {
		if links, err := defaultRouteLinks(); err != nil || len(links) != 0 {
			return fmt.Errorf("without a default route: %v, %v", links, err)
		}
		for i, name := range []string{"up0", "up1"} {
			v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}
			if err := netlink.LinkAdd(v); err != nil {
				return err
			}
			p, err := netlink.LinkByName(name + "p")
			if err != nil {
				return err
			}
			if err := netlink.LinkSetUp(p); err != nil {
				return err
			}
			if err := addrUp(v, netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 255, byte(4*i + 1)}), 30)); err != nil {
				return err
			}
		}
		// A multipath default route over both (the connected routes are not
		// default ones).
		up0, _ := netlink.LinkByName("up0")
		up1, _ := netlink.LinkByName("up1")
		err := netlink.RouteAdd(&netlink.Route{Dst: prefixNet(netip.MustParsePrefix("0.0.0.0/0")), MultiPath: []*netlink.NexthopInfo{
			{LinkIndex: up0.Attrs().Index, Gw: net.IPv4(198, 18, 255, 2)},
			{LinkIndex: up1.Attrs().Index, Gw: net.IPv4(198, 18, 255, 6)},
		}})
		if err != nil {
			return err
		}
		var err2 error
		got, err2 = defaultRouteLinks()
		return err2
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{"up0", "up1"}) {
		t.Fatalf("defaultRouteLinks = %v; want [up0 up1]", got)
	}
}
