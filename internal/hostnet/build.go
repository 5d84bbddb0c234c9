package hostnet

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Steps of building a slot, named for logs and for the test hook.
const (
	stepIsolate   = "isolate"   // put the veth's name in the host rules
	stepNetNS     = "netns"     // create the namespace
	stepVeth      = "veth"      // create the veth pair
	stepNamespace = "namespace" // configure inside the namespace
	stepHostEnd   = "host-end"  // address the host end, route the host IP
)

// build creates slot s. On error it undoes what it did, and returns an
// error matching errSlotTaken when the slot's namespace or veth existed
// before.
func (m *Manager) build(ctx context.Context, s *Slot) (err error) {
	var undo []func() error
	defer func() {
		if err == nil {
			return
		}
		for i := len(undo) - 1; i >= 0; i-- {
			if uerr := undo[i](); uerr != nil {
				m.log.Error("cannot undo part of a failed slot build; ReclaimLeftovers removes it",
					logKeySlot, s.Index, logKeyErr, uerr)
			}
		}
	}()
	step := func(name string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if m.buildHook != nil {
			if err := m.buildHook(name); err != nil {
				return fmt.Errorf("step %s: %w", name, err)
			}
		}
		return nil
	}

	if _, err := os.Lstat(s.NetNS); err == nil {
		return errSlotTaken
	}
	if ok, err := linkExists(s.HostVeth); err != nil {
		return err
	} else if ok {
		return errSlotTaken
	}

	if err := step(stepIsolate); err != nil {
		return err
	}
	if err := m.addMembers(s); err != nil {
		return err
	}
	undo = append(undo, func() error { return m.removeMembers(s.HostVeth) })

	if err := step(stepNetNS); err != nil {
		return err
	}
	if err := createNamedNS(s.NetNS); err != nil {
		if exists(err) {
			return errSlotTaken
		}
		return fmt.Errorf("create namespace %s: %w", s.NSName, err)
	}
	undo = append(undo, func() error { return deleteNamedNS(s.NetNS) })
	fd, err := openNS(s.NetNS)
	if err != nil {
		return err
	}
	defer unix.Close(fd) // before the undo: an open fd keeps the namespace alive

	if err := step(stepVeth); err != nil {
		return err
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: s.HostVeth},
		PeerName:      nsVethName,
		PeerNamespace: netlink.NsFd(fd),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		if exists(err) {
			return errSlotTaken
		}
		return fmt.Errorf("create veth %s: %w", s.HostVeth, err)
	}
	undo = append(undo, func() error { return deleteLink(s.HostVeth) })

	if err := step(stepNamespace); err != nil {
		return err
	}
	if err := inNS(fd, func() error { return m.configureNS(s) }); err != nil {
		return fmt.Errorf("configure namespace %s: %w", s.NSName, err)
	}
	up, stop, err := watchOperUp(fd, nsVethName)
	if err != nil {
		return err
	}
	defer stop()

	if err := step(stepHostEnd); err != nil {
		return err
	}
	if err := m.configureHostEnd(s); err != nil {
		return err
	}
	// The namespace end came up first, so it gets its carrier, and its
	// queue, only when the kernel's link watcher gets to it: until then it
	// drops what it sends, and the first connection to the slot would wait
	// a retransmission (a second).
	select {
	case <-up:
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(linkUpTimeout):
		m.log.Warn("slot's veth is not operationally up yet; going on", logKeySlot, s.Index)
	}
	return nil
}

// linkUpTimeout bounds the wait for a veth to be operational. The kernel's
// link watcher handles a carrier change within a second.
const linkUpTimeout = 2 * time.Second

// watchOperUp returns a channel closed when the link named name, in the
// namespace open at fd, reports itself operationally up, which the kernel
// announces only once the link can transmit. stop ends the watch.
func watchOperUp(fd int, name string) (up <-chan struct{}, stop func(), err error) {
	updates := make(chan netlink.LinkUpdate)
	done := make(chan struct{})
	err = inNS(fd, func() error {
		return netlink.LinkSubscribeWithOptions(updates, done, netlink.LinkSubscribeOptions{
			ErrorCallback: func(error) {}, // the end of the watch is reported as one
		})
	})
	if err != nil {
		return nil, nil, fmt.Errorf("watch link %s: %w", name, err)
	}
	upc := make(chan struct{})
	go func() {
		// Drained to the end: the subscription closes updates once done is.
		closed := false
		for u := range updates {
			if !closed && u.Attrs().Name == name && u.Attrs().OperState == netlink.OperUp {
				close(upc)
				closed = true
			}
		}
	}()
	return upc, func() { close(done) }, nil
}

