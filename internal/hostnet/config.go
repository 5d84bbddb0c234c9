package hostnet

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"

	"wrenn.dev/wrenn/internal/errdefs"
)

// Defaults for the zero fields of [Config].
const (
	DefaultPrefix = "wrenn"
	DefaultFirst  = 1
	DefaultLast   = 1024
)

// Default address ranges for the zero fields of [Config].
var (
	DefaultHostCIDR = netip.MustParsePrefix("10.11.0.0/16")
	DefaultVethCIDR = netip.MustParsePrefix("10.12.0.0/16")
)

// maxIfName is the longest interface name Linux accepts (IFNAMSIZ - 1).
const maxIfName = 15

// Config configures a [Manager]. The zero value of each field means its
// default.
type Config struct {
	// Prefix names everything the manager creates: namespaces
	// "<prefix>-<N>", host veths "<prefix>v<N>" and the nftables table. It is
	// lowercase letters and digits, starting with a letter. Default "wrenn".
	Prefix string
	// First and Last bound the slot indices this manager allocates,
	// inclusive. Managers sharing a host need disjoint ranges (the slot
	// addresses derive from the index); they may share a prefix. Default
	// 1..1024.
	First, Last int
	// HostCIDR holds slot N's host-visible address, the Nth address of the
	// prefix. IPv4. Default 10.11.0.0/16.
	HostCIDR netip.Prefix
	// VethCIDR holds slot N's veth pair, a /31 at addresses 2N (host end)
	// and 2N+1 (namespace end). IPv4. Default 10.12.0.0/16.
	VethCIDR netip.Prefix
	// Uplinks names the host interfaces that slots with egress on may send
	// through (masqueraded). Empty means the interfaces of the host's IPv4
	// default routes, looked up again (a dump of the main routing table)
	// whenever a slot is acquired or its egress is switched, so a changed
	// default route is followed; a host with a very large routing table
	// should name its uplinks instead.
	Uplinks []string
	// Logger receives the manager's logs. Default: discarded.
	Logger *slog.Logger
}

// withDefaults returns c with its zero fields set to the defaults, or an
// error of class ErrInvalidArgument when a field is unusable.
func (c Config) withDefaults() (Config, error) {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.First == 0 && c.Last == 0 {
		c.First, c.Last = DefaultFirst, DefaultLast
	}
	if !c.HostCIDR.IsValid() {
		c.HostCIDR = DefaultHostCIDR
	}
	if !c.VethCIDR.IsValid() {
		c.VethCIDR = DefaultVethCIDR
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	c.HostCIDR = c.HostCIDR.Masked()
	c.VethCIDR = c.VethCIDR.Masked()
	c.Uplinks = append([]string(nil), c.Uplinks...)

	var errs []error
	if !validPrefix(c.Prefix) {
		errs = append(errs, fmt.Errorf("prefix %q is not lowercase letters and digits starting with a letter", c.Prefix))
	}
	if c.First < 1 || c.Last < c.First {
		errs = append(errs, fmt.Errorf("slot range %d..%d is empty or starts below 1", c.First, c.Last))
	}
	if n := len(vethName(c.Prefix, c.Last)); n > maxIfName {
		errs = append(errs, fmt.Errorf("veth name %q is %d bytes, longer than %d: shorten the prefix", vethName(c.Prefix, c.Last), n, maxIfName))
	}
	if !c.HostCIDR.Addr().Is4() || !c.VethCIDR.Addr().Is4() {
		errs = append(errs, errors.New("host and veth CIDRs must be IPv4"))
	} else {
		if size(c.HostCIDR) <= uint64(c.Last) {
			errs = append(errs, fmt.Errorf("host CIDR %s has no address for slot %d", c.HostCIDR, c.Last))
		}
		if size(c.VethCIDR) <= 2*uint64(c.Last)+1 {
			errs = append(errs, fmt.Errorf("veth CIDR %s has no /31 for slot %d", c.VethCIDR, c.Last))
		}
		if c.HostCIDR.Overlaps(c.VethCIDR) {
			errs = append(errs, fmt.Errorf("host CIDR %s overlaps veth CIDR %s", c.HostCIDR, c.VethCIDR))
		}
		for _, p := range []netip.Prefix{c.HostCIDR, c.VethCIDR} {
			if p.Overlaps(linkLocal) {
				errs = append(errs, fmt.Errorf("CIDR %s overlaps the link-local range %s the guests use", p, linkLocal))
			}
		}
	}
	for _, u := range c.Uplinks {
		if u == "" || len(u) > maxIfName || strings.ContainsAny(u, "/ \x00") {
			errs = append(errs, fmt.Errorf("uplink %q is not an interface name", u))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return c, fmt.Errorf("hostnet config: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	return c, nil
}

func validPrefix(p string) bool {
	if p == "" || p[0] < 'a' || p[0] > 'z' {
		return false
	}
	for _, r := range p {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') {
			return false
		}
	}
	return true
}

// size is the number of addresses in the IPv4 prefix p.
func size(p netip.Prefix) uint64 { return 1 << (32 - p.Bits()) }

// nthAddr is the nth address of the IPv4 prefix p; n must fit.
func nthAddr(p netip.Prefix, n uint64) netip.Addr {
	b := p.Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// Names and addresses of slot n.

func nsName(prefix string, n int) string   { return prefix + "-" + strconv.Itoa(n) }
func vethName(prefix string, n int) string { return prefix + "v" + strconv.Itoa(n) }

func (c Config) hostIP(n int) netip.Addr       { return nthAddr(c.HostCIDR, uint64(n)) }
func (c Config) vethHostAddr(n int) netip.Addr { return nthAddr(c.VethCIDR, 2*uint64(n)) }
func (c Config) vethNSAddr(n int) netip.Addr   { return nthAddr(c.VethCIDR, 2*uint64(n)+1) }

// tableName is the root-namespace nftables table of the manager with this
// configuration: prefix and range, so that managers sharing a prefix with
// disjoint ranges do not share (and tear down) each other's table.
func (c Config) tableName() string { return tableName(c.Prefix, c.First, c.Last) }

func tableName(prefix string, first, last int) string {
	return fmt.Sprintf("%s_%d_%d", prefix, first, last)
}

// parseIndex returns n when name is exactly prefix+sep+<n> with n written
// canonically (no sign, no leading zero).
func parseIndex(name, prefix, sep string) (int, bool) {
	rest, ok := strings.CutPrefix(name, prefix+sep)
	if !ok || rest == "" || (rest[0] == '0' && rest != "0") {
		return 0, false
	}
	for _, r := range rest {
		if r < '0' || r > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(rest)
	return n, err == nil
}

// parseTableName returns the range of a table named by tableName for prefix.
func parseTableName(name, prefix string) (first, last int, ok bool) {
	rest, ok := strings.CutPrefix(name, prefix+"_")
	if !ok {
		return 0, 0, false
	}
	a, b, ok := strings.Cut(rest, "_")
	if !ok {
		return 0, 0, false
	}
	first, ok1 := parseIndex(a, "", "")
	last, ok2 := parseIndex(b, "", "")
	return first, last, ok1 && ok2
}

func (c Config) inRange(n int) bool { return n >= c.First && n <= c.Last }
