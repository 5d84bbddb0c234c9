// Package agente2e holds the host agent's end-to-end tests: real QEMU
// VMs (under TCG where the host has no KVM) booted from the "minimal"
// guest image, real network slots (network namespaces, veths, taps and
// nftables rules), and the real envd inside each guest.
//
// The test binary builds envd once ($WRENN_ENVD_BIN skips that), builds
// the minimal image once into a cache that outlives the run
// ($WRENN_IMAGE_CACHE, else /var/tmp/wrenn-test-images; the kernel and the
// image are cached by content hash, so later runs only hash), and runs one
// host agent in process (agentcmd.Run) on a loopback listener, with its
// own data directory and its own network slot prefix and index range. The
// tests talk to that agent only through the generated Connect client with
// the shared secret, as the control plane does; they look at the host
// (/proc, /run/netns, links, the agent's data directory) only to check
// what the agent left behind.
//
// The tests need root, /dev/net/tun, nf_tables, qemu-system-x86_64,
// busybox-static and mkfs.ext4 (scripts/setup.sh installs them). A
// missing one fails the run with a message saying what is missing; there
// are no skips.
//
// Network safety: every connection the tests make goes to loopback, to a
// slot's addresses (which live in namespaces or on veths the agent
// creates), or to an address the tests put on a dummy interface of their
// own; sandboxes run without egress and with an uplink set that names no
// real interface.
//
// MeasureBoot, in a non-test file, is the measurement the benchmarks can
// call: create latency (cold boot to envd ready) and the VMM's memory
// overhead per idle sandbox, through the same API.
package agente2e