// configureNS sets up the inside of a new slot namespace. It runs on a
// thread in that namespace, so netlink and nftables here act on it.
func (m *Manager) configureNS(s *Slot) error {
	if err := writeSysctl("net/ipv4/ip_forward", "1"); err != nil {
		return fmt.Errorf("enable forwarding: %w", err)
	}
	// The slot speaks IPv4 only; without IPv6 there is nothing to filter.
	for _, k := range []string{"net/ipv6/conf/all/disable_ipv6", "net/ipv6/conf/default/disable_ipv6"} {
		if err := writeSysctl(k, "1"); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("disable IPv6: %w", err)
		}
	}
	if err := createTap(TapName); err != nil {
		return err
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("look up lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	eth, err := netlink.LinkByName(nsVethName)
	if err != nil {
		return fmt.Errorf("look up %s: %w", nsVethName, err)
	}
	if err := addrUp(eth, netip.PrefixFrom(m.cfg.vethNSAddr(s.Index), 31)); err != nil {
		return err
	}
	tap, err := netlink.LinkByName(TapName)
	if err != nil {
		return fmt.Errorf("look up %s: %w", TapName, err)
	}
	mac, _ := net.ParseMAC(TapMAC)
	if err := netlink.LinkSetHardwareAddr(tap, mac); err != nil {
		return fmt.Errorf("set %s MAC: %w", TapName, err)
	}
	if err := addrUp(tap, netip.PrefixFrom(GatewayIP, guestNet.Bits())); err != nil {
		return err
	}
	err = netlink.RouteAdd(&netlink.Route{
		LinkIndex: eth.Attrs().Index,
		Gw:        m.cfg.vethHostAddr(s.Index).AsSlice(),
	})
	if err != nil {
		return fmt.Errorf("add default route: %w", err)
	}
	return m.replaceNSTable(s)
}

// replaceNSTable (re)creates the namespace's table in one transaction. It
// runs on a thread in the slot's namespace.
func (m *Manager) replaceNSTable(s *Slot) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	old, err := c.ListTableOfFamily(m.cfg.Prefix, nftables.TableFamilyIPv4)
	if err == nil {
		c.DelTable(old)
	} else if !isNotExist(err) {
		return fmt.Errorf("look up namespace table: %w", err)
	}
	buildNSTable(c, m.cfg.Prefix, s.HostIP)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("build namespace table: %w", err)
	}
	return nil
}

// configureHostEnd addresses the host end of the veth and routes the
// slot's host IP through the namespace.
func (m *Manager) configureHostEnd(s *Slot) error {
	l, err := netlink.LinkByName(s.HostVeth)
	if err != nil {
		return fmt.Errorf("look up %s: %w", s.HostVeth, err)
	}
	// No IPv6 link-local address or router solicitations on the host end.
	if err := writeSysctl("net/ipv6/conf/"+s.HostVeth+"/disable_ipv6", "1"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("disable IPv6 on %s: %w", s.HostVeth, err)
	}
	if err := addrUp(l, netip.PrefixFrom(m.cfg.vethHostAddr(s.Index), 31)); err != nil {
		return err
	}
	return m.routeHostIP(s, l)
}

func (m *Manager) routeHostIP(s *Slot, l netlink.Link) error {
	err := netlink.RouteReplace(&netlink.Route{
		LinkIndex: l.Attrs().Index,
		Dst:       prefixNet(netip.PrefixFrom(s.HostIP, 32)),
		Gw:        m.cfg.vethNSAddr(s.Index).AsSlice(),
	})
	if err != nil {
		return fmt.Errorf("route %s via %s: %w", s.HostIP, s.HostVeth, err)
	}
	return nil
}

// refreshSlot reapplies an existing slot's namespace table and host route,
// for Adopt.
func (m *Manager) refreshSlot(s *Slot) error {
	fd, err := openNS(s.NetNS)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := inNS(fd, func() error { return m.replaceNSTable(s) }); err != nil {
		return err
	}
	l, err := netlink.LinkByName(s.HostVeth)
	if err != nil {
		return fmt.Errorf("look up %s: %w", s.HostVeth, err)
	}
	return m.routeHostIP(s, l)
}

// teardown removes slot s from the kernel. The veth goes first and must
// go: until it has, the slot stays in the host rules.
func (m *Manager) teardown(s *Slot) error {
	if err := deleteLink(s.HostVeth); err != nil {
		return err
	}
	return errors.Join(deleteNamedNS(s.NetNS), m.removeMembers(s.HostVeth))
}

func addrUp(l netlink.Link, p netip.Prefix) error {
	if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: prefixNet(p)}); err != nil {
		return fmt.Errorf("address %s on %s: %w", p, l.Attrs().Name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring %s up: %w", l.Attrs().Name, err)
	}
	return nil
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
