package hostnet

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The tests build real slots. They stay on this machine: the slots' egress
// goes only to a "fake internet" namespace each test creates (Config.Uplinks
// names its veth, never the host's real uplink), and every address a test
// sends to is one it assigned itself.
//
// A VM is stood in for by a "guest" namespace: the slot's tap is replaced
// by a veth named like it whose other end, eth0 in the guest namespace, has
// the guest's address and MAC. The slot's rules match the tap by name, so
// the guest namespace sees exactly what a VM on the tap would.

// Test-only address ranges, apart from the defaults so that the tests do
// not collide with an agent running on the same machine.
var (
	testHostCIDR = netip.MustParsePrefix("10.201.0.0/16")
	testVethCIDR = netip.MustParsePrefix("10.202.0.0/16")
)

// shortWait bounds every network operation a test expects to fail or to
// succeed at once; a rejected connection fails immediately.
const shortWait = 3 * time.Second

var testSeq atomic.Int32

// requireRoot skips the test unless it may create network namespaces.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("needs /dev/net/tun")
	}
}

// testConfig returns a configuration with a prefix and an index range (of n
// slots) that no other test in this run uses; k is the test's sequence
// number, for other per-test names.
func testConfig(t *testing.T, n int) (Config, int) {
	t.Helper()
	k := int(testSeq.Add(1))
	if n > 32 {
		t.Fatalf("testConfig: %d slots is more than 32", n)
	}
	return Config{
		Prefix:   "wt" + strconv.FormatInt(int64(k), 36),
		First:    k*32 + 1,
		Last:     k*32 + n,
		HostCIDR: testHostCIDR,
		VethCIDR: testVethCIDR,
		// No egress by the host's real uplink, whatever a test does; the
		// tests that need egress use a fake internet's.
		Uplinks: []string{"wtnouplink"},
		Logger:  testLogger(t),
	}, k
}

// newManager returns a manager for cfg, with anything a crashed earlier
// run left under its prefix reclaimed, that is closed (and checked to leave
// nothing behind) when the test ends.
func newManager(t *testing.T, cfg Config) *Manager {
	t.Helper()
	m := openManager(t, cfg)
	if _, err := m.ReclaimLeftovers(t.Context()); err != nil {
		t.Fatalf("ReclaimLeftovers: %v", err)
	}
	return m
}

// openManager is newManager without the reclaim, as an agent that adopts
// slots first starts.
func openManager(t *testing.T, cfg Config) *Manager {
	t.Helper()
	m, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Close(context.Background()); err != nil {
			t.Errorf("Close: %v", err)
		}
		if got := countLeftovers(t, m.cfg); got != (leftovers{}) {
			t.Errorf("after Close: %+v left behind", got)
		}
	})
	return m
}

func acquire(t *testing.T, m *Manager, egress bool) *Slot {
	t.Helper()
	s, err := m.Acquire(t.Context(), egress)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	return s
}

// leftovers counts what a configuration's slots (its prefix and range)
// leave in the kernel.
type leftovers struct {
	NetNS, Links, Routes, SetElements, Tables int
}

func countLeftovers(t *testing.T, cfg Config) leftovers {
	t.Helper()
	var l leftovers
	names, err := namedNSes()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if i, ok := parseIndex(n, cfg.Prefix, "-"); ok && cfg.inRange(i) {
			l.NetNS++
		}
	}
	links, err := linkNames()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range links {
		if i, ok := parseIndex(n, cfg.Prefix, "v"); ok && cfg.inRange(i) {
			l.Links++
		}
	}
	var routes []netlink.Route
	err = retryDump(func() (err error) {
		routes, err = netlink.RouteList(nil, netlink.FAMILY_V4)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		a, _ := netip.AddrFromSlice(r.Dst.IP)
		for n := cfg.First; n <= cfg.Last; n++ {
			if a.Unmap() == cfg.hostIP(n) {
				l.Routes++
			}
		}
	}
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		if first, last, ok := parseTableName(tb.Name, cfg.Prefix); !ok || first > cfg.Last || last < cfg.First {
			continue
		}
		l.Tables++
		for _, name := range []string{setSlots, setEgress} {
			set, err := c.GetSetByName(tb, name)
			if err != nil {
				t.Fatalf("look up set %s: %v", name, err)
			}
			elems, err := c.GetSetElements(set)
			if err != nil {
				t.Fatalf("read set %s: %v", name, err)
			}
			l.SetElements += len(elems)
		}
	}
	return l
}

