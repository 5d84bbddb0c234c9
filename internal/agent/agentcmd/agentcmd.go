// Package agentcmd wires the host agent together: a Config (from flags)
// becomes a network slot manager (hostnet), a VMM driver (qemu or
// firecracker), an image source (package image), the sandbox manager
// (package agent) and its Connect API (package agentapi), served until the
// context ends. `wrenn agent` is a thin main over Run.
//
// On exit the API stops first, then the manager. By default VMs keep
// running and their network slots stay, so the next agent on the same
// data directory reattaches them; with DestroyOnExit every sandbox is
// destroyed and the network rules are removed.
package agentcmd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"wrenn.dev/wrenn/internal/agent"
	"wrenn.dev/wrenn/internal/agent/agentapi"
	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/hostnet"
	"wrenn.dev/wrenn/internal/image"
	"wrenn.dev/wrenn/internal/vmm"
	"wrenn.dev/wrenn/internal/vmm/firecracker"
	"wrenn.dev/wrenn/internal/vmm/qemu"
)

// Log attribute keys.
const (
	logKeyTemplate = "template"
	logKeyTook     = "took"
	logKeyAddr     = "addr"
	logKeyDriver   = "driver"
	logKeyAccel    = "accelerator"
	logKeyDataDir  = "data_dir"
	logKeyErr      = "err"
)

// Defaults.
const (
	DefaultListen   = ":5008"
	DefaultDataDir  = "/var/lib/wrenn/agent"
	DefaultDriver   = "auto"
	MinSecretLength = 16
	// shutdownGrace bounds the API's graceful shutdown and the teardown.
	shutdownGrace = 15 * time.Second
)

// Config configures the host agent. Zero fields take the defaults
// RegisterFlags shows.
type Config struct {
	// Listen is the API's address; default DefaultListen.
	Listen string
	// Secret is the shared secret API callers present as a bearer token,
	// at least MinSecretLength bytes. SecretFile, when set, is read
	// instead (surrounding whitespace trimmed).
	Secret     string
	SecretFile string
	// DataDir holds the agent's records and sandbox files; default
	// DefaultDataDir.
	DataDir string
	// HostID names the host; default the hostname.
	HostID string

	// Driver is "qemu", "firecracker" or "auto" (default: qemu when its
	// binary is found, else firecracker when its binary and /dev/kvm are).
	Driver string
	// QEMUBinary is the QEMU system emulator (default from PATH);
	// Accelerator is qemu's "kvm", "tcg" or "auto" (default).
	QEMUBinary  string
	Accelerator string
	// FirecrackerBinary and JailerBinary are Firecracker's executables;
	// without a jailer, VMs run unjailed.
	FirecrackerBinary string
	JailerBinary      string
	// LazyMemory restores Firecracker snapshots lazily: guest memory is
	// served on demand by the agent's userfaultfd page server instead of
	// being read in whole. Such VMs depend on this agent process and do
	// not survive its restart.
	LazyMemory bool

	// ImageCacheDir is where guest images are built; default
	// image.DefaultCacheDir().
	ImageCacheDir string
	// EnvdBinary is the static envd put into images; default "envd" next
	// to this executable, else bin/envd, else envd in PATH.
	EnvdBinary string
	// Prebuild names images to build before serving, so that the first
	// create does not wait for a build.
	Prebuild []string

	// Budgets and timeouts; zero takes package agent's defaults.
	MaxVCPUs, MaxMemoryMiB     int
	DefaultTimeout, MaxTimeout time.Duration

	// Network slots: the prefix of everything hostnet creates, the slot
	// index range, and the uplinks egress may use (default: the host's
	// default routes' interfaces).
	NetPrefix           string
	SlotFirst, SlotLast int
	Uplinks             []string

	// DestroyOnExit destroys every sandbox and removes the network rules
	// when Run returns, instead of leaving VMs for the next agent.
	DestroyOnExit bool

	// ControlURL, when set, is a control plane to register with once the
	// API serves, using an admin API key (ControlKey, or ControlKeyFile);
	// AdvertiseURL is the address it should call this agent at (default:
	// the listener's, when that names a host).
	ControlURL, ControlKey, ControlKeyFile, AdvertiseURL string

	// Logger receives everything's logs; default slog.Default().
	Logger *slog.Logger

	// EnvdPort is envd's port in the guests; default agent.DefaultEnvdPort.
	EnvdPort int

	// For embedding the agent (tests, `wrenn dev`): when set, these are
	// used instead of the real ones.
	VMM      vmm.Driver
	Images   agent.ImageSource
	Network  agent.Network
	Listener net.Listener
	// Ready, when set, is called with the API's address once it serves.
	Ready func(addr net.Addr)
}

