// Package portfwd makes servers that listen only on the guest's loopback
// reachable from outside the sandbox.
//
// A user's dev server often binds 127.0.0.1 or ::1, which the sandbox's
// port routing (traffic arriving on the guest's external interface) cannot
// reach. The Forwarder scans /proc/net/tcp and /proc/net/tcp6 for LISTEN
// sockets bound to exactly 127.0.0.1 or ::1 (IPv4-mapped ::ffff:127.0.0.1
// counts as 127.0.0.1) and, for each such port, listens on every external
// address at the same port and proxies each connection to the loopback
// listener, half-closes included. Sockets bound to a wildcard address are
// already reachable and are left alone, as are loopback addresses other
// than those two. When the loopback listener goes away, the external
// listeners are closed; connections already proxied run until either side
// ends them, or until Stop.
//
// It is E2B envd's socat-based port forwarding, done in process.
package portfwd

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"wrenn.dev/wrenn/internal/errdefs"
)

// Defaults.
const (
	DefaultInterval = time.Second
	dialTimeout     = 5 * time.Second
	acceptBackoff   = 50 * time.Millisecond
)

// Log keys.
const (
	logKeyPort   = "port"
	logKeyAddr   = "addr"
	logKeyTarget = "target"
	logKeyErr    = "err"
)

// The files listing TCP sockets of the current network namespace.
const (
	procNetTCP  = "/proc/net/tcp"
	procNetTCP6 = "/proc/net/tcp6"
)

// tcpListen is the socket state TCP_LISTEN in /proc/net/tcp.
const tcpListen = 0x0A

// Config configures a Forwarder. The zero value is usable.
type Config struct {
	// Interval is the scan period of Start's loop; default 1 s.
	Interval time.Duration
	// External lists the addresses to expose loopback listeners on; by
	// default every non-loopback IPv4 and IPv6 address of the interfaces
	// that are up, except IPv6 link-local ones (which would need a zone).
	// 127.0.0.1 and ::1 in the list are ignored.
	External func() ([]net.IP, error)
	// Filter, when set, limits forwarding to the ports it accepts.
	Filter func(port int) bool
	// Logger receives the forwarder's logs; default discards.
	Logger *slog.Logger
}

// Forwarder re-exposes loopback-only TCP listeners. Create it with New.
// Its methods are safe for concurrent use.
type Forwarder struct {
	cfg Config
	log *slog.Logger

	scanMu sync.Mutex // serialises Scan with itself and with teardown

	mu       sync.Mutex
	state    state
	cancel   context.CancelFunc // ends Start's loop
	loopDone chan struct{}      // closed when Start's loop has returned
	stopCtx  context.Context    // cancelled at teardown: ends dials in flight
	stopAll  context.CancelFunc
	ports    map[int]*forward
	conns    map[net.Conn]struct{} // both ends of every proxied connection

	wg sync.WaitGroup // accept loops and connection handlers
}

type state int

const (
	stateIdle state = iota
	stateRunning
	stateStopped
)

// forward is one forwarded port.
type forward struct {
	target    string                  // loopback address to dial
	listeners map[string]net.Listener // by external IP
	failed    map[string]bool         // external IPs whose listen failed (logged once)
}

