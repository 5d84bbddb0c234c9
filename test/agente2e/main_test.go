package agente2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/nftables"
	"go.uber.org/goleak"

	"wrenn.dev/wrenn/internal/agent/agentapi"
	"wrenn.dev/wrenn/internal/agent/agentcmd"
	pb "wrenn.dev/wrenn/internal/gen/hostagent/v1"
	"wrenn.dev/wrenn/internal/gen/hostagent/v1/hostagentv1connect"
	"wrenn.dev/wrenn/internal/image"
)

// The agent's network slots: a prefix and an index range no other test
// package uses. Slot N's host IP is 10.11.0.0 + N (hostnet's default host
// CIDR, which agentcmd does not change).
const (
	netPrefix = "wre2e"
	slotFirst = 880
	slotLast  = 887
	// noUplink is the only uplink the agent may send egress through: no
	// interface has that name, so nothing a guest sends leaves the host.
	noUplink = "wre2enoup"
	envdPort = 49983
)

var defaultHostCIDR = netip.MustParsePrefix("10.11.0.0/16")

// The shared state of the test binary, set up by TestMain.
var (
	workDir  string // removed at the end unless a test failed
	dataDir  string // the agent's data directory
	envdBin  string
	cacheDir string
	logPath  string // the agents' logs
	secret   string
	agent    *agentProc // the running agent; replaced by restart
)

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) (code int) {
	if err := setUp(); err != nil {
		fmt.Fprintln(os.Stderr, "agente2e: FAIL: set up:", err)
		if workDir != "" {
			fmt.Fprintf(os.Stderr, "agente2e: agent logs and data kept in %s\n", workDir)
		}
		return 1
	}
	defer func() {
		if code != 0 {
			fmt.Fprintf(os.Stderr, "agente2e: agent logs and data kept in %s\n", workDir)
			return
		}
		os.RemoveAll(workDir)
	}()
	code = m.Run()
	if err := tearDown(); err != nil {
		fmt.Fprintln(os.Stderr, "agente2e: FAIL: tear down:", err)
		code = 1
	}
	if code == 0 {
		// Everything the agents started (sandbox watchers, samplers, HTTP
		// transports, API streams) is over once the last one stopped.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "agente2e: FAIL: goroutines leaked:", err)
			code = 1
		}
	}
	return code
}

// setUp checks the host, builds envd and the minimal image, and starts
// the agent.
func setUp() error {
	if err := checkHost(); err != nil {
		return err
	}
	var err error
	if workDir, err = os.MkdirTemp("", "wrenn-agente2e-"); err != nil {
		return err
	}
	dataDir = filepath.Join(workDir, "data")
	logPath = filepath.Join(workDir, "agent.log")
	secret = randomHex(16)
	killStale()

	start := time.Now()
	if envdBin = os.Getenv("WRENN_ENVD_BIN"); envdBin == "" {
		envdBin = filepath.Join(workDir, "envd")
		cmd := exec.Command("go", "build", "-trimpath", "-o", envdBin, "./cmd/envd")
		cmd.Dir = moduleRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build envd: %v\n%s", err, out)
		}
	}
	fmt.Fprintf(os.Stderr, "agente2e: envd %s (%s)\n", envdBin, time.Since(start).Round(time.Millisecond))

	if cacheDir = os.Getenv("WRENN_IMAGE_CACHE"); cacheDir == "" {
		cacheDir = filepath.Join("/var/tmp", "wrenn-test-images")
		if fi, err := os.Stat("/var/tmp"); err != nil || !fi.IsDir() {
			cacheDir = filepath.Join(os.TempDir(), "wrenn-test-images")
		}
	}
	start = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	b := &image.Builder{CacheDir: cacheDir, EnvdBinary: envdBin, Progress: prefixWriter{os.Stderr}}
	img, err := b.Build(ctx, image.Minimal)
	if err != nil {
		return fmt.Errorf("build the minimal image in %s: %w", cacheDir, err)
	}
	fmt.Fprintf(os.Stderr, "agente2e: image %s (%s)\n", img.Dir, time.Since(start).Round(time.Millisecond))

	a, err := startAgent("127.0.0.1:0", false)
	if err != nil {
		return err
	}
	agent = a
	return nil
}

