package agente2e

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/vishvananda/netlink"

	"wrenn.dev/wrenn/internal/agent/agentapi"
	pb "wrenn.dev/wrenn/internal/gen/hostagent/v1"
)

// hostTestAddr is put on a veth pair of the test's own in the root
// namespace: an ordinary host address that belongs to no slot, standing
// in for the host's real ones (which the tests never target). It lies in
// the agent's veth range, past every slot index it uses.
var hostTestAddr = netip.MustParseAddr("10.12.255.254")

// The test's veth pair (a dummy link would do, but not every kernel has
// the dummy driver; the agent needs veth anyway).
const hostTestLink, hostTestPeer = netPrefix + "host0", netPrefix + "host1"

// addHostAddress adds hostTestAddr on a link of its own, removed when the
// test ends.
func addHostAddress(t *testing.T) {
	t.Helper()
	if old, err := netlink.LinkByName(hostTestLink); err == nil {
		_ = netlink.LinkDel(old) // left by a run that crashed
	}
	link := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostTestLink}, PeerName: hostTestPeer}
	if err := netlink.LinkAdd(link); err != nil {
		t.Fatalf("add veth pair %s/%s: %v", hostTestLink, hostTestPeer, err)
	}
	t.Cleanup(func() {
		if err := netlink.LinkDel(link); err != nil {
			t.Errorf("remove veth pair %s: %v", hostTestLink, err)
		}
	})
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: hostTestAddr.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	if err := netlink.AddrAdd(link, addr); err != nil {
		t.Fatalf("add %s to %s: %v", hostTestAddr, hostTestLink, err)
	}
	for _, name := range []string{hostTestLink, hostTestPeer} {
		if err := netlink.LinkSetUp(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
			t.Fatalf("set %s up: %v", name, err)
		}
	}
}

// hostVethAddr is the root-namespace address of a slot's veth: the host
// as its slot's namespace routes to it.
func hostVethAddr(t *testing.T, slot int) string {
	t.Helper()
	ifc, err := net.InterfaceByName(vethName(slot))
	if err != nil {
		t.Fatalf("veth of slot %d: %v", slot, err)
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		t.Fatalf("addresses of %s: %v", ifc.Name, err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
			return n.IP.String()
		}
	}
	t.Fatalf("%s has no IPv4 address (%v)", ifc.Name, addrs)
	return ""
}

// TestIsolation checks, with the agent's API listening on every host
// address, that a guest reaches neither another sandbox nor the host (the
// agent's API on its slot's host veth, on another slot's, on an ordinary
// host address), while the same probe to the guest's own envd succeeds and
// the host reaches both sandboxes' envd and the API on those addresses.
func TestIsolation(t *testing.T) {
	dumpLogOnFailure(t)
	a := createSandbox(t, &pb.CreateSandboxRequest{Id: "iso-a"})
	b := createSandbox(t, &pb.CreateSandboxRequest{Id: "iso-b"})
	slotA, slotB := slotOf(t, a), slotOf(t, b)
	addHostAddress(t)

	restartAgent(t, "0.0.0.0:0")
	t.Cleanup(func() { restartAgent(t, "127.0.0.1:0") })
	apiPort := fmt.Sprint(agent.addr.Port)
	vethA, vethB := hostVethAddr(t, slotA), hostVethAddr(t, slotB)

	// What the host reaches: the API on each address the guests will try,
	// and both sandboxes' envd.
	for _, host := range []string{vethA, vethB, hostTestAddr.String()} {
		hc := agentapi.NewHTTPClient()
		c := agentapi.NewClient(hc, "http://"+net.JoinHostPort(host, apiPort), secret)
		_, err := c.GetHostInfo(testCtx(t, 30*time.Second), connect.NewRequest(&pb.GetHostInfoRequest{}))
		hc.CloseIdleConnections()
		if err != nil {
			t.Fatalf("GetHostInfo() from the host at %s:%s = %v; the agent must serve there for the guest probes to mean anything", host, apiPort, err)
		}
	}
	for _, sb := range []*pb.Sandbox{a, b} {
		if code, _ := envdGet(t, sb, "/health", ""); code != http.StatusNoContent {
			t.Errorf("GET %s/health from the host = %d, want 204", sb.GetEnvdUrl(), code)
		}
	}

	gw := strings.TrimSpace(shell(t, a.GetId(), `ip route | awk '$1 == "default" { print $3 }'`).Stdout())
	if _, err := netip.ParseAddr(gw); err != nil {
		t.Fatalf("the guest's default gateway = %q, not an address", gw)
	}

	tests := []struct {
		name      string
		from      *pb.Sandbox
		host      string
		port      string
		reachable bool
	}{
		{"own envd on loopback (control)", a, "127.0.0.1", "49983", true},
		{"own envd on loopback from B (control)", b, "127.0.0.1", "49983", true},
		{"sandbox B's envd at its host IP", a, b.GetHostIp(), "49983", false},
		{"sandbox A's envd at its host IP", b, a.GetHostIp(), "49983", false},
		{"agent API on the slot's host veth", a, vethA, apiPort, false},
		{"agent API on another slot's host veth", a, vethB, apiPort, false},
		{"agent API on a host address", a, hostTestAddr.String(), apiPort, false},
		{"agent API on a host address from B", b, hostTestAddr.String(), apiPort, false},
		{"agent API at the guest's gateway (in the slot namespace)", a, gw, apiPort, false},
	}
	for _, tt := range tests {
		// An HTTP request through busybox nc: an answer means the TCP
		// connection was made.
		script := fmt.Sprintf(`printf 'GET /health HTTP/1.0\r\nHost: x\r\n\r\n' | nc -w 3 %s %s`, tt.host, tt.port)
		start := time.Now()
		r := shell(t, tt.from.GetId(), script)
		took := time.Since(start)
		answered := strings.HasPrefix(r.Stdout(), "HTTP/1.")
		switch {
		case tt.reachable && (!answered || r.exit.GetExitCode() != 0):
			t.Errorf("%s: %s in %s = exit %d, stdout %q, stderr %q; want an HTTP answer",
				tt.name, r.call, tt.from.GetId(), r.exit.GetExitCode(), r.Stdout(), r.Stderr())
		case !tt.reachable && (answered || r.exit.GetExitCode() == 0 || !strings.Contains(r.Stderr(), "can't connect")):
			t.Errorf("%s: %s in %s = exit %d, stdout %q, stderr %q; want the connection refused",
				tt.name, r.call, tt.from.GetId(), r.exit.GetExitCode(), r.Stdout(), r.Stderr())
		default:
			t.Logf("%s: %s:%s from %s -> exit %d in %s %s", tt.name, tt.host, tt.port, tt.from.GetId(),
				r.exit.GetExitCode(), took.Round(time.Millisecond), strings.TrimSpace(r.Stderr()))
		}
	}

	// The host still reaches both after the probes.
	for _, sb := range []*pb.Sandbox{a, b} {
		if code, _ := envdGet(t, sb, "/health", ""); code != http.StatusNoContent {
			t.Errorf("GET %s/health from the host after the probes = %d, want 204", sb.GetEnvdUrl(), code)
		}
	}
}
