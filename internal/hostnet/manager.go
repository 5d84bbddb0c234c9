package hostnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/google/nftables"

	"wrenn.dev/wrenn/internal/errdefs"
)

// Log attribute keys.
const (
	logKeySlot   = "slot"
	logKeyNetNS  = "netns"
	logKeyHostIP = "host_ip"
	logKeyEgress = "egress"
	logKeyCount  = "count"
	logKeyStep   = "step"
	logKeyName   = "name"
	logKeyUplink = "uplinks"
	logKeyErr    = "err"
)

// Manager allocates network slots from its index range and builds and tears
// them down. Its methods are safe for concurrent use.
type Manager struct {
	cfg   Config
	log   *slog.Logger
	table hostTable

	mu     sync.Mutex
	held   map[int]*entry // acquired, adopted, or being built
	next   int            // where the next search for a free index starts
	closed bool

	// nftMu serialises changes to the host table and guards the fields below.
	nftMu   sync.Mutex
	built   bool     // the host table has been (re)built by this manager
	uplinks []string // members of the uplinks set

	// buildHook, when a test sets it, is called before each step of building
	// a slot; an error fails the build there.
	buildHook func(step string) error
}

type entry struct {
	slot      *Slot
	building  bool // Acquire or Adopt has not returned it yet
	releasing bool // Release has begun tearing it down
}

// New returns a Manager for cfg. It does not touch the host: the first
// ReclaimLeftovers, Acquire or Adopt sets up the shared rules.
func New(cfg Config) (*Manager, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Manager{
		cfg:   cfg,
		log:   cfg.Logger,
		table: newHostTable(cfg.tableName()),
		held:  map[int]*entry{},
		next:  cfg.First,
	}, nil
}

var errClosed = errdefs.FailedPrecondition("network slot manager is closed")

// errSlotTaken means a slot's namespace or veth already exists, left by
// something other than this manager.
var errSlotTaken = errors.New("slot's namespace or veth exists already")

// Acquire builds a slot on the next free index, with egress on or off. It
// returns an error of class errdefs.ErrResourceExhausted when every index is
// held. On error nothing of the slot is left behind. An index whose
// namespace or veth exists already (left by a crashed agent and not yet
// reclaimed) is skipped.
func (m *Manager) Acquire(ctx context.Context, egress bool) (*Slot, error) {
	for skipped := 0; ; skipped++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		s, err := m.reserve(egress)
		if err != nil {
			return nil, err
		}
		err = m.build(ctx, s)
		if err == nil {
			err = m.commit(s)
		}
		if err == nil {
			m.log.Debug("slot acquired", logKeySlot, s.Index, logKeyHostIP, s.HostIP, logKeyEgress, egress)
			return s, nil
		}
		m.unreserve(s)
		if errors.Is(err, errSlotTaken) && skipped < m.cfg.Last-m.cfg.First {
			m.log.Warn("slot index occupied by objects of unknown origin; skipping it until reclaimed", logKeySlot, s.Index)
			continue
		}
		return nil, fmt.Errorf("acquire network slot %d: %w", s.Index, err)
	}
}

// commit marks a built slot as held, unless the manager was closed while
// it was being built: then it tears it down.
func (m *Manager) commit(s *Slot) error {
	m.mu.Lock()
	closed := m.closed
	if !closed {
		m.held[s.Index].building = false
	}
	m.mu.Unlock()
	if !closed {
		return nil
	}
	if err := m.teardown(s); err != nil {
		m.log.Error("cannot tear down slot built during close", logKeySlot, s.Index, logKeyErr, err)
	}
	return errClosed
}

// reserve takes the next free index (next-fit, so a released index is
// reused as late as possible) and returns its slot, not yet built.
func (m *Manager) reserve(egress bool) (*Slot, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, errClosed
	}
	n := m.cfg.Last - m.cfg.First + 1
	for i := range n {
		idx := m.cfg.First + (m.next-m.cfg.First+i)%n
		if _, ok := m.held[idx]; ok {
			continue
		}
		s := m.slot(idx)
		s.Egress = egress
		m.held[idx] = &entry{slot: s, building: true}
		m.next = m.cfg.First + (idx-m.cfg.First+1)%n
		return s, nil
	}
	return nil, errdefs.ResourceExhausted("all %d network slots (%d..%d) are in use", n, m.cfg.First, m.cfg.Last)
}