// tearDown stops the agent, runs one more on the same data directory
// that destroys everything on exit, and checks that nothing is left.
func tearDown() error {
	var errs []error
	if agent != nil {
		errs = append(errs, agent.stop())
	}
	last, err := startAgent("127.0.0.1:0", true)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	errs = append(errs, last.stop())
	agent = nil
	snap, err := takeSnapshot()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for what, left := range map[string][]string{
		"qemu processes":                  snap.qemu,
		"children of the test":            snap.children,
		"network namespaces":              snap.netns,
		"links":                           snap.links,
		"sandbox directories":             snap.sandboxDirs,
		"nftables tables with the prefix": snap.tables,
	} {
		if len(left) > 0 {
			errs = append(errs, fmt.Errorf("%s left after the last agent destroyed everything: %v", what, left))
		}
	}
	return errors.Join(errs...)
}

// checkHost fails with what is missing for real VMs and network slots.
func checkHost() error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (network namespaces, taps and nftables need CAP_NET_ADMIN and CAP_SYS_ADMIN)")
	}
	for _, p := range []string{"/dev/net/tun", "/bin/busybox"} {
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, p+" (busybox-static, tun)")
		}
	}
	bins := []string{"qemu-system-x86_64", "mkfs.ext4"}
	if os.Getenv("WRENN_ENVD_BIN") == "" {
		bins = append(bins, "go") // to build envd
	}
	for _, bin := range bins {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin+" in PATH (qemu-system-x86, e2fsprogs, Go)")
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("this host lacks what the agent end-to-end tests need (scripts/setup.sh installs it): %s",
			strings.Join(missing, "; "))
	}
	return nil
}

// killStale kills QEMU processes that earlier runs of this package left
// (their command lines name a data directory of this package's), so that
// they do not hold CPU or slots.
func killStale() {
	procs, _ := processes()
	for _, p := range procs {
		if strings.HasPrefix(p.Comm, "qemu-system") && strings.Contains(strings.Join(p.Cmdline, " "), "/wrenn-agente2e-") {
			fmt.Fprintf(os.Stderr, "agente2e: killing qemu pid %d left by an earlier run\n", p.PID)
			if proc, err := os.FindProcess(p.PID); err == nil {
				_ = proc.Kill()
			}
		}
	}
}

