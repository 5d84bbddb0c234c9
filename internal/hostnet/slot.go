package hostnet

import (
	"net/netip"
)

// The guest side of every slot. They are the same in every slot, so a VM
// snapshotted in one slot resumes in any other without reconfiguring its
// network: its ARP entry for the gateway stays right because the tap's MAC
// is fixed too.
const (
	// TapName is the tap device's name inside a slot's namespace.
	TapName = "tap0"
	// GuestMAC is the MAC address the VM's interface must have.
	GuestMAC = "02:77:72:6e:00:15"
	// TapMAC is the MAC address of the tap (the guest's gateway).
	TapMAC = "02:77:72:6e:00:16"
	// nsVethName is the namespace end of the veth pair.
	nsVethName = "eth0"
)

var (
	// GuestIP is the VM's address.
	GuestIP = netip.MustParseAddr("169.254.0.21")
	// GatewayIP is the tap's address: the VM's gateway.
	GatewayIP = netip.MustParseAddr("169.254.0.22")
	// guestNet is the point-to-point network of tap and guest.
	guestNet = netip.MustParsePrefix("169.254.0.20/30")
	// linkLocal is never forwarded from a slot: cloud metadata services
	// (169.254.169.254) live there.
	linkLocal = netip.MustParsePrefix("169.254.0.0/16")
)

// Slot is a network slot held by a [Manager]. Its fields are read-only for
// the holder; Egress is updated by [Manager.SetEgress], which must not run
// concurrently with reads of it.
type Slot struct {
	// Index is the slot number N.
	Index int
	// NetNS is the namespace's path (/run/netns/<NSName>); the VMM runs
	// inside it.
	NetNS string
	// NSName is the namespace's name, as `ip netns` shows it.
	NSName string
	// Tap is the tap device's name inside the namespace ([TapName]).
	Tap string
	// GuestIP is the VM's address ([GuestIP]); HostIP is where the host
	// reaches the VM, and where the VM's traffic appears to come from.
	GuestIP, HostIP netip.Addr
	// GuestMAC is the MAC address the VM's interface must have.
	GuestMAC string
	// Egress tells whether the VM may reach the internet.
	Egress bool

	// HostVeth is the host end of the slot's veth pair.
	HostVeth string
}

// KernelIPArg is the kernel command-line argument that configures the
// guest's eth0 statically (no DHCP): address, gateway and netmask. DNS is
// left to the guest's image: a resolver is a policy choice the host does
// not make.
func (s *Slot) KernelIPArg() string {
	// ip=<client>:<server>:<gateway>:<netmask>:<hostname>:<device>:<autoconf>
	return "ip=" + GuestIP.String() + "::" + GatewayIP.String() + ":255.255.255.252::eth0:off"
}
