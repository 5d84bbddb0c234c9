package initramfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ipConfig is a static IPv4 configuration from an ip= argument.
type ipConfig struct {
	addr     netip.Prefix
	gateway  netip.Addr // invalid when there is none
	dev      string
	hostname string
	dns      []string
}

// parseIPArg parses the kernel's nfsroot ip= format
// CLIENT:SERVER:GW:NETMASK:HOSTNAME:DEVICE:AUTOCONF:DNS0:DNS1:NTP0.
// Only static configuration is supported; "off" and "none" give nil.
func parseIPArg(v string) (*ipConfig, error) {
	switch v {
	case "off", "none":
		return nil, nil
	case "", "on", "any", "dhcp", "bootp", "rarp", "both":
		return nil, fmt.Errorf("ip=%s: only static configuration is supported", v)
	}
	f := strings.Split(v, ":")
	for len(f) < 10 {
		f = append(f, "")
	}
	client, err := netip.ParseAddr(f[0])
	if err != nil || !client.Is4() {
		return nil, fmt.Errorf("ip=%s: client address %q is not IPv4", v, f[0])
	}
	mask := net.ParseIP(f[3]).To4()
	if mask == nil {
		return nil, fmt.Errorf("ip=%s: netmask %q is not a dotted IPv4 mask", v, f[3])
	}
	ones, bits := net.IPMask(mask).Size()
	if bits == 0 {
		return nil, fmt.Errorf("ip=%s: netmask %q is not contiguous", v, f[3])
	}
	c := &ipConfig{addr: netip.PrefixFrom(client, ones), dev: f[5], hostname: f[4]}
	if c.dev == "" {
		c.dev = "eth0"
	}
	if f[2] != "" {
		if c.gateway, err = netip.ParseAddr(f[2]); err != nil || !c.gateway.Is4() {
			return nil, fmt.Errorf("ip=%s: gateway %q is not IPv4", v, f[2])
		}
	}
	if a := f[6]; a != "" && a != "off" && a != "none" {
		return nil, fmt.Errorf("ip=%s: autoconf %q is not supported (use off)", v, a)
	}
	for _, d := range f[7:9] {
		if d == "" {
			continue
		}
		if _, err := netip.ParseAddr(d); err != nil {
			return nil, fmt.Errorf("ip=%s: DNS server %q: %w", v, d, err)
		}
		c.dns = append(c.dns, d)
	}
	return c, nil
}

// configureNetwork waits for the interface to appear (its driver module
// was just loaded), then brings up lo and it, adds the address and the
// default route. The kernel keeps this across the switch to the root.
func configureNetwork(c *ipConfig, deadline time.Time, log *slog.Logger) error {
	var ifc *net.Interface
	err := pollUntil(deadline, func() (bool, error) {
		var err error
		ifc, err = net.InterfaceByName(c.dev)
		return err == nil, nil
	}, "interface "+c.dev+" did not appear")
	if err != nil {
		return err
	}
	nl, err := dialNetlink()
	if err != nil {
		return err
	}
	defer nl.close()
	if lo, err := net.InterfaceByName("lo"); err == nil {
		if err := nl.linkUp(lo.Index); err != nil {
			return fmt.Errorf("bring up lo: %w", err)
		}
	}
	if err := nl.addAddr(ifc.Index, c.addr); err != nil {
		return fmt.Errorf("add %s to %s: %w", c.addr, c.dev, err)
	}
	if err := nl.linkUp(ifc.Index); err != nil {
		return fmt.Errorf("bring up %s: %w", c.dev, err)
	}
	if c.gateway.IsValid() {
		if err := nl.addDefaultRoute(ifc.Index, c.gateway); err != nil {
			return fmt.Errorf("default route via %s: %w", c.gateway, err)
		}
	}
	log.Info("network configured", "dev", c.dev, "addr", c.addr.String(), "gateway", c.gateway.String())
	return nil
}

// netlinkConn is a minimal rtnetlink client: requests with acks only.
type netlinkConn struct {
	fd  int
	seq uint32
}

func dialNetlink() (*netlinkConn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink bind: %w", err)
	}
	return &netlinkConn{fd: fd}, nil
}

func (c *netlinkConn) close() { unix.Close(c.fd) }

// attr encodes one rtattr.
func attr(typ uint16, data []byte) []byte {
	n := unix.SizeofRtAttr + len(data)
	b := make([]byte, (n+3)&^3)
	binary.NativeEndian.PutUint16(b[0:], uint16(n))
	binary.NativeEndian.PutUint16(b[2:], typ)
	copy(b[unix.SizeofRtAttr:], data)
	return b
}

func u32(v uint32) []byte {
	b := make([]byte, 4)
	binary.NativeEndian.PutUint32(b, v)
	return b
}

// do sends one request and waits for its acknowledgement.
func (c *netlinkConn) do(typ, flags uint16, body []byte) error {
	c.seq++
	msg := make([]byte, unix.NLMSG_HDRLEN, unix.NLMSG_HDRLEN+len(body))
	msg = append(msg, body...)
	binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], typ)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK|flags)
	binary.NativeEndian.PutUint32(msg[8:], c.seq)
	if err := unix.Sendto(c.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	buf := make([]byte, 8192)
	for {
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			return fmt.Errorf("netlink receive: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("netlink parse: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != c.seq || m.Header.Type != unix.NLMSG_ERROR {
				continue
			}
			if len(m.Data) < 4 {
				return errors.New("netlink: short error message")
			}
			if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
				return unix.Errno(-code)
			}
			return nil
		}
	}
}

func (c *netlinkConn) linkUp(index int) error {
	b := make([]byte, unix.SizeofIfInfomsg)
	b[0] = unix.AF_UNSPEC
	binary.NativeEndian.PutUint32(b[4:], uint32(index))
	binary.NativeEndian.PutUint32(b[8:], unix.IFF_UP)
	binary.NativeEndian.PutUint32(b[12:], unix.IFF_UP)
	return c.do(unix.RTM_NEWLINK, 0, b)
}

func (c *netlinkConn) addAddr(index int, p netip.Prefix) error {
	b := make([]byte, unix.SizeofIfAddrmsg)
	b[0] = unix.AF_INET
	b[1] = byte(p.Bits())
	b[3] = unix.RT_SCOPE_UNIVERSE
	binary.NativeEndian.PutUint32(b[4:], uint32(index))
	a := p.Addr().AsSlice()
	b = append(b, attr(unix.IFA_LOCAL, a)...)
	b = append(b, attr(unix.IFA_ADDRESS, a)...)
	return c.do(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, b)
}

func (c *netlinkConn) addDefaultRoute(index int, gw netip.Addr) error {
	b := make([]byte, unix.SizeofRtMsg)
	b[0] = unix.AF_INET
	b[4] = unix.RT_TABLE_MAIN
	b[5] = unix.RTPROT_BOOT
	b[6] = unix.RT_SCOPE_UNIVERSE
	b[7] = unix.RTN_UNICAST
	b = append(b, attr(unix.RTA_GATEWAY, gw.AsSlice())...)
	b = append(b, attr(unix.RTA_OIF, u32(uint32(index)))...)
	return c.do(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, b)
}