// moduleRoot is the module's directory (the tests run in test/agente2e).
func moduleRoot() string {
	wd, _ := os.Getwd()
	return filepath.Clean(filepath.Join(wd, "..", ".."))
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// prefixWriter marks the image builder's progress lines as ours.
type prefixWriter struct{ w io.Writer }

func (p prefixWriter) Write(b []byte) (int, error) {
	if _, err := fmt.Fprintf(p.w, "agente2e: image: %s", b); err != nil {
		return 0, err
	}
	return len(b), nil
}

// agentProc is one agentcmd.Run in this process.
type agentProc struct {
	url    string
	addr   *net.TCPAddr
	hc     *http.Client
	client hostagentv1connect.HostAgentClient
	cancel context.CancelFunc
	done   chan error
	logf   *os.File
}

// startAgent runs the agent on a listener at listen and waits until it
// serves. Every agent of the run shares the data directory, slot range and
// secret.
func startAgent(listen string, destroyOnExit bool) (*agentProc, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		ln.Close()
		return nil, err
	}
	fmt.Fprintf(logf, "---- agent starting on %s (destroy on exit: %v)\n", ln.Addr(), destroyOnExit)
	cfg := agentcmd.Config{
		Secret:        secret,
		DataDir:       dataDir,
		HostID:        "agente2e",
		Driver:        "qemu",
		Accelerator:   "auto",
		ImageCacheDir: cacheDir,
		EnvdBinary:    envdBin,
		Prebuild:      []string{image.Minimal},
		MaxVCPUs:      8,
		MaxMemoryMiB:  4096,
		NetPrefix:     netPrefix,
		SlotFirst:     slotFirst,
		SlotLast:      slotLast,
		Uplinks:       []string{noUplink},
		DestroyOnExit: destroyOnExit,
		Logger:        slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Listener:      ln,
	}
	ready := make(chan net.Addr, 1)
	cfg.Ready = func(a net.Addr) { ready <- a }
	ctx, cancel := context.WithCancel(context.Background())
	a := &agentProc{cancel: cancel, done: make(chan error, 1), logf: logf}
	go func() { a.done <- agentcmd.Run(ctx, cfg) }()
	select {
	case addr := <-ready:
		a.addr = addr.(*net.TCPAddr)
	case err := <-a.done:
		cancel()
		logf.Close()
		return nil, fmt.Errorf("agentcmd.Run() = %v before serving (log: %s)", err, logPath)
	case <-time.After(5 * time.Minute):
		cancel()
		return nil, fmt.Errorf("agentcmd.Run() did not serve within 5 minutes (log: %s)", logPath)
	}
	host := a.addr.IP.String()
	if a.addr.IP.IsUnspecified() {
		host = "127.0.0.1"
	}
	a.url = "http://" + net.JoinHostPort(host, fmt.Sprint(a.addr.Port))
	a.hc = agentapi.NewHTTPClient()
	a.client = agentapi.NewClient(a.hc, a.url, secret)
	return a, nil
}

// stop ends the agent and returns Run's result.
func (a *agentProc) stop() error {
	a.hc.CloseIdleConnections()
	a.cancel()
	defer a.logf.Close()
	select {
	case err := <-a.done:
		if err != nil {
			return fmt.Errorf("agentcmd.Run() = %w, want nil after its context ended", err)
		}
		return nil
	case <-time.After(2 * time.Minute):
		return errors.New("agentcmd.Run() did not return within 2 minutes of its context ending")
	}
}

// restartAgent stops the shared agent (leaving its VMs running) and starts
// a new one on the same data directory and slots, listening at listen.
func restartAgent(t *testing.T, listen string) {
	t.Helper()
	if err := agent.stop(); err != nil {
		t.Fatalf("stop the agent: %v", err)
	}
	a, err := startAgent(listen, false)
	if err != nil {
		t.Fatalf("start the agent again: %v", err)
	}
	agent = a
}

// client is the shared agent's Connect client.
func client() hostagentv1connect.HostAgentClient { return agent.client }

// testCtx is a context bounded by d and by the test.
func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// dumpLogOnFailure prints the end of the agents' log when t fails.
func dumpLogOnFailure(t *testing.T) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		b, err := os.ReadFile(logPath)
		if err != nil {
			return
		}
		const n = 6000
		if len(b) > n {
			b = b[len(b)-n:]
		}
		t.Logf("end of the agent log %s:\n%s", logPath, b)
	})
}

// createSandbox creates a sandbox and fails the test when that fails. The
// sandbox is destroyed when the test ends, if it still lives then.
func createSandbox(t *testing.T, req *pb.CreateSandboxRequest) *pb.Sandbox {
	t.Helper()
	if req.Template == "" {
		req.Template = image.Minimal
	}
	start := time.Now()
	res, err := client().CreateSandbox(testCtx(t, 3*time.Minute), connect.NewRequest(req))
	if err != nil {
		t.Fatalf("CreateSandbox(id=%s template=%s) = %v", req.Id, req.Template, err)
	}
	sb := res.Msg.GetSandbox()
	t.Logf("CreateSandbox(%s) took %s: slot host IP %s", sb.GetId(), time.Since(start).Round(time.Millisecond), sb.GetHostIp())
	if sb.GetState() != pb.SandboxState_SANDBOX_STATE_RUNNING || sb.GetEnvdAccessToken() == "" || sb.GetHostIp() == "" {
		t.Fatalf("CreateSandbox(%s) = %v; want a running sandbox with a host IP and an envd token", req.Id, sb)
	}
	id := sb.GetId()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		got, err := client().GetSandbox(ctx, connect.NewRequest(&pb.GetSandboxRequest{Id: id}))
		if err != nil || !live(got.Msg.GetSandbox().GetState()) {
			return
		}
		if _, err := client().DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{Id: id})); err != nil {
			t.Errorf("DestroySandbox(%s) at the end of the test = %v", id, err)
		}
	})
	return sb
}

