package initramfs

import (
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestActiveIsFalseOnTheHost(t *testing.T) {
	if Active() {
		t.Fatal("Active() is true outside an initramfs")
	}
}

func TestResolveParams(t *testing.T) {
	m := Manifest{Modules: []string{"/lib/modules/x/virtio.ko"}, Root: "/dev/vdb", Init: "/sbin/init"}
	p, err := resolveParams(m, "console=ttyS0 wrenn.root=/dev/vda quiet wrenn.init=/usr/local/bin/envd ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off\n")
	if err != nil {
		t.Fatal(err)
	}
	if p.root != "/dev/vda" || p.init != "/usr/local/bin/envd" || p.fstype != DefaultFSType || len(p.modules) != 1 {
		t.Errorf("params %+v", p)
	}
	if p.net == nil || p.net.addr.String() != "10.0.2.15/24" || p.net.gateway.String() != "10.0.2.2" || p.net.dev != "eth0" {
		t.Errorf("net %+v", p.net)
	}
	// wrenn.ip wins over ip; defaults apply without a manifest value.
	p, err = resolveParams(Manifest{}, "ip=1.2.3.4::::::off wrenn.ip=169.254.0.21::169.254.0.22:255.255.255.252::eth1:off:8.8.4.4")
	if err != nil {
		t.Fatal(err)
	}
	if p.root != DefaultRoot || p.init != DefaultInit || p.net.addr.String() != "169.254.0.21/30" || p.net.dev != "eth1" ||
		strings.Join(p.net.dns, ",") != "8.8.4.4" {
		t.Errorf("params %+v net %+v", p, p.net)
	}
	if _, err := resolveParams(Manifest{}, "wrenn.init=relative/envd"); err == nil {
		t.Error("a relative init was accepted")
	}
}

func TestParseIPArg(t *testing.T) {
	for _, tc := range []struct {
		in   string
		ok   bool
		none bool
	}{
		{"off", true, true},
		{"none", true, true},
		{"dhcp", false, false},
		{"10.0.0.2::10.0.0.1:255.255.255.0", true, false},
		{"10.0.0.2:::255.255.255.0::eth0:off", true, false},
		{"10.0.0.2::10.0.0.1:255.0.255.0::eth0:off", false, false}, // non-contiguous mask
		{"10.0.0.2::10.0.0.1:::eth0:off", false, false},            // no mask
		{"fe80::1", false, false},
		{"10.0.0.2::10.0.0.1:255.255.255.0::eth0:dhcp", false, false},
	} {
		c, err := parseIPArg(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("parseIPArg(%q) error %v, want ok=%v", tc.in, err, tc.ok)
		}
		if tc.ok && (c == nil) != tc.none {
			t.Errorf("parseIPArg(%q) = %+v", tc.in, c)
		}
	}
}

// TestConfigureNetwork applies a configuration to a tap device in a fresh
// network namespace and reads it back from the kernel.
func TestConfigureNetwork(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("no /dev/net/tun")
	}
	errc := make(chan error, 1)
	go func() {
		// This thread enters a new network namespace and is never
		// unlocked, so it ends with the goroutine.
		runtime.LockOSThread()
		errc <- configureInNewNetNS(t)
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func configureInNewNetNS(t *testing.T) error {
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return err
	}
	tun, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer tun.Close()
	ifr, err := unix.NewIfreq("eth7")
	if err != nil {
		return err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(int(tun.Fd()), unix.TUNSETIFF, ifr); err != nil {
		return err
	}
	c, err := parseIPArg("192.168.77.2::192.168.77.1:255.255.255.0::eth7:off")
	if err != nil {
		return err
	}
	log := testLogger(t)
	if err := configureNetwork(c, time.Now().Add(5*time.Second), log); err != nil {
		return err
	}
	// Applying it twice is fine (replace, not add).
	if err := configureNetwork(c, time.Now().Add(5*time.Second), log); err != nil {
		return err
	}
	ifc, err := net.InterfaceByName("eth7")
	if err != nil {
		return err
	}
	if ifc.Flags&net.FlagUp == 0 {
		t.Errorf("eth7 is not up: %v", ifc.Flags)
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		return err
	}
	var v4 []string
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil {
			v4 = append(v4, a.String())
		}
	}
	if strings.Join(v4, " ") != "192.168.77.2/24" {
		t.Errorf("eth7 IPv4 addresses %v", v4)
	}
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		return err
	}
	if lo.Flags&net.FlagUp == 0 {
		t.Error("lo is not up")
	}
	// /proc/net follows the thread group leader; this thread is the one
	// in the new namespace.
	routes, err := os.ReadFile("/proc/thread-self/net/route")
	if err != nil {
		return err
	}
	// Default route: destination 0, gateway 192.168.77.1 (little-endian hex 014DA8C0).
	if !strings.Contains(string(routes), "eth7\t00000000\t014DA8C0") {
		t.Errorf("no default route via 192.168.77.1:\n%s", routes)
	}
	// An interface that never appears times out.
	missing, _ := parseIPArg("192.168.78.2:::255.255.255.0::eth9:off")
	if err := configureNetwork(missing, time.Now().Add(200*time.Millisecond), log); err == nil {
		t.Error("configuring a missing interface succeeded")
	}
	return nil
}

func TestRemoveTreeStaysOnItsDevice(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{"a/b/c.txt", "a/d.txt", "e.txt"} {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte("12345"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	mounted := false
	if os.Geteuid() == 0 {
		// A mount inside must be left alone, like /newroot.
		mnt := filepath.Join(dir, "newroot")
		if err := os.Mkdir(mnt, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err == nil {
			mounted = true
			defer unix.Unmount(mnt, unix.MNT_DETACH)
			if err := os.WriteFile(filepath.Join(mnt, "keep"), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	freed, err := removeTree(dir, st.Dev)
	if err != nil {
		t.Fatal(err)
	}
	if freed != 15+int64(len("/etc/passwd")) { // three files and a symlink
		t.Errorf("freed %d bytes, want 26", freed)
	}
	entries, _ := os.ReadDir(dir)
	var left []string
	for _, e := range entries {
		left = append(left, e.Name())
	}
	want := ""
	if mounted {
		want = "newroot"
		if _, err := os.Stat(filepath.Join(dir, "newroot", "keep")); err != nil {
			t.Errorf("a file on the mounted filesystem was removed: %v", err)
		}
	}
	if strings.Join(left, ",") != want {
		t.Errorf("left %v, want %q", left, want)
	}
}