// newAnonNS returns a new network namespace, held only by the returned fd
// (closed when the test ends).
func newAnonNS(t *testing.T) int {
	t.Helper()
	fd := -1
	err := onThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return err
		}
		var err error
		fd, err = unix.Open(threadNetNS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		return err
	})
	if err != nil {
		t.Fatalf("new network namespace: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// guest stands in for a slot's VM.
type guest struct {
	fd int // the guest's network namespace
}

// attachGuest replaces the slot's tap by a veth into a new guest namespace
// configured as the VM would be.
func attachGuest(t *testing.T, s *Slot) *guest {
	t.Helper()
	g := &guest{fd: newAnonNS(t)}
	slotFD, err := openNS(s.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(slotFD)
	tapMAC, _ := net.ParseMAC(TapMAC)
	guestMAC, _ := net.ParseMAC(s.GuestMAC)
	err = inNS(slotFD, func() error {
		tap, err := netlink.LinkByName(s.Tap)
		if err != nil {
			return err
		}
		if tap.Type() != "tuntap" {
			return fmt.Errorf("%s is a %s, not a tap", s.Tap, tap.Type())
		}
		if got := tap.Attrs().HardwareAddr.String(); got != TapMAC {
			return fmt.Errorf("tap MAC is %s, want %s", got, TapMAC)
		}
		if err := netlink.LinkDel(tap); err != nil {
			return err
		}
		v := &netlink.Veth{
			LinkAttrs:        netlink.LinkAttrs{Name: s.Tap, HardwareAddr: tapMAC},
			PeerName:         "eth0",
			PeerHardwareAddr: guestMAC,
			PeerNamespace:    netlink.NsFd(g.fd),
		}
		if err := netlink.LinkAdd(v); err != nil {
			return err
		}
		return addrUp(v, netip.PrefixFrom(GatewayIP, guestNet.Bits()))
	})
	if err != nil {
		t.Fatalf("replace tap of slot %d: %v", s.Index, err)
	}
	// The stand-in tap comes up before its peer, as the slot's veth does.
	up, stop, err := watchOperUp(slotFD, s.Tap)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	err = inNS(g.fd, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		eth, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := addrUp(eth, netip.PrefixFrom(s.GuestIP, guestNet.Bits())); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: GatewayIP.AsSlice()})
	})
	if err != nil {
		t.Fatalf("configure guest of slot %d: %v", s.Index, err)
	}
	select {
	case <-up:
	case <-time.After(linkUpTimeout):
		t.Fatalf("stand-in tap of slot %d did not come up", s.Index)
	}
	return g
}

// listen starts a server in the guest on the guest address.
func (g *guest) listen(t *testing.T) netip.AddrPort {
	t.Helper()
	var ln net.Listener
	err := inNS(g.fd, func() (err error) {
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(GuestIP, 0).String())
		return err
	})
	if err != nil {
		t.Fatalf("listen in guest: %v", err)
	}
	return serve(t, ln, "guest")
}

// dial connects from the guest.
func (g *guest) dial(ctx context.Context, to netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := inNS(g.fd, func() (err error) {
		c, err = (&net.Dialer{}).DialContext(ctx, "tcp4", to.String())
		return err
	})
	return c, err
}

// serve answers each connection on ln with a line "<name> <remote addr>",
// then echoes lines until the peer closes. It stops, closing its
// connections, when the test ends.
func serve(t *testing.T, ln net.Listener, name string) netip.AddrPort {
	t.Helper()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr())
				io.Copy(c, c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return netip.MustParseAddrPort(ln.Addr().String())
}