// New returns a Forwarder; nothing happens until Scan or Start.
func New(cfg Config) *Forwarder {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.External == nil {
		cfg.External = ExternalAddrs
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	stopCtx, stopAll := context.WithCancel(context.Background())
	return &Forwarder{
		cfg:     cfg,
		log:     cfg.Logger,
		stopCtx: stopCtx,
		stopAll: stopAll,
		ports:   map[int]*forward{},
		conns:   map[net.Conn]struct{}{},
	}
}

// Start scans now and then every Interval until ctx ends or Stop is
// called; either tears forwarding down. Calling Start again while it runs
// does nothing; after Stop it returns errdefs.ErrFailedPrecondition.
func (f *Forwarder) Start(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch f.state {
	case stateRunning:
		return nil
	case stateStopped:
		return errdefs.FailedPrecondition("portfwd: forwarder is stopped")
	}
	f.state = stateRunning
	loopCtx, cancel := context.WithCancel(ctx)
	f.cancel = cancel
	f.loopDone = make(chan struct{})
	go f.loop(loopCtx, f.loopDone)
	return nil
}

func (f *Forwarder) loop(ctx context.Context, done chan struct{}) {
	defer close(done)
	defer f.teardown()
	t := time.NewTicker(f.cfg.Interval)
	defer t.Stop()
	var lastErr string
	for {
		if err := f.Scan(); err != nil {
			if errors.Is(err, errdefs.ErrFailedPrecondition) {
				return // stopped
			}
			if msg := err.Error(); msg != lastErr { // do not repeat every second
				f.log.Warn("portfwd: scan failed", logKeyErr, err)
				lastErr = msg
			}
		} else {
			lastErr = ""
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Stop ends scanning, closes every listener and every proxied connection,
// and waits for the forwarder's goroutines. It is idempotent, and works
// whether or not Start was called.
func (f *Forwarder) Stop() {
	f.mu.Lock()
	f.state = stateStopped // no Start or Scan from now on
	cancel, done := f.cancel, f.loopDone
	f.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
	f.teardown()
	f.wg.Wait()
}

// teardown marks the forwarder stopped and closes everything it holds.
func (f *Forwarder) teardown() {
	f.scanMu.Lock()
	defer f.scanMu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state = stateStopped
	f.stopAll()
	for port, fw := range f.ports {
		fw.closeAll()
		delete(f.ports, port)
	}
	for c := range f.conns {
		_ = c.Close()
	}
}

// Forwarded returns the ports that currently have at least one external
// listener, in ascending order.
func (f *Forwarder) Forwarded() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []int
	for port, fw := range f.ports {
		if len(fw.listeners) > 0 {
			out = append(out, port)
		}
	}
	slices.Sort(out)
	return out
}

// Scan reconciles forwarding with the sockets listening now: it starts
// forwarding new loopback-only listeners, stops forwarding those that went
// away, and follows changes of the external addresses. Start calls it
// periodically; tests call it directly. After Stop it returns
// errdefs.ErrFailedPrecondition.
func (f *Forwarder) Scan() error {
	f.scanMu.Lock()
	defer f.scanMu.Unlock()
	if f.stopped() {
		return errdefs.FailedPrecondition("portfwd: forwarder is stopped")
	}

	var socks []socket
	for _, path := range []string{procNetTCP, procNetTCP6} {
		s, err := readListeners(path)
		if errors.Is(err, os.ErrNotExist) && path == procNetTCP6 {
			continue // IPv6 disabled
		}
		if err != nil {
			return err
		}
		socks = append(socks, s...)
	}
	want := loopbackOnly(socks)
	if f.cfg.Filter != nil {
		for port := range want {
			if !f.cfg.Filter(port) {
				delete(want, port)
			}
		}
	}

	ext, extErr := f.cfg.External()
	if extErr != nil {
		extErr = fmt.Errorf("portfwd: list external addresses: %w", extErr)
	}
	extIPs := map[string]net.IP{}
	for _, ip := range ext {
		if ip == nil || ip.IsUnspecified() || ip.Equal(loopback4) || ip.Equal(net.IPv6loopback) {
			continue
		}
		if ip.To4() == nil && ip.IsLinkLocalUnicast() {
			continue // needs a zone to bind
		}
		extIPs[ip.String()] = ip
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	for port, fw := range f.ports {
		if _, ok := want[port]; !ok {
			f.log.Info("portfwd: loopback listener gone; forwarding stopped", logKeyPort, port)
			fw.closeAll()
			delete(f.ports, port)
		}
	}
	if extErr != nil {
		return extErr // keep the current listeners, add none
	}
	for port, target := range want {
		fw := f.ports[port]
		if fw == nil {
			fw = &forward{target: target, listeners: map[string]net.Listener{}, failed: map[string]bool{}}
			f.ports[port] = fw
		}
		for key, ln := range fw.listeners {
			if _, ok := extIPs[key]; !ok {
				_ = ln.Close()
				delete(fw.listeners, key)
				f.log.Info("portfwd: external address gone", logKeyPort, port, logKeyAddr, key)
			}
		}
		for key, ip := range extIPs {
			if _, ok := fw.listeners[key]; ok {
				continue
			}
			ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: ip, Port: port})
			if err != nil {
				if !fw.failed[key] {
					f.log.Warn("portfwd: cannot listen on external address; will retry", logKeyPort, port, logKeyAddr, key, logKeyErr, err)
					fw.failed[key] = true
				}
				continue
			}
			delete(fw.failed, key)
			fw.listeners[key] = ln
			f.log.Info("portfwd: forwarding", logKeyAddr, ln.Addr().String(), logKeyTarget, fw.target)
			f.wg.Add(1)
			go f.accept(ln, fw.target)
		}
	}
	return nil
}

func (f *Forwarder) stopped() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state == stateStopped
}

func (fw *forward) closeAll() {
	for key, ln := range fw.listeners {
		_ = ln.Close()
		delete(fw.listeners, key)
	}
}

// accept serves one external listener until it is closed.
func (f *Forwarder) accept(ln *net.TCPListener, target string) {
	defer f.wg.Done()
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of fds or similar: wait a little, unless stopping.
			f.log.Warn("portfwd: accept failed", logKeyAddr, ln.Addr().String(), logKeyErr, err)
			t := time.NewTimer(acceptBackoff)
			select {
			case <-f.stopCtx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		f.wg.Add(1)
		go f.proxy(c, target)
	}
}

// track registers c for closing at Stop; it reports false (and closes c)
// when the forwarder is already stopped.
func (f *Forwarder) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.state == stateStopped {
		_ = c.Close()
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *Forwarder) untrack(c net.Conn) {
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
	_ = c.Close()
}

// proxy connects an accepted connection to the loopback target and copies
// both ways; each direction's end of stream becomes a half-close of the
// other side.
func (f *Forwarder) proxy(client *net.TCPConn, target string) {
	defer f.wg.Done()
	if !f.track(client) {
		return
	}
	defer f.untrack(client)
	d := net.Dialer{Timeout: dialTimeout}
	uc, err := d.DialContext(f.stopCtx, "tcp", target)
	if err != nil {
		f.log.Debug("portfwd: dial loopback target", logKeyTarget, target, logKeyErr, err)
		return
	}
	upstream := uc.(*net.TCPConn)
	if !f.track(upstream) {
		return
	}
	defer f.untrack(upstream)

	done := make(chan struct{})
	go func() {
		defer close(done)
		pipe(upstream, client)
	}()
	pipe(client, upstream)
	<-done
}

// pipe copies src to dst. At src's end of stream it half-closes dst; on an
// error it closes both, so the other direction ends too.
func pipe(dst, src *net.TCPConn) {
	if _, err := io.Copy(dst, src); err != nil {
		_ = src.Close()
		_ = dst.Close()
		return
	}
	_ = dst.CloseWrite()
	_ = src.CloseRead()
}

var loopback4 = net.IPv4(127, 0, 0, 1)

// socket is a listening TCP socket.
type socket struct {
	ip   net.IP
	port int
}

// loopbackOnly picks the ports listened on at exactly 127.0.0.1 or ::1 and
// returns, for each, the address to dial (127.0.0.1 when both are bound).
func loopbackOnly(socks []socket) map[int]string {
	out := map[int]string{}
	for _, s := range socks {
		switch {
		case s.ip.Equal(loopback4): // also ::ffff:127.0.0.1
			out[s.port] = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
		case s.ip.Equal(net.IPv6loopback):
			if _, ok := out[s.port]; !ok {
				out[s.port] = net.JoinHostPort("::1", strconv.Itoa(s.port))
			}
		}
	}
	return out
}

func readListeners(path string) ([]socket, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("portfwd: %w", err)
	}
	defer fh.Close()
	socks, err := parseListeners(fh)
	if err != nil {
		return nil, fmt.Errorf("portfwd: parse %s: %w", path, err)
	}
	return socks, nil
}

