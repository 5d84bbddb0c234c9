package hostnet

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"slices"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// This file holds the manager's root-namespace state: the host table and
// its set members, and the host's links.

// flushHost runs queue on a fresh connection to the root namespace's
// nftables and commits what it queued as one transaction.
func (m *Manager) flushHost(queue func(c *nftables.Conn) error) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	if err := queue(c); err != nil {
		return err
	}
	return c.Flush()
}

// readyLocked builds the host table when this manager has not yet, and
// otherwise follows a change of the default route's interface. m.nftMu is
// held.
func (m *Manager) readyLocked() error {
	if !m.built {
		m.mu.Lock()
		closed := m.closed
		m.mu.Unlock()
		if closed { // Close has removed the table; nothing may bring it back
			return errClosed
		}
		return m.rebuildLocked()
	}
	if len(m.cfg.Uplinks) > 0 {
		return nil
	}
	uplinks, err := defaultRouteLinks()
	if err != nil {
		return err
	}
	if slices.Equal(uplinks, m.uplinks) {
		return nil
	}
	err = m.flushHost(func(c *nftables.Conn) error {
		set := m.table.set(setUplinks)
		c.FlushSet(set)
		if len(uplinks) == 0 {
			return nil
		}
		return c.SetAddElements(set, ifnameElems(uplinks))
	})
	if err != nil {
		return fmt.Errorf("update uplinks to %v: %w", uplinks, err)
	}
	m.log.Info("egress uplinks changed", logKeyUplink, uplinks)
	m.uplinks = uplinks
	return nil
}

// rebuildLocked replaces the host table (and any table of this prefix whose
// range overlaps this manager's) in one transaction. Its slot members are
// the held slots and every veth in range that exists, so a leftover stays
// isolated until removed; a leftover keeps the egress it had, so Adopt can
// read it. It also enables IPv4 forwarding. m.nftMu is held.
func (m *Manager) rebuildLocked() error {
	if err := writeSysctl("net/ipv4/ip_forward", "1"); err != nil {
		return fmt.Errorf("enable IPv4 forwarding: %w", err)
	}
	if err := prepareNetnsDir(); err != nil {
		return err
	}
	uplinks := m.cfg.Uplinks
	if len(uplinks) == 0 {
		var err error
		if uplinks, err = defaultRouteLinks(); err != nil {
			return err
		}
		if len(uplinks) == 0 {
			m.log.Warn("host has no IPv4 default route: slots have no egress")
		}
	}
	oldEgress, err := m.egressMembers()
	if err != nil {
		return err
	}
	links, err := linkNames()
	if err != nil {
		return err
	}

	var r hostRules
	r.uplinks = uplinks
	m.mu.Lock()
	for _, e := range m.held {
		r.slots = append(r.slots, e.slot.HostVeth)
		if e.slot.Egress {
			r.egress = append(r.egress, e.slot.HostVeth)
		}
	}
	m.mu.Unlock()
	for _, name := range links {
		if n, ok := parseIndex(name, m.cfg.Prefix, "v"); !ok || !m.cfg.inRange(n) || slices.Contains(r.slots, name) {
			continue
		}
		r.slots = append(r.slots, name)
		if slices.Contains(oldEgress, name) {
			r.egress = append(r.egress, name)
		}
	}

	err = m.flushHost(func(c *nftables.Conn) error {
		tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
		if err != nil {
			return fmt.Errorf("list nftables tables: %w", err)
		}
		for _, t := range tables {
			first, last, ok := parseTableName(t.Name, m.cfg.Prefix)
			if ok && first <= m.cfg.Last && last >= m.cfg.First {
				c.DelTable(t)
			}
		}
		return m.table.build(c, m.cfg.HostCIDR, r)
	})
	if err != nil {
		return fmt.Errorf("build nftables table %s: %w", m.table.t.Name, err)
	}
	m.built = true
	m.uplinks = uplinks
	return nil
}

