package portfwd

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/testlog"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// checkLeaks verifies, after every other cleanup of the test, that no
// goroutine is left.
func checkLeaks(t *testing.T) { t.Cleanup(func() { goleak.VerifyNone(t) }) }

var external = net.IPv4(127, 0, 0, 2)

func testLogger(t *testing.T) *slog.Logger { return testlog.New(t) }

// echoServer echoes each connection until the client half-closes, then
// closes. It stops when the test ends.
type echoServer struct {
	ln   net.Listener
	port int
	wg   sync.WaitGroup
	mu   sync.Mutex
	open map[net.Conn]struct{}
}

func newEchoServer(t *testing.T, network, addr string) *echoServer {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("listen %s %s: %v", network, addr, err)
	}
	s := &echoServer{ln: ln, port: ln.Addr().(*net.TCPAddr).Port, open: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.open[c] = struct{}{}
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				_, _ = io.Copy(c, c)
				_ = c.Close()
				s.mu.Lock()
				delete(s.open, c)
				s.mu.Unlock()
			}()
		}
	}()
	t.Cleanup(s.close)
	return s
}

func (s *echoServer) close() {
	_ = s.ln.Close()
	s.mu.Lock()
	for c := range s.open {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// portSet is the set of ports a test lets the forwarder touch, so that
// listeners of other processes on this machine are left alone.
type portSet struct {
	mu    sync.Mutex
	ports []int
}

func (s *portSet) add(p int) {
	s.mu.Lock()
	s.ports = append(s.ports, p)
	s.mu.Unlock()
}

func (s *portSet) has(p int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Contains(s.ports, p)
}

// newForwarder exposes the given ports on 127.0.0.2.
func newForwarder(t *testing.T, ports *portSet) *Forwarder {
	return New(Config{
		Interval: 10 * time.Millisecond,
		External: func() ([]net.IP, error) { return []net.IP{external}, nil },
		Filter:   ports.has,
		Logger:   testLogger(t),
	})
}

func setOf(ports ...int) *portSet { return &portSet{ports: ports} }

// roundTrip sends msg through addr, half-closes, and reads the echo to EOF:
// it only finishes if the proxy forwards the half-close both ways.
func roundTrip(addr, msg string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

func extAddr(port int) string { return net.JoinHostPort(external.String(), strconv.Itoa(port)) }

func TestScanForwardsLoopbackOnly(t *testing.T) {
	checkLeaks(t)
	echo := newEchoServer(t, "tcp4", "127.0.0.1:0")
	wild := newEchoServer(t, "tcp4", "0.0.0.0:0")
	other := newEchoServer(t, "tcp4", "127.0.0.3:0")
	f := newForwarder(t, setOf(echo.port, wild.port, other.port))
	defer f.Stop()

	if err := f.Scan(); err != nil {
		t.Fatalf("Scan() error = %v", err)
	}
	if got := f.Forwarded(); !slices.Equal(got, []int{echo.port}) {
		t.Errorf("Forwarded() = %v, want [%d] (not the 0.0.0.0 port %d nor the 127.0.0.3 port %d)", got, echo.port, wild.port, other.port)
	}
	msg := strings.Repeat("hello through the forwarder ", 10000)
	if got, err := roundTrip(extAddr(echo.port), msg); err != nil || got != msg {
		t.Fatalf("roundTrip(%s) = %d bytes, %v; want the %d bytes sent", extAddr(echo.port), len(got), err, len(msg))
	}
	// Scanning again changes nothing and keeps working.
	if err := f.Scan(); err != nil {
		t.Fatalf("second Scan() error = %v", err)
	}
	if got, err := roundTrip(extAddr(echo.port), "again"); err != nil || got != "again" {
		t.Fatalf("roundTrip after second Scan = %q, %v", got, err)
	}

	echo.close()
	if err := f.Scan(); err != nil {
		t.Fatalf("Scan() after the server closed: %v", err)
	}
	if got := f.Forwarded(); len(got) != 0 {
		t.Errorf("Forwarded() after the loopback listener closed = %v, want none", got)
	}
	if c, err := net.DialTimeout("tcp", extAddr(echo.port), 5*time.Second); err == nil {
		c.Close()
		t.Errorf("dial %s after the loopback listener closed: connected, want refused", extAddr(echo.port))
	}

	f.Stop()
	f.Stop() // idempotent
	if err := f.Scan(); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Scan() after Stop error = %v, want ErrFailedPrecondition", err)
	}
	if err := f.Start(context.Background()); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Start() after Stop error = %v, want ErrFailedPrecondition", err)
	}
}

func TestScanIPv6Loopback(t *testing.T) {
	checkLeaks(t)
	echo := newEchoServer(t, "tcp6", "[::1]:0")
	f := newForwarder(t, setOf(echo.port))
	defer f.Stop()
	if err := f.Scan(); err != nil {
		t.Fatalf("Scan() error = %v", err)
	}
	if got, err := roundTrip(extAddr(echo.port), "v6"); err != nil || got != "v6" {
		t.Fatalf("roundTrip(%s) to a [::1] listener = %q, %v; want %q", extAddr(echo.port), got, err, "v6")
	}
}

func TestStopClosesInFlight(t *testing.T) {
	checkLeaks(t)
	echo := newEchoServer(t, "tcp4", "127.0.0.1:0")
	f := newForwarder(t, setOf(echo.port))
	if err := f.Scan(); err != nil {
		t.Fatalf("Scan() error = %v", err)
	}
	c, err := net.DialTimeout("tcp", extAddr(echo.port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	// One echo proves the proxied connection is established end to end.
	buf := make([]byte, 4)
	if _, err := io.WriteString(c, "ping"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo over the proxy = %q, %v", buf, err)
	}
	f.Stop()
	if n, err := c.Read(buf); err == nil {
		t.Errorf("Read after Stop = %d bytes, nil error; want the connection closed", n)
	} else if errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "timeout") {
		t.Errorf("Read after Stop timed out: Stop did not close the proxied connection")
	}
}

func TestStartLoop(t *testing.T) {
	checkLeaks(t)
	echo := newEchoServer(t, "tcp4", "127.0.0.1:0")
	ports := setOf(echo.port)
	f := newForwarder(t, ports)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := range 2 {
		if err := f.Start(ctx); err != nil {
			t.Fatalf("Start() #%d error = %v", i+1, err)
		}
	}
	waitFor(t, "the loop forwards the port", func() bool { return slices.Contains(f.Forwarded(), echo.port) })
	if got, err := roundTrip(extAddr(echo.port), "loop"); err != nil || got != "loop" {
		t.Fatalf("roundTrip = %q, %v", got, err)
	}
	echo.close()
	waitFor(t, "the loop drops the port", func() bool { return len(f.Forwarded()) == 0 })

	// Ending the context tears forwarding down like Stop.
	echo2 := newEchoServer(t, "tcp4", "127.0.0.1:0")
	ports.add(echo2.port)
	waitFor(t, "the loop forwards the new port", func() bool { return slices.Contains(f.Forwarded(), echo2.port) })
	cancel()
	waitFor(t, "context end closes listeners", func() bool { return len(f.Forwarded()) == 0 })
	f.Stop()
}

func TestExternalAddressChanges(t *testing.T) {
	checkLeaks(t)
	echo := newEchoServer(t, "tcp4", "127.0.0.1:0")
	var (
		mu   sync.Mutex
		ips  = []net.IP{net.IPv4(127, 0, 0, 2)}
		fail error
	)
	f := New(Config{
		External: func() ([]net.IP, error) {
			mu.Lock()
			defer mu.Unlock()
			return ips, fail
		},
		Filter: func(p int) bool { return p == echo.port },
		Logger: testLogger(t),
	})
	defer f.Stop()
	set := func(newIPs []net.IP, err error) {
		mu.Lock()
		ips, fail = newIPs, err
		mu.Unlock()
	}
	addr := func(ip string) string { return net.JoinHostPort(ip, strconv.Itoa(echo.port)) }

	steps := []struct {
		name      string
		ips       []net.IP
		err       error
		reachable map[string]bool
	}{
		{"one address", []net.IP{net.IPv4(127, 0, 0, 2)}, nil, map[string]bool{"127.0.0.2": true, "127.0.0.4": false}},
		{"address added", []net.IP{net.IPv4(127, 0, 0, 2), net.IPv4(127, 0, 0, 4), net.IPv4(127, 0, 0, 1)}, nil, map[string]bool{"127.0.0.2": true, "127.0.0.4": true}},
		{"address removed", []net.IP{net.IPv4(127, 0, 0, 4)}, nil, map[string]bool{"127.0.0.2": false, "127.0.0.4": true}},
		{"listing fails: keep what is there", nil, errors.New("netlink down"), map[string]bool{"127.0.0.4": true}},
	}
	for _, st := range steps {
		set(st.ips, st.err)
		err := f.Scan()
		if (err != nil) != (st.err != nil) {
			t.Fatalf("%s: Scan() error = %v, want error %v", st.name, err, st.err != nil)
		}
		for ip, want := range st.reachable {
			got, err := roundTrip(addr(ip), "x")
			if ok := err == nil && got == "x"; ok != want {
				t.Errorf("%s: roundTrip(%s) = %q, %v; want reachable %v", st.name, addr(ip), got, err, want)
			}
		}
	}
}

func TestParseListeners(t *testing.T) {
	const tcp = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 00000000:C2CF 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 100 0 0 10 0
   2: 0200007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 100 0 0 10 0
   3: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1004 1 0000000000000000 20 4 30 10 -1
`
	const tcp6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000000000000:0BB9 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2002 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:0BBA 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2003 1 0000000000000000 100 0 0 10 0
`
	tests := []struct {
		name    string
		text    string
		want    []socket
		wantErr bool
	}{
		{"tcp", tcp, []socket{
			{net.IPv4(127, 0, 0, 1).To4(), 8080},
			{net.IPv4zero.To4(), 49871},
			{net.IPv4(127, 0, 0, 2).To4(), 80},
		}, false},
		{"tcp6", tcp6, []socket{
			{net.IPv6loopback, 3000},
			{net.IPv6unspecified, 3001},
			{net.ParseIP("::ffff:127.0.0.1"), 3002},
		}, false},
		{"bad address", "header\n 0: XYZ:0050 00000000:0000 0A\n", nil, true},
		{"bad state", "header\n 0: 0100007F:0050 00000000:0000 ZZ\n", nil, true},
	}
	for _, tt := range tests {
		got, err := parseListeners(strings.NewReader(tt.text))
		if (err != nil) != tt.wantErr {
			t.Errorf("%s: parseListeners() error = %v, want error %v", tt.name, err, tt.wantErr)
			continue
		}
		if !slices.EqualFunc(got, tt.want, func(a, b socket) bool { return a.ip.Equal(b.ip) && a.port == b.port }) {
			t.Errorf("%s: parseListeners() = %v, want %v", tt.name, got, tt.want)
		}
	}

	socks, _ := parseListeners(strings.NewReader(tcp))
	socks6, _ := parseListeners(strings.NewReader(tcp6))
	got := loopbackOnly(append(socks, socks6...))
	want := map[int]string{8080: "127.0.0.1:8080", 3000: "[::1]:3000", 3002: "127.0.0.1:3002"}
	if len(got) != len(want) {
		t.Errorf("loopbackOnly() = %v, want %v", got, want)
	}
	for p, target := range want {
		if got[p] != target {
			t.Errorf("loopbackOnly()[%d] = %q, want %q", p, got[p], target)
		}
	}
}

func TestExternalAddrs(t *testing.T) {
	ips, err := ExternalAddrs()
	if err != nil {
		t.Fatalf("ExternalAddrs() error = %v", err)
	}
	for _, ip := range ips {
		if ip.IsLoopback() || (ip.To4() == nil && ip.IsLinkLocalUnicast()) {
			t.Errorf("ExternalAddrs() = %v, includes %v", ips, ip)
		}
	}
}

// waitFor polls cond until it holds or 10 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