func (m *Manager) unreserve(s *Slot) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.held[s.Index]; e != nil && e.slot == s {
		delete(m.held, s.Index)
	}
}

// slot describes slot n; it builds nothing.
func (m *Manager) slot(n int) *Slot {
	name := nsName(m.cfg.Prefix, n)
	return &Slot{
		Index:    n,
		NetNS:    nsPath(name),
		NSName:   name,
		Tap:      TapName,
		GuestIP:  GuestIP,
		HostIP:   m.cfg.hostIP(n),
		GuestMAC: GuestMAC,
		HostVeth: vethName(m.cfg.Prefix, n),
	}
}

// isHeld reports whether index n is held (and so must not be reclaimed).
func (m *Manager) isHeld(n int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.held[n]
	return ok
}

// Adopt marks the existing slot at index as held, for an agent that
// restarted and reattaches a VM still running in it. Its egress setting is
// read from the host's rules. It returns an error of class
// errdefs.ErrNotFound when the slot's namespace or veth does not exist.
// Call it before ReclaimLeftovers, which removes every slot not held.
func (m *Manager) Adopt(index int) (*Slot, error) {
	if !m.cfg.inRange(index) {
		return nil, errdefs.InvalidArgument("slot %d is outside this manager's range %d..%d", index, m.cfg.First, m.cfg.Last)
	}
	s := m.slot(index)
	m.mu.Lock()
	switch {
	case m.closed:
		m.mu.Unlock()
		return nil, errClosed
	case m.held[index] != nil:
		m.mu.Unlock()
		return nil, errdefs.AlreadyExists("network slot %d is already held", index)
	}
	m.held[index] = &entry{slot: s, building: true}
	m.mu.Unlock()

	if err := m.adopt(s); err != nil {
		m.unreserve(s)
		return nil, err
	}
	m.mu.Lock()
	closed := m.closed
	if !closed {
		m.held[index].building = false
	}
	m.mu.Unlock()
	if closed {
		// Left as it is (its VM runs): the next agent adopts or reclaims it.
		m.unreserve(s)
		return nil, errClosed
	}
	m.log.Info("slot adopted", logKeySlot, index, logKeyHostIP, s.HostIP, logKeyEgress, s.Egress)
	return s, nil
}

func (m *Manager) adopt(s *Slot) error {
	if !isNetNS(s.NetNS) {
		return errdefs.NotFound("network slot %d has no namespace %s", s.Index, s.NSName)
	}
	if ok, err := linkExists(s.HostVeth); err != nil {
		return err
	} else if !ok {
		return errdefs.NotFound("network slot %d has no veth %s", s.Index, s.HostVeth)
	}
	egress, err := m.egressMember(s.HostVeth)
	if err != nil {
		return fmt.Errorf("read egress of slot %d: %w", s.Index, err)
	}
	m.mu.Lock()
	s.Egress = egress
	m.mu.Unlock()
	// Bring the slot's rules and route to this version and configuration;
	// the VM's connections survive (their NAT lives in conntrack).
	if err := m.refreshSlot(s); err != nil {
		return fmt.Errorf("adopt network slot %d: %w", s.Index, err)
	}
	return m.addMembers(s)
}

// Release tears the slot down: veth, namespace (with the tap), route and
// its place in the rules. Stop the VM first: a process still inside keeps
// the namespace alive. Release is idempotent, and a no-op for a slot this
// manager does not hold (one already released, even if its index has been
// acquired again since). On error the slot stays held and Release can be
// retried. ctx is not used: tearing down always runs to the end.
func (m *Manager) Release(ctx context.Context, s *Slot) error {
	if s == nil {
		return nil
	}
	m.mu.Lock()
	e := m.held[s.Index]
	if e == nil || e.slot != s || e.building {
		m.mu.Unlock()
		return nil
	}
	e.releasing = true
	m.mu.Unlock()
	if err := m.teardown(s); err != nil {
		return fmt.Errorf("release network slot %d: %w", s.Index, err)
	}
	m.unreserve(s)
	m.log.Debug("slot released", logKeySlot, s.Index)
	return nil
}