// egressMembers returns the members of the host table's egress set, none
// when the table does not exist.
func (m *Manager) egressMembers() ([]string, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, err
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("list nftables tables: %w", err)
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == m.table.t.Name }) {
		return nil, nil
	}
	set, err := c.GetSetByName(m.table.t, setEgress)
	if isNotExist(err) {
		return nil, nil // a table of another version
	}
	if err != nil {
		return nil, fmt.Errorf("look up set %s: %w", setEgress, err)
	}
	elems, err := c.GetSetElements(set)
	if err != nil {
		return nil, fmt.Errorf("read set %s: %w", setEgress, err)
	}
	names := make([]string, 0, len(elems))
	for _, e := range elems {
		names = append(names, string(bytes.TrimRight(e.Key, "\x00")))
	}
	return names, nil
}

func (m *Manager) egressMember(veth string) (bool, error) {
	m.nftMu.Lock()
	defer m.nftMu.Unlock()
	names, err := m.egressMembers()
	return slices.Contains(names, veth), err
}

// addMembers puts the slot's veth in the slots set, and in the egress set
// when its egress is on (and out of it, should it be there, when off),
// building the table first if needed.
func (m *Manager) addMembers(s *Slot) error {
	m.nftMu.Lock()
	defer m.nftMu.Unlock()
	if err := m.readyLocked(); err != nil {
		return err
	}
	if !s.Egress {
		if err := m.deleteMember(setEgress, s.HostVeth); err != nil {
			return err
		}
	}
	err := m.flushHost(func(c *nftables.Conn) error {
		elems := ifnameElems([]string{s.HostVeth})
		if err := c.SetAddElements(m.table.set(setSlots), elems); err != nil {
			return err
		}
		if s.Egress {
			return c.SetAddElements(m.table.set(setEgress), elems)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("add %s to the host rules: %w", s.HostVeth, err)
	}
	return nil
}

// removeMembers takes the veth out of the egress and slots sets, in that
// order. Missing members (or table) are not an error.
func (m *Manager) removeMembers(veth string) error {
	m.nftMu.Lock()
	defer m.nftMu.Unlock()
	if err := m.deleteMember(setEgress, veth); err != nil {
		return err
	}
	return m.deleteMember(setSlots, veth)
}

// deleteMember deletes one element in its own transaction, so that a
// missing one fails nothing else. m.nftMu is held.
func (m *Manager) deleteMember(set, veth string) error {
	err := m.flushHost(func(c *nftables.Conn) error {
		return c.SetDeleteElements(m.table.set(set), ifnameElems([]string{veth}))
	})
	if err != nil && !isNotExist(err) {
		return fmt.Errorf("remove %s from set %s: %w", veth, set, err)
	}
	return nil
}

// defaultRouteLinks returns the names of the interfaces the main table's
// IPv4 default routes leave by, sorted.
func defaultRouteLinks() ([]string, error) {
	var routes []netlink.Route
	err := retryDump(func() (err error) {
		routes, err = netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	var idx []int
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		if r.LinkIndex > 0 {
			idx = append(idx, r.LinkIndex)
		}
		for _, hop := range r.MultiPath {
			idx = append(idx, hop.LinkIndex)
		}
	}
	var names []string
	for _, i := range idx {
		l, err := netlink.LinkByIndex(i)
		if err != nil {
			continue // went away meanwhile
		}
		names = append(names, l.Attrs().Name)
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

// retryDump runs a netlink dump again when a concurrent change interrupted
// it (the result would be inconsistent).
func retryDump(dump func() error) error {
	var err error
	for range 10 {
		if err = dump(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return err
		}
	}
	return err
}

// linkNames lists the root namespace's interfaces.
func linkNames() ([]string, error) {
	var links []netlink.Link
	err := retryDump(func() (err error) {
		links, err = netlink.LinkList()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	names := make([]string, 0, len(links))
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	return names, nil
}

func linkExists(name string) (bool, error) {
	_, err := netlink.LinkByName(name)
	if err == nil {
		return true, nil
	}
	if _, ok := errors.AsType[netlink.LinkNotFoundError](err); ok || isNotExist(err) {
		return false, nil
	}
	return false, fmt.Errorf("look up link %s: %w", name, err)
}

// deleteLink deletes a link (a veth takes its peer along); a missing one is
// not an error.
func deleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		if _, ok := errors.AsType[netlink.LinkNotFoundError](err); ok || isNotExist(err) {
			return nil
		}
		return fmt.Errorf("look up link %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil && !isNotExist(err) {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}

// exists tells whether err says a thing to be created exists already.
func exists(err error) bool {
	return errors.Is(err, fs.ErrExist) || errors.Is(err, unix.EEXIST)
}