func live(s pb.SandboxState) bool {
	return s != pb.SandboxState_SANDBOX_STATE_STOPPED && s != pb.SandboxState_SANDBOX_STATE_DEAD &&
		s != pb.SandboxState_SANDBOX_STATE_UNSPECIFIED
}

func getSandbox(ctx context.Context, id string) (*pb.Sandbox, error) {
	res, err := client().GetSandbox(ctx, connect.NewRequest(&pb.GetSandboxRequest{Id: id}))
	if err != nil {
		return nil, err
	}
	return res.Msg.GetSandbox(), nil
}

// waitFor polls cond every 100 ms until it returns true or d passes; it
// returns the last description cond gave.
func waitFor(d time.Duration, cond func() (bool, string)) (bool, string) {
	deadline := time.Now().Add(d)
	for {
		ok, desc := cond()
		if ok || time.Now().After(deadline) {
			return ok, desc
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// slotOf returns the network slot index of a sandbox from its host IP.
func slotOf(t *testing.T, sb *pb.Sandbox) int {
	t.Helper()
	ip, err := netip.ParseAddr(sb.GetHostIp())
	if err != nil || !defaultHostCIDR.Contains(ip) {
		t.Fatalf("sandbox %s has host IP %q, not in %s", sb.GetId(), sb.GetHostIp(), defaultHostCIDR)
	}
	a, b := ip.As4(), defaultHostCIDR.Addr().As4()
	n := (int(a[2])-int(b[2]))*256 + int(a[3]) - int(b[3])
	if n < slotFirst || n > slotLast {
		t.Fatalf("sandbox %s has host IP %s: slot %d is outside the agent's range %d..%d", sb.GetId(), ip, n, slotFirst, slotLast)
	}
	return n
}

func netnsName(slot int) string { return fmt.Sprintf("%s-%d", netPrefix, slot) }
func vethName(slot int) string  { return fmt.Sprintf("%sv%d", netPrefix, slot) }

// execResult is what one Exec call streamed.
type execResult struct {
	call     string
	pid      uint32
	stdout   []timedChunk
	stderr   []timedChunk
	exit     *pb.ExecResponse_Exited
	exitAt   time.Time
	afterEnd int // events received after the exit event
	err      error
}

type timedChunk struct {
	at   time.Time
	data []byte
}

func (r *execResult) Stdout() string { return joinChunks(r.stdout) }
func (r *execResult) Stderr() string { return joinChunks(r.stderr) }

func joinChunks(cs []timedChunk) string {
	var b strings.Builder
	for _, c := range cs {
		b.Write(c.data)
	}
	return b.String()
}

// execIn runs a command in a sandbox through the agent and collects what
// it streams, with the time each event arrived.
func execIn(ctx context.Context, req *pb.ExecRequest) *execResult {
	r := &execResult{call: fmt.Sprintf("Exec(%s, %s %q)", req.GetSandboxId(), req.GetCmd(), req.GetArgs())}
	stream, err := client().Exec(ctx, connect.NewRequest(req))
	if err != nil {
		r.err = err
		return r
	}
	defer stream.Close()
	for stream.Receive() {
		now := time.Now()
		msg := stream.Msg()
		if r.exit != nil {
			r.afterEnd++
			continue
		}
		switch ev := msg.GetEvent().(type) {
		case *pb.ExecResponse_Started_:
			r.pid = ev.Started.GetPid()
		case *pb.ExecResponse_Stdout:
			r.stdout = append(r.stdout, timedChunk{now, ev.Stdout})
		case *pb.ExecResponse_Stderr:
			r.stderr = append(r.stderr, timedChunk{now, ev.Stderr})
		case *pb.ExecResponse_Exited_:
			r.exit, r.exitAt = ev.Exited, now
		}
	}
	r.err = stream.Err()
	if r.err == nil && r.exit == nil {
		r.err = errors.New("the stream ended without an exit event")
	}
	return r
}

// shell runs script with /bin/sh -c in sandbox id and fails the test
// unless the call itself succeeds (the script's exit code is the caller's
// to check).
func shell(t *testing.T, id, script string) *execResult {
	t.Helper()
	r := execIn(testCtx(t, time.Minute), &pb.ExecRequest{SandboxId: id, Cmd: "/bin/sh", Args: []string{"-c", script}})
	if r.err != nil {
		t.Fatalf("%s = %v", r.call, r.err)
	}
	return r
}

// snapshot is what the host holds that the agent may have made or left.
type snapshot struct {
	qemu        []string // qemu processes whose command line names our data directory
	children    []string // children of this process
	netns       []string // /run/netns entries with our prefix
	links       []string // root-namespace links with our prefix
	tables      []string // nftables tables named after our prefix
	sandboxDirs []string // entries of the data directory's sandboxes/
	records     []string // entries of the data directory's state/
	fds         int      // open descriptors of this process
	sockets     int      // of which sockets
}

func takeSnapshot() (*snapshot, error) {
	s := &snapshot{}
	procs, err := processes()
	if err != nil {
		return nil, err
	}
	me := os.Getpid()
	for _, p := range procs {
		desc := fmt.Sprintf("%d %s (%c)", p.PID, p.Comm, p.State)
		if strings.HasPrefix(p.Comm, "qemu-system") && strings.Contains(strings.Join(p.Cmdline, " "), dataDir+"/") {
			s.qemu = append(s.qemu, desc)
		}
		if p.PPID == me {
			s.children = append(s.children, desc)
		}
	}
	ns, err := os.ReadDir("/run/netns")
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	for _, e := range ns {
		if strings.HasPrefix(e.Name(), netPrefix+"-") {
			s.netns = append(s.netns, e.Name())
		}
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	for _, ifc := range ifs {
		if strings.HasPrefix(ifc.Name, netPrefix) {
			s.links = append(s.links, ifc.Name)
		}
	}
	conn, err := nftables.New()
	if err != nil {
		return nil, err
	}
	tables, err := conn.ListTables()
	if err != nil {
		return nil, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, tb := range tables {
		if strings.HasPrefix(tb.Name, netPrefix+"_") {
			s.tables = append(s.tables, tb.Name)
		}
	}
	for dir, into := range map[string]*[]string{"sandboxes": &s.sandboxDirs, "state": &s.records} {
		entries, err := os.ReadDir(filepath.Join(dataDir, dir))
		if err != nil && !os.IsNotExist(err) {
			return nil, err
		}
		for _, e := range entries {
			*into = append(*into, e.Name())
		}
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, err
	}
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err != nil {
			continue // the directory's own descriptor, closed by now
		}
		s.fds++
		if strings.HasPrefix(target, "socket:") {
			s.sockets++
		}
	}
	for _, l := range [][]string{s.qemu, s.children, s.netns, s.links, s.tables, s.sandboxDirs, s.records} {
		slices.Sort(l)
	}
	return s, nil
}

// netInterface returns the index of the root-namespace link name.
func netInterface(name string) (int, error) {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return 0, err
	}
	return ifc.Index, nil
}