// RegisterFlags binds c's fields to flags on fs, with the defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Listen, "listen", DefaultListen, "address of the host agent API (HTTP/1.1 and h2c)")
	fs.StringVar(&c.SecretFile, "secret-file", "", "file holding the shared secret API callers present as a bearer token (required)")
	fs.StringVar(&c.DataDir, "data-dir", DefaultDataDir, "directory for sandbox records and files")
	fs.StringVar(&c.HostID, "host-id", "", "this host's name (default: the hostname)")
	fs.StringVar(&c.Driver, "driver", DefaultDriver, "VMM driver: qemu, firecracker or auto")
	fs.StringVar(&c.QEMUBinary, "qemu", "", "QEMU system emulator (default: qemu-system-x86_64 from PATH)")
	fs.StringVar(&c.Accelerator, "accel", "auto", "qemu accelerator: kvm, tcg or auto (KVM only when a probe boot works)")
	fs.StringVar(&c.FirecrackerBinary, "firecracker", "", "firecracker executable (default: firecracker from PATH)")
	fs.StringVar(&c.JailerBinary, "jailer", "", "firecracker's jailer executable (default: no jailer)")
	fs.BoolVar(&c.LazyMemory, "lazy-memory", false, "firecracker: restore snapshots lazily through the agent's userfaultfd page server (such VMs do not survive an agent restart)")
	fs.StringVar(&c.ImageCacheDir, "image-cache", image.DefaultCacheDir(), "where guest images are built and kept")
	fs.StringVar(&c.EnvdBinary, "envd", "", "static envd binary to put into images (default: envd next to wrenn, bin/envd, or from PATH)")
	fs.Func("prebuild", "comma-separated images to build before serving (e.g. minimal,base)", func(s string) error {
		c.Prebuild = splitList(s)
		return nil
	})
	fs.IntVar(&c.MaxVCPUs, "max-vcpus", 0, "vCPU budget over all sandboxes (default: 4 per host CPU)")
	fs.IntVar(&c.MaxMemoryMiB, "max-memory-mib", 0, "memory budget over all sandboxes in MiB (default: 80% of the host's)")
	fs.DurationVar(&c.DefaultTimeout, "default-timeout", agent.DefaultTimeout, "a sandbox's lifetime when its request names none")
	fs.DurationVar(&c.MaxTimeout, "max-timeout", agent.DefaultMaxTimeout, "the longest lifetime a request may ask for")
	fs.StringVar(&c.NetPrefix, "net-prefix", hostnet.DefaultPrefix, "name prefix of the network namespaces, veths and nftables table the agent makes")
	fs.IntVar(&c.SlotFirst, "slot-first", hostnet.DefaultFirst, "first network slot index")
	fs.IntVar(&c.SlotLast, "slot-last", hostnet.DefaultLast, "last network slot index")
	fs.Func("uplinks", "comma-separated interfaces sandbox egress may use (default: those of the default routes)", func(s string) error {
		c.Uplinks = splitList(s)
		return nil
	})
	fs.StringVar(&c.ControlURL, "control-url", "", "control plane to register this host with (e.g. http://control:8080)")
	fs.StringVar(&c.ControlKeyFile, "control-key-file", "", "file holding an admin API key of that control plane")
	fs.StringVar(&c.AdvertiseURL, "advertise-url", "", "the address the control plane calls this agent at (default: the listen address)")
	fs.BoolVar(&c.DestroyOnExit, "destroy-on-exit", false, "destroy every sandbox when the agent exits (default: leave VMs for the next agent)")
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// withDefaults fills in defaults, reads the secret and validates.
func (c Config) withDefaults() (Config, error) {
	if c.Listen == "" && c.Listener == nil {
		c.Listen = DefaultListen
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if c.Driver == "" {
		c.Driver = DefaultDriver
	}
	if c.ImageCacheDir == "" {
		c.ImageCacheDir = image.DefaultCacheDir()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.SecretFile != "" {
		b, err := os.ReadFile(c.SecretFile)
		if err != nil {
			return c, fmt.Errorf("read secret file: %w", err)
		}
		c.Secret = strings.TrimSpace(string(b))
	}
	var errs []error
	if len(c.Secret) < MinSecretLength {
		errs = append(errs, fmt.Errorf("a shared secret of at least %d bytes is required (-secret-file)", MinSecretLength))
	}
	switch c.Driver {
	case "auto", "qemu", "firecracker":
	default:
		errs = append(errs, fmt.Errorf("unknown driver %q (qemu, firecracker, auto)", c.Driver))
	}
	if err := errors.Join(errs...); err != nil {
		return c, fmt.Errorf("agent config: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	return c, nil
}

// closer is one teardown step, run in reverse order of setup.
type closer struct {
	name string
	fn   func(ctx context.Context) error
}

// Run runs the host agent until ctx ends (nil) or serving fails.
func Run(ctx context.Context, cfg Config) (err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return err
	}
	log := cfg.Logger
	var closers []closer
	defer func() {
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
		defer cancel()
		for i := len(closers) - 1; i >= 0; i-- {
			if cerr := closers[i].fn(tctx); cerr != nil {
				err = errors.Join(err, fmt.Errorf("stop %s: %w", closers[i].name, cerr))
			}
		}
	}()

	network := cfg.Network
	if network == nil {
		mgr, err := hostnet.New(hostnet.Config{
			Prefix: cfg.NetPrefix, First: cfg.SlotFirst, Last: cfg.SlotLast, Uplinks: cfg.Uplinks, Logger: log,
		})
		if err != nil {
			return err
		}
		first, last := cfg.SlotFirst, cfg.SlotLast
		if first == 0 && last == 0 {
			first, last = hostnet.DefaultFirst, hostnet.DefaultLast
		}
		network = &hostNetwork{Manager: mgr, total: last - first + 1}
		if cfg.DestroyOnExit {
			closers = append(closers, closer{"network slots", mgr.Close})
		}
	}
	src := cfg.Images
	if src == nil {
		src = NewImageSource(&image.Builder{
			CacheDir:   cfg.ImageCacheDir,
			EnvdBinary: envdBinary(cfg.EnvdBinary),
			Logger:     log, // build steps are logged as they go
		})
	}
	driver := cfg.VMM
	if driver == nil {
		if driver, err = newDriver(ctx, cfg, src); err != nil {
			return err
		}
	}
	for _, name := range cfg.Prebuild {
		start := time.Now()
		if _, err := src.Lookup(ctx, name); err != nil {
			return fmt.Errorf("prebuild image %s: %w", name, err)
		}
		log.Info("image ready", logKeyTemplate, name, logKeyTook, time.Since(start))
	}

	m, err := agent.New(agent.Config{
		DataDir:        cfg.DataDir,
		HostID:         cfg.HostID,
		Driver:         driver,
		Images:         src,
		Network:        network,
		EnvdPort:       cfg.EnvdPort,
		MaxVCPUs:       cfg.MaxVCPUs,
		MaxMemoryMiB:   cfg.MaxMemoryMiB,
		DefaultTimeout: cfg.DefaultTimeout,
		MaxTimeout:     cfg.MaxTimeout,
		Logger:         log,
	})
	if err != nil {
		return err
	}
	if err := m.Start(ctx); err != nil {
		return err
	}
	closers = append(closers, closer{"sandbox manager", func(ctx context.Context) error {
		var errs []error
		if cfg.DestroyOnExit {
			errs = append(errs, m.DestroyAll(ctx))
		}
		return errors.Join(append(errs, m.Stop(ctx))...)
	}})

	handler, err := agentapi.NewHandler(m, agentapi.Options{Secret: cfg.Secret, Logger: log})
	if err != nil {
		return err
	}
	ln := cfg.Listener
	if ln == nil {
		if ln, err = net.Listen("tcp", cfg.Listen); err != nil {
			return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
		}
	}
	srv := agentapi.NewServer(handler, log)
	srv.BaseContext = func(net.Listener) context.Context { return context.WithoutCancel(ctx) }
	served := make(chan struct{})
	var serveErr error
	go func() {
		serveErr = srv.Serve(ln)
		close(served)
	}()
	closers = append(closers, closer{"api server", func(ctx context.Context) error {
		err := srv.Shutdown(ctx)
		if err != nil {
			err = srv.Close() // streams that would not end
		}
		<-served
		return err
	}})
	caps := driver.Capabilities()
	log.Info("host agent serving", logKeyAddr, ln.Addr().String(), logKeyDriver, driver.Name(), logKeyAccel, caps.Accelerator,
		logKeyDataDir, cfg.DataDir)
	if cfg.Ready != nil {
		cfg.Ready(ln.Addr())
	}
	if cfg.ControlURL != "" {
		address, err := advertised(cfg, ln.Addr())
		if err != nil {
			return err
		}
		regDone := make(chan struct{})
		regCtx, cancelReg := context.WithCancel(ctx)
		go func() {
			defer close(regDone)
			register(regCtx, cfg, address, log)
		}()
		defer func() {
			cancelReg()
			<-regDone
		}()
	}
	select {
	case <-ctx.Done():
		log.Info("host agent stopping")
		return nil
	case <-served:
		return fmt.Errorf("serve host agent api: %w", serveErr)
	}
}

// newDriver makes the configured VMM driver.
func newDriver(ctx context.Context, cfg Config, images agent.ImageSource) (vmm.Driver, error) {
	name := cfg.Driver
	if name == "auto" {
		name = autoDriver(cfg)
		if name == "" {
			return nil, errdefs.FailedPrecondition("no VMM found: install qemu-system-x86, or give -firecracker on a host where KVM runs guests")
		}
	}
	switch name {
	case "firecracker":
		bin := cfg.FirecrackerBinary
		if bin == "" {
			bin = "firecracker"
		}
		fc := firecracker.Config{Binary: bin, Jailer: cfg.JailerBinary, Logger: cfg.Logger}
		if cfg.LazyMemory {
			fc.UFFDSocket = agent.UFFDSocketPath
		}
		return firecracker.New(fc)
	default: // qemu
		qc := qemu.Config{Binary: cfg.QEMUBinary, Accelerator: cfg.Accelerator, Logger: cfg.Logger}
		if probesKVM(cfg.Accelerator) {
			// The probe boots a real kernel: the minimal image's. Without
			// one, qemu does not trust KVM and runs TCG.
			if t, err := images.Lookup(ctx, image.Minimal); err != nil {
				cfg.Logger.Warn("no kernel for the KVM probe; using TCG", logKeyErr, err)
			} else {
				qc.ProbeKernel = t.Kernel
			}
		}
		return qemu.New(ctx, qc)
	}
}

// autoDriver picks qemu when it is installed, else firecracker when its
// binary and /dev/kvm exist, else "".
func autoDriver(cfg Config) string {
	q := cfg.QEMUBinary
	if q == "" {
		q = "qemu-system-x86_64"
	}
	if _, err := exec.LookPath(q); err == nil {
		return "qemu"
	}
	fc := cfg.FirecrackerBinary
	if fc == "" {
		fc = "firecracker"
	}
	if _, err := exec.LookPath(fc); err == nil {
		if _, err := os.Stat("/dev/kvm"); err == nil {
			return "firecracker"
		}
	}
	return ""
}

// probesKVM reports whether qemu will try KVM with a probe boot.
func probesKVM(accel string) bool {
	if accel != "" && accel != "auto" {
		return false
	}
	_, err := os.Stat("/dev/kvm")
	return err == nil
}

// envdBinary resolves the envd to put into images.
func envdBinary(flag string) string {
	if flag != "" {
		return flag
	}
	if exe, err := os.Executable(); err == nil {
		if p := filepath.Join(filepath.Dir(exe), "envd"); isFile(p) {
			return p
		}
	}
	if isFile("bin/envd") {
		return "bin/envd"
	}
	if p, err := exec.LookPath("envd"); err == nil {
		return p
	}
	return "envd"
}

func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// hostNetwork is the real network slot manager, able to count free slots.
type hostNetwork struct {
	*hostnet.Manager
	total int
}

// FreeSlots implements agent.SlotCounter.
func (n *hostNetwork) FreeSlots() int { return n.total - len(n.InUse()) }
