// Package agenttest has stand-ins for the host agent's boundaries, so that
// the sandbox manager and its API can be tested on any Linux machine,
// without KVM, VM images or root networking.
//
// They are boundary fakes, not models of a VM: what runs "in" a sandbox is
// a real envd process on the host, in host mode (-isnotfc -no-cgroups
// -no-port-forward), so exec, files and terminals really work, against the
// host's own filesystem and users. Processes run as the test's user.
//
//   - Host is what the kernel holds in reality and so survives an agent
//     restart: the network slots, each with a loopback host IP
//     (127.a.b.c) and a forwarder from HostIP:EnvdPort to the port its
//     envd listens on, standing in for the slot's DNAT to the guest.
//   - Network is the agent's view of Host's slots (what *hostnet.Manager is
//     over the real kernel): Acquire, Adopt, Release, ReclaimLeftovers.
//   - Driver is a vmm.Driver whose "VM" is the envd process of a slot:
//     Boot starts it (in its own session, outliving the agent, as VMs do),
//     Pause and Resume are SIGSTOP and SIGCONT, Shutdown is SIGTERM then
//     SIGKILL, Reattach adopts a running envd through a pidfd. Snapshots
//     are fake and off by default (Driver.Snapshots): a restore starts a
//     fresh envd, so only the agent's bookkeeping can be tested with them.
//   - Images is an ImageSource of two templates whose kernel is a dummy
//     file and whose root disk is a sparse file (cloned, never booted).
package agenttest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"

	"wrenn.dev/wrenn/internal/agent"
	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/hostnet"
)

// BuildEnvd returns an envd binary: $WRENN_ENVD_BIN when set, else one
// built from this module into dir.
func BuildEnvd(dir string) (string, error) {
	if p := os.Getenv("WRENN_ENVD_BIN"); p != "" {
		return p, nil
	}
	out := filepath.Join(dir, "envd")
	cmd := exec.Command("go", "build", "-o", out, "wrenn.dev/wrenn/cmd/envd")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/envd: %v\n%s", err, b)
	}
	return out, nil
}

// Host is a fake host's kernel state: network slots and their forwarders.
type Host struct {
	// EnvdPort is the port the agent reaches envd at on a slot's host IP.
	EnvdPort int
	// MaxSlots bounds the slot indices (1..MaxSlots).
	MaxSlots int

	base [4]byte // host IPs are base + index

	mu    sync.Mutex
	slots map[int]*hostSlot
}

type hostSlot struct {
	index     int
	hostIP    netip.Addr
	guestPort int
	fwd       *forwarder
}

// NewHost returns a host with maxSlots slots. The agent reaches envd on a
// free port it picks; host IPs are taken from a 127.x.y.0/16 range of its
// choosing, so parallel test binaries rarely meet (and skip each other's
// addresses when they do).
func NewHost(maxSlots int) (*Host, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	second := byte(100 + os.Getpid()%100)
	return &Host{EnvdPort: port, MaxSlots: maxSlots, base: [4]byte{127, second, 0, 0}, slots: map[int]*hostSlot{}}, nil
}

// Close removes every slot (as a host reboot would).
func (h *Host) Close() {
	h.mu.Lock()
	slots := h.slots
	h.slots = map[int]*hostSlot{}
	h.mu.Unlock()
	for _, s := range slots {
		s.fwd.close()
	}
}

// Slots returns the indices of the slots that exist, ascending.
func (h *Host) Slots() []int {
	h.mu.Lock()
	defer h.mu.Unlock()
	var idx []int
	for i := range h.slots {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	return idx
}

func (h *Host) hostIP(index int) netip.Addr {
	b := h.base
	b[2], b[3] = byte(index>>8), byte(index)
	return netip.AddrFrom4(b)
}

// netnsOf names slot index's (fake) namespace; the driver maps it back.
func netnsOf(index int) string { return "/run/netns/fake-" + strconv.Itoa(index) }

func (h *Host) slotByNetNS(netns string) (*hostSlot, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range h.slots {
		if netnsOf(s.index) == netns {
			return s, true
		}
	}
	return nil, false
}

// build makes slot index: its guest port and forwarder.
func (h *Host) build(index int) (*hostSlot, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	ip := h.hostIP(index)
	fwd, err := newForwarder(netip.AddrPortFrom(ip, uint16(h.EnvdPort)), port)
	if err != nil {
		return nil, err
	}
	return &hostSlot{index: index, hostIP: ip, guestPort: port, fwd: fwd}, nil
}

func (h *Host) remove(index int) bool {
	h.mu.Lock()
	s, ok := h.slots[index]
	delete(h.slots, index)
	h.mu.Unlock()
	if ok {
		s.fwd.close()
	}
	return ok
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// forwarder relays TCP from a host IP to envd's port on loopback: the
// stand-in for a slot's DNAT.
type forwarder struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func newForwarder(listen netip.AddrPort, port int) (*forwarder, error) {
	ln, err := net.Listen("tcp", listen.String())
	if err != nil {
		return nil, err
	}
	f := &forwarder{ln: ln, target: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), conns: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.serve()
	return f, nil
}

func (f *forwarder) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *forwarder) untrack(c net.Conn) {
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
	c.Close()
}

func (f *forwarder) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.relay(c)
		}()
	}
}