// SetEgress switches the slot's access to the internet. Switching it off
// cuts established connections too.
func (m *Manager) SetEgress(ctx context.Context, s *Slot, on bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s == nil {
		return errdefs.NotFound("no network slot given")
	}
	// Checked under nftMu: once Release has begun, its removal of the
	// slot's set members comes after, so nothing here outlives the slot.
	m.nftMu.Lock()
	defer m.nftMu.Unlock()
	m.mu.Lock()
	e := m.held[s.Index]
	held := e != nil && e.slot == s && !e.building && !e.releasing
	m.mu.Unlock()
	if !held {
		return errdefs.NotFound("network slot %d is not held", s.Index)
	}
	if err := m.readyLocked(); err != nil {
		return err
	}
	if on {
		err := m.flushHost(func(c *nftables.Conn) error {
			return c.SetAddElements(m.table.set(setEgress), ifnameElems([]string{s.HostVeth}))
		})
		if err != nil {
			return fmt.Errorf("turn egress of slot %d on: %w", s.Index, err)
		}
	} else if err := m.deleteMember(setEgress, s.HostVeth); err != nil {
		return fmt.Errorf("turn egress of slot %d off: %w", s.Index, err)
	}
	m.mu.Lock()
	s.Egress = on
	m.mu.Unlock()
	m.log.Debug("slot egress set", logKeySlot, s.Index, logKeyEgress, on)
	return nil
}

// InUse returns the held indices (including slots being built), ascending.
func (m *Manager) InUse() []int {
	m.mu.Lock()
	defer m.mu.Unlock()
	idx := make([]int, 0, len(m.held))
	for n := range m.held {
		idx = append(idx, n)
	}
	slices.Sort(idx)
	return idx
}

// ReclaimLeftovers removes the slots with this manager's prefix in its
// range that it does not hold, left by a crashed agent, and (re)builds the
// shared rules, replacing tables of this prefix whose range overlaps this
// manager's. It returns how many slots it removed. Call it at start, after
// Adopt for the VMs still running.
func (m *Manager) ReclaimLeftovers(ctx context.Context) (int, error) {
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	if closed {
		return 0, errClosed
	}
	// First put every leftover behind the current rules, then remove them.
	m.nftMu.Lock()
	err := m.rebuildLocked()
	m.nftMu.Unlock()
	if err != nil {
		return 0, err
	}

	removed := map[int]bool{}
	var errs []error
	names, err := namedNSes()
	if err != nil {
		errs = append(errs, err)
	}
	for _, name := range names {
		n, ok := parseIndex(name, m.cfg.Prefix, "-")
		if !ok || !m.cfg.inRange(n) || m.isHeld(n) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return len(removed), err
		}
		if err := deleteNamedNS(nsPath(name)); err != nil {
			errs = append(errs, fmt.Errorf("remove leftover namespace %s: %w", name, err))
			continue
		}
		m.log.Debug("removed leftover namespace", logKeyName, name)
		removed[n] = true
	}
	links, err := linkNames()
	if err != nil {
		errs = append(errs, err)
	}
	for _, name := range links {
		n, ok := parseIndex(name, m.cfg.Prefix, "v")
		if !ok || !m.cfg.inRange(n) || m.isHeld(n) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return len(removed), err
		}
		if err := deleteLink(name); err != nil {
			errs = append(errs, fmt.Errorf("remove leftover veth %s: %w", name, err))
			continue
		}
		m.log.Debug("removed leftover veth", logKeyName, name)
		removed[n] = true
	}
	// Drop the removed slots from the rules.
	m.nftMu.Lock()
	err = m.rebuildLocked()
	m.nftMu.Unlock()
	errs = append(errs, err)
	if len(removed) > 0 {
		m.log.Info("reclaimed leftover network slots", logKeyCount, len(removed))
	}
	return len(removed), errors.Join(errs...)
}

// Close releases every slot and removes the shared rules. A slot that
// cannot be released keeps the rules in place (so it stays isolated) and
// Close returns the error; calling Close again retries.
func (m *Manager) Close(ctx context.Context) error {
	m.mu.Lock()
	m.closed = true
	var slots []*Slot
	for _, e := range m.held {
		if !e.building {
			slots = append(slots, e.slot)
		}
	}
	m.mu.Unlock()

	var errs []error
	for _, s := range slots {
		errs = append(errs, m.Release(ctx, s))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close network slots: %w", err)
	}
	m.nftMu.Lock()
	defer m.nftMu.Unlock()
	err := m.flushHost(func(c *nftables.Conn) error { c.DelTable(m.table.t); return nil })
	if err != nil && !isNotExist(err) {
		return fmt.Errorf("remove table %s: %w", m.table.t.Name, err)
	}
	m.built = false
	return nil
}
