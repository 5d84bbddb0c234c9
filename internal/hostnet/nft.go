package hostnet

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Names inside the manager's root-namespace table (family inet) and the
// slot namespace's table (family ip).
const (
	setSlots   = "slots"   // host veths of all slots (ifname)
	setEgress  = "egress"  // host veths of the slots whose egress is on
	setUplinks = "uplinks" // interfaces egress may leave by

	chainInput    = "input"
	chainForward  = "forward"
	chainFromSlot = "from_slot"
	chainToSlot   = "to_slot"
	chainPostNAT  = "postrouting"
	chainPreNAT   = "prerouting"
)

// hostTable is the manager's root-namespace table: what [Manager] passes
// around to name it and its sets.
type hostTable struct{ t *nftables.Table }

func newHostTable(name string) hostTable {
	return hostTable{&nftables.Table{Family: nftables.TableFamilyINet, Name: name}}
}

func (h hostTable) set(name string) *nftables.Set {
	// nft reads ifname keys as host-endian strings; without saying so, it
	// lists them as "".
	return &nftables.Set{Table: h.t, Name: name, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian}
}

// hostRules are the members of the host table's sets.
type hostRules struct {
	slots, egress, uplinks []string
}

// build queues, on c, the creation of the whole table with the given
// members. The set IDs are set here because the library would otherwise
// take them from an unsynchronised package counter.
func (h hostTable) build(c *nftables.Conn, hostCIDR netip.Prefix, m hostRules) error {
	t := c.AddTable(h.t)
	sets := map[string]*nftables.Set{}
	for i, s := range []struct {
		name    string
		members []string
	}{{setSlots, m.slots}, {setEgress, m.egress}, {setUplinks, m.uplinks}} {
		set := h.set(s.name)
		set.ID = uint32(i + 1)
		if err := c.AddSet(set, ifnameElems(s.members)); err != nil {
			return fmt.Errorf("add set %s: %w", s.name, err)
		}
		sets[s.name] = set
	}
	slots, egress, uplinks := sets[setSlots], sets[setEgress], sets[setUplinks]

	accept := nftables.ChainPolicyAccept
	input := c.AddChain(&nftables.Chain{Table: t, Name: chainInput, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	forward := c.AddChain(&nftables.Chain{Table: t, Name: chainForward, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	fromSlot := c.AddChain(&nftables.Chain{Table: t, Name: chainFromSlot})
	toSlot := c.AddChain(&nftables.Chain{Table: t, Name: chainToSlot})
	post := c.AddChain(&nftables.Chain{Table: t, Name: chainPostNAT, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})

	rule := func(ch *nftables.Chain, exprs ...[]expr.Any) {
		var all []expr.Any
		for _, e := range exprs {
			all = append(all, e...)
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: all})
	}

	// Slots reach nothing on the host but replies to the host's own
	// connections (the agent talking to envd).
	rule(input, ifIn(expr.MetaKeyIIFNAME, slots), ctReply(), verdict(expr.VerdictAccept))
	rule(input, ifIn(expr.MetaKeyIIFNAME, slots), rejectTCP())
	rule(input, ifIn(expr.MetaKeyIIFNAME, slots), rejectOther())

	rule(forward, ifIn(expr.MetaKeyIIFNAME, slots), jump(chainFromSlot))
	rule(forward, ifIn(expr.MetaKeyOIFNAME, slots), jump(chainToSlot))

	// From a slot: out of an uplink when egress is on, never to link-local
	// addresses; everything else (other slots, other interfaces) refused.
	rule(fromSlot, ifIn(expr.MetaKeyIIFNAME, egress), ifIn(expr.MetaKeyOIFNAME, uplinks),
		ipv4(), ipAddrIn(ipDaddr, linkLocal, false), verdict(expr.VerdictAccept))
	rule(fromSlot, rejectTCP())
	rule(fromSlot, rejectOther())

	// Into a slot (forwarded, so not from the host itself): replies only.
	// (A slot of another manager is refused here too, whichever of the two
	// tables' chains the kernel runs first.)
	rule(toSlot, ctReply(), verdict(expr.VerdictAccept))
	rule(toSlot, rejectTCP())
	rule(toSlot, rejectOther())

	rule(post, ifIn(expr.MetaKeyOIFNAME, uplinks), ipv4(), ipAddrIn(ipSaddr, hostCIDR, true), []expr.Any{&expr.Masq{}})
	return nil
}

// buildNSTable queues, on c, the table inside a slot's namespace (family ip): the NAT
// between host IP and guest, and a forward filter that lets only the
// guest's own address through, so a guest cannot spoof another source.
func buildNSTable(c *nftables.Conn, name string, hostIP netip.Addr) {
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: name})
	accept, drop := nftables.ChainPolicyAccept, nftables.ChainPolicyDrop
	pre := c.AddChain(&nftables.Chain{Table: t, Name: chainPreNAT, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest, Policy: &accept})
	post := c.AddChain(&nftables.Chain{Table: t, Name: chainPostNAT, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})
	fwd := c.AddChain(&nftables.Chain{Table: t, Name: chainForward, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &drop})
	input := c.AddChain(&nftables.Chain{Table: t, Name: chainInput, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})

	rule := func(ch *nftables.Chain, exprs ...[]expr.Any) {
		var all []expr.Any
		for _, e := range exprs {
			all = append(all, e...)
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: all})
	}
	guest := netip.PrefixFrom(GuestIP, 32)
	host := netip.PrefixFrom(hostIP, 32)

	rule(pre, ifIs(expr.MetaKeyIIFNAME, nsVethName), ipAddrIn(ipDaddr, host, true),
		[]expr.Any{
			&expr.Immediate{Register: 1, Data: GuestIP.AsSlice()},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1},
		})
	rule(post, ifIs(expr.MetaKeyOIFNAME, nsVethName), ipAddrIn(ipSaddr, guest, true),
		[]expr.Any{
			&expr.Immediate{Register: 1, Data: hostIP.AsSlice()},
			&expr.NAT{Type: expr.NATTypeSourceNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1},
		})
	rule(fwd, ifIs(expr.MetaKeyIIFNAME, TapName), ifIs(expr.MetaKeyOIFNAME, nsVethName),
		ipAddrIn(ipSaddr, guest, true), verdict(expr.VerdictAccept))
	rule(fwd, ifIs(expr.MetaKeyIIFNAME, nsVethName), ifIs(expr.MetaKeyOIFNAME, TapName),
		ipAddrIn(ipDaddr, guest, true), verdict(expr.VerdictAccept))
	// Nothing in the namespace itself serves the guest.
	rule(input, ifIs(expr.MetaKeyIIFNAME, TapName), ctReply(), verdict(expr.VerdictAccept))
	rule(input, ifIs(expr.MetaKeyIIFNAME, TapName), rejectTCP())
	rule(input, ifIs(expr.MetaKeyIIFNAME, TapName), rejectOther())
}