// hello reads the server's greeting on a fresh connection: its name and
// the client's address as the server saw it.
func hello(t *testing.T, c net.Conn) (name string, seenFrom netip.Addr) {
	t.Helper()
	c.SetDeadline(time.Now().Add(shortWait))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read greeting: %v", err)
	}
	name, from, _ := strings.Cut(strings.TrimSpace(line), " ")
	return name, netip.MustParseAddrPort(from).Addr()
}

// hostDial connects from the host (the root namespace).
func hostDial(ctx context.Context, to netip.AddrPort) (net.Conn, error) {
	return (&net.Dialer{}).DialContext(ctx, "tcp4", to.String())
}

// mustConnect connects with dial and returns the greeting.
func mustConnect(t *testing.T, dial func(context.Context, netip.AddrPort) (net.Conn, error), to netip.AddrPort) (string, netip.Addr) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), shortWait)
	defer cancel()
	c, err := dial(ctx, to)
	if err != nil {
		t.Fatalf("connect to %s: %v", to, err)
	}
	defer c.Close()
	return hello(t, c)
}

// mustBeRefused asserts that connecting with dial is refused at once: the
// rules reject a forbidden connection with a TCP reset.
func mustBeRefused(t *testing.T, dial func(context.Context, netip.AddrPort) (net.Conn, error), to netip.AddrPort) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), shortWait)
	defer cancel()
	c, err := dial(ctx, to)
	if err == nil {
		c.Close()
		t.Fatalf("connect to %s succeeded; want it refused", to)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("connect to %s: %v; want connection refused", to, err)
	}
}

// internet is a stand-in for the internet: a namespace behind a veth
// (the uplink) with a server.
type internet struct {
	uplink   string         // host end of the veth, to use as Config.Uplinks
	hostAddr netip.Addr     // the host's address on the uplink
	server   netip.AddrPort // a server "on the internet"
}

// fakeInternet makes the internet of test k: 198.18.k.0/30 (from the
// benchmarking range), the host at .1 and the server at .2.
func fakeInternet(t *testing.T, k int) *internet {
	t.Helper()
	fd := newAnonNS(t)
	in := &internet{
		uplink:   "wtup" + strconv.Itoa(k),
		hostAddr: netip.AddrFrom4([4]byte{198, 18, byte(k), 1}),
	}
	serverAddr := netip.AddrFrom4([4]byte{198, 18, byte(k), 2})
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: in.uplink},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(fd),
	}
	deleteLink(in.uplink) // left by a crashed run
	if err := netlink.LinkAdd(v); err != nil {
		t.Fatalf("create uplink: %v", err)
	}
	t.Cleanup(func() {
		if err := deleteLink(in.uplink); err != nil {
			t.Error(err)
		}
	})
	if err := addrUp(v, netip.PrefixFrom(in.hostAddr, 30)); err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	err := inNS(fd, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		eth, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := addrUp(eth, netip.PrefixFrom(serverAddr, 30)); err != nil {
			return err
		}
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(serverAddr, 0).String())
		return err
	})
	if err != nil {
		t.Fatalf("set up fake internet: %v", err)
	}
	in.server = serve(t, ln, "internet")
	return in
}

// hostListen starts a server on the host at addr.
func hostListen(t *testing.T, addr netip.Addr) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", netip.AddrPortFrom(addr, 0).String())
	if err != nil {
		t.Fatalf("listen on host: %v", err)
	}
	return serve(t, ln, "host")
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func itoa(n int) string { return strconv.Itoa(n) }

func netipAddrPort(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

// nsListen starts a server inside the slot's namespace, on all its
// addresses.
func nsListen(t *testing.T, s *Slot) netip.AddrPort {
	t.Helper()
	fd, err := openNS(s.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var ln net.Listener
	err = inNS(fd, func() (err error) {
		ln, err = net.Listen("tcp4", "0.0.0.0:0")
		return err
	})
	if err != nil {
		t.Fatalf("listen in slot namespace: %v", err)
	}
	return serve(t, ln, "slot")
}