// parseListeners reads /proc/net/tcp or /proc/net/tcp6 text and returns
// the sockets in LISTEN state. Addresses are hex words in the kernel's
// byte order: one 32-bit word for IPv4, four for IPv6.
func parseListeners(r io.Reader) ([]socket, error) {
	var out []socket
	sc := bufio.NewScanner(r)
	first := true
	for sc.Scan() {
		if first { // header
			first = false
			continue
		}
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 {
			continue
		}
		st, err := strconv.ParseUint(fields[3], 16, 8)
		if err != nil {
			return nil, fmt.Errorf("state %q: %w", fields[3], err)
		}
		if st != tcpListen {
			continue
		}
		ip, port, err := parseAddr(fields[1])
		if err != nil {
			return nil, err
		}
		out = append(out, socket{ip: ip, port: port})
	}
	return out, sc.Err()
}

// parseAddr decodes "0100007F:1F90" into 127.0.0.1 and 8080.
func parseAddr(s string) (net.IP, int, error) {
	hexIP, hexPort, ok := strings.Cut(s, ":")
	if !ok {
		return nil, 0, fmt.Errorf("address %q: no port", s)
	}
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		return nil, 0, fmt.Errorf("address %q: port: %w", s, err)
	}
	raw, err := hex.DecodeString(hexIP)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return nil, 0, fmt.Errorf("address %q: bad IP", s)
	}
	// Each 32-bit word was printed as a number in host byte order; turn
	// it back into the bytes as they are in memory (network order).
	ip := make(net.IP, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(ip[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	return ip, int(port), nil
}

// ExternalAddrs is the default Config.External: every address of every up,
// non-loopback interface, without loopback and IPv6 link-local addresses.
func ExternalAddrs() ([]net.IP, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	var out []net.IP
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			return nil, fmt.Errorf("addresses of %s: %w", ifc.Name, err)
		}
		for _, a := range addrs {
			n, ok := a.(*net.IPNet)
			if !ok || n.IP.IsLoopback() || (n.IP.To4() == nil && n.IP.IsLinkLocalUnicast()) {
				continue
			}
			out = append(out, n.IP)
		}
	}
	return out, nil
}