// Expression building blocks. Each loads into register 1 and compares.

func ifnameKey(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func ifnameElems(names []string) []nftables.SetElement {
	elems := make([]nftables.SetElement, 0, len(names))
	for _, n := range names {
		elems = append(elems, nftables.SetElement{Key: ifnameKey(n)})
	}
	return elems
}

// ifIn: iifname/oifname @set.
func ifIn(key expr.MetaKey, set *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
	}
}

// ifIs: iifname/oifname "name".
func ifIs(key expr.MetaKey, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifnameKey(name)},
	}
}

// ipv4: meta nfproto ipv4 (needed before IPv4 header matches in inet tables).
func ipv4() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}
}

// Offsets of the addresses in the IPv4 header.
const (
	ipSaddr = 12
	ipDaddr = 16
)

// ipAddrIn: ip saddr/daddr in (or, with in false, not in) prefix p.
func ipAddrIn(offset uint32, p netip.Prefix, in bool) []expr.Any {
	op := expr.CmpOpEq
	if !in {
		op = expr.CmpOpNeq
	}
	e := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4}}
	if p.Bits() < 32 {
		m := uint32(0xffffffff) << (32 - p.Bits())
		e = append(e, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.BigEndian.PutUint32(m), Xor: []byte{0, 0, 0, 0}})
	}
	return append(e, &expr.Cmp{Op: op, Register: 1, Data: p.Masked().Addr().AsSlice()})
}

// ctReply: ct state established,related.
func ctReply() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

// rejectTCP: meta l4proto tcp reject with tcp reset. A refused connection
// fails at once instead of hanging the guest's program.
func rejectTCP() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Reject{Type: unix.NFT_REJECT_TCP_RST},
	}
}

// rejectOther: reject with icmpx admin-prohibited.
func rejectOther() []expr.Any {
	return []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED}}
}

func verdict(k expr.VerdictKind) []expr.Any { return []expr.Any{&expr.Verdict{Kind: k}} }

func jump(chain string) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chain}}
}

// isNotExist tells whether a netlink error says the object is missing.
func isNotExist(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ESRCH)
}