// relay copies between the client and envd; when either side ends, both
// do (as a connection through NAT to a dead guest would, eventually).
func (f *forwarder) relay(c net.Conn) {
	if !f.track(c) {
		c.Close()
		return
	}
	defer f.untrack(c)
	u, err := net.Dial("tcp", f.target)
	if err != nil {
		return
	}
	if !f.track(u) {
		u.Close()
		return
	}
	defer f.untrack(u)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		// Plain reads and writes: splice(2) would cache pipes in a pool,
		// which fd-counting tests would see as leaks.
		_, _ = io.Copy(struct{ io.Writer }{dst}, struct{ io.Reader }{src})
		done <- struct{}{}
	}
	go pipe(u, c)
	go pipe(c, u)
	<-done
	c.Close()
	u.Close()
	<-done
}

func (f *forwarder) close() {
	f.mu.Lock()
	f.closed = true
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.ln.Close()
	f.wg.Wait()
}

// Network is an agent's view of a Host's slots. It implements
// agent.Network and agent.SlotCounter.
type Network struct {
	host *Host

	mu   sync.Mutex
	held map[int]*hostnet.Slot
}

var (
	_ agent.Network     = (*Network)(nil)
	_ agent.SlotCounter = (*Network)(nil)
)

// Network returns a new view of h's slots, as a new agent's network
// manager would have: it holds nothing until it acquires or adopts.
func (h *Host) Network() *Network { return &Network{host: h, held: map[int]*hostnet.Slot{}} }

func (n *Network) slot(s *hostSlot, egress bool) *hostnet.Slot {
	return &hostnet.Slot{
		Index:    s.index,
		NetNS:    netnsOf(s.index),
		NSName:   "fake-" + strconv.Itoa(s.index),
		Tap:      hostnet.TapName,
		GuestIP:  hostnet.GuestIP,
		HostIP:   s.hostIP,
		GuestMAC: hostnet.GuestMAC,
		Egress:   egress,
		HostVeth: "fakev" + strconv.Itoa(s.index),
	}
}

// Acquire makes a slot on the lowest free index; an index whose address
// is taken (another test binary) is skipped.
func (n *Network) Acquire(ctx context.Context, egress bool) (*hostnet.Slot, error) {
	h := n.host
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := 1; i <= h.MaxSlots; i++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if _, ok := h.slots[i]; ok {
			continue
		}
		s, err := h.build(i)
		if errors.Is(err, syscall.EADDRINUSE) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("build fake slot %d: %w", i, err)
		}
		h.slots[i] = s
		sl := n.slot(s, egress)
		n.mu.Lock()
		n.held[i] = sl
		n.mu.Unlock()
		return sl, nil
	}
	return nil, errdefs.ResourceExhausted("all %d network slots are in use", h.MaxSlots)
}

// Adopt takes over an existing slot.
func (n *Network) Adopt(index int) (*hostnet.Slot, error) {
	h := n.host
	h.mu.Lock()
	s, ok := h.slots[index]
	h.mu.Unlock()
	if !ok {
		return nil, errdefs.NotFound("network slot %d does not exist", index)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.held[index] != nil {
		return nil, errdefs.AlreadyExists("network slot %d is already held", index)
	}
	sl := n.slot(s, false)
	n.held[index] = sl
	return sl, nil
}

// Release removes a slot this view holds; anything else is a no-op.
func (n *Network) Release(ctx context.Context, s *hostnet.Slot) error {
	if s == nil {
		return nil
	}
	n.mu.Lock()
	held := n.held[s.Index] == s
	if held {
		delete(n.held, s.Index)
	}
	n.mu.Unlock()
	if held {
		n.host.remove(s.Index)
	}
	return nil
}

// ReclaimLeftovers removes the host's slots this view does not hold.
func (n *Network) ReclaimLeftovers(ctx context.Context) (int, error) {
	removed := 0
	for _, i := range n.host.Slots() {
		n.mu.Lock()
		held := n.held[i] != nil
		n.mu.Unlock()
		if !held && n.host.remove(i) {
			removed++
		}
	}
	return removed, nil
}

// FreeSlots implements agent.SlotCounter.
func (n *Network) FreeSlots() int { return n.host.MaxSlots - len(n.host.Slots()) }

// Held returns the indices this view holds, ascending.
func (n *Network) Held() []int {
	n.mu.Lock()
	defer n.mu.Unlock()
	var idx []int
	for i := range n.held {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	return idx
}

// Images is an ImageSource of fake templates.
type Images struct {
	templates map[string]*agent.Template
	names     []string
}

var _ agent.ImageSource = (*Images)(nil)

// NewImages makes the templates "minimal" and "base" in dir: a dummy
// kernel, and a sparse 64 MiB root disk with a little data.
func NewImages(dir string) (*Images, error) {
	kernel := filepath.Join(dir, "kernel")
	if err := os.WriteFile(kernel, []byte("not a kernel"), 0o644); err != nil {
		return nil, err
	}
	rootfs := filepath.Join(dir, "rootfs.ext4")
	f, err := os.Create(rootfs)
	if err != nil {
		return nil, err
	}
	err = f.Truncate(64 << 20)
	if err == nil {
		_, err = f.WriteAt([]byte("fake ext4 superblock"), 1024)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	im := &Images{templates: map[string]*agent.Template{}}
	for _, name := range []string{"minimal", "base"} {
		im.templates[name] = &agent.Template{Name: name, Kernel: kernel, RootFS: rootfs, KernelArgs: "wrenn.root=/dev/vda", Shell: "/bin/sh"}
		im.names = append(im.names, name)
	}
	return im, nil
}

// Lookup returns a copy of the named template.
func (im *Images) Lookup(ctx context.Context, name string) (*agent.Template, error) {
	t, ok := im.templates[name]
	if !ok {
		return nil, errdefs.NotFound("no template %q", name)
	}
	c := *t
	return &c, nil
}

// Names lists the templates.
func (im *Images) Names() []string { return slices.Clone(im.names) }
