// Package hostnet gives each sandbox its own network slot on a host: a
// network namespace holding the tap the VM attaches to, wired to the host
// through a veth pair, with NAT so that every guest has the same address
// and MAC (snapshots restore without re-addressing) while the host reaches
// each one at a distinct address.
//
// Slot N (from [Config.First, Config.Last]) is laid out as follows, with
// the default configuration:
//
//	root namespace             namespace wrenn-N                   VM
//	wrennvN 10.12.0.2N/31 <-veth-> eth0 10.12.0.(2N+1)/31
//	                               tap0 169.254.0.22/30 <-tap-> eth0 169.254.0.21
//	route 10.11.0.N/32             default route
//	  via 10.12.0.(2N+1)             via 10.12.0.2N
//
// The VM's side is the same in every slot ([GuestIP], [GuestMAC], and the
// tap's [TapMAC]); [Slot.KernelIPArg] configures it from the kernel command
// line.
//
// Inside the slot's namespace, traffic from the host to the slot's host IP
// (10.11.0.N) is DNATed to the guest and the guest's traffic is SNATed to
// the host IP, so the guest is seen by the host, and by the rest of the
// world through the host's MASQUERADE, as the host IP.
//
// Isolation is enforced by one nftables table in the root namespace per
// [Manager] (named after the prefix and index range, so it is removable as
// a unit and never touches the host's own tables):
//   - from a slot, nothing reaches the host itself (INPUT) except replies
//     to connections the host opened;
//   - from a slot, forwarding is allowed only to the uplinks (the
//     interfaces of the host's default routes, or [Config.Uplinks]), only
//     while the slot's egress is on, and never to link-local addresses
//     (cloud metadata services live there); so no slot reaches another
//     slot, of this manager or of any other;
//   - into a slot, only replies are forwarded;
//   - what is refused is rejected (TCP reset, ICMP admin-prohibited), so a
//     program in the guest fails at once instead of hanging;
//   - egress leaving an uplink from a host IP is masqueraded.
//
// Slots are members of nftables sets (by interface name) rather than owners
// of rules, so acquiring, releasing and switching egress are single set
// element changes, and the whole rule set is one atomic transaction when it
// is (re)built. A slot's name is put in the set before its veth exists and
// taken out only after the veth is gone, so a slot is never unisolated.
//
// The host's own firewall still applies: an iptables or nftables FORWARD
// chain with a drop policy (Docker installs one) also drops the slots'
// egress unless the host's rules accept it.
//
// The shared rules are built by [Manager.ReclaimLeftovers], which the agent
// calls at start, or else by the first [Manager.Acquire]; either enables
// IPv4 forwarding on the host, and nothing turns it off again.
//
// Agent restart: call [Manager.Adopt] for every slot whose VM is still
// running, then [Manager.ReclaimLeftovers] to remove everything else with
// the manager's prefix in its index range. Tearing a slot down does not
// stop a VM running in it; stop the VM first.
//
// The package needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and a kernel
// with network namespaces, veth, tun and nf_tables (with NAT, masquerade,
// reject and conntrack). It talks to the kernel over netlink and needs no
// userspace tools (ip and nft are useful for inspection only).
package hostnet
