// Command envd is the daemon inside every Wrenn sandbox VM. It speaks E2B's
// envd wire contract on port 49983. As PID 1 it first sets up the guest
// (mounts, kernel modules, hostname) and then supervises a child envd that
// serves, reaping every orphaned process.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"

	"wrenn.dev/wrenn/internal/envd"
	"wrenn.dev/wrenn/internal/envd/initramfs"
	"wrenn.dev/wrenn/internal/envd/pid1"
	"wrenn.dev/wrenn/internal/version"
)

// childEnv marks the envd process that PID 1 supervises.
const childEnv = "WRENN_ENVD_CHILD"

// envdOOMScore protects the serving envd from the OOM killer in a guest.
const envdOOMScore = "-900"

type config struct {
	envd.Config
	port     int
	hostname string
	logLevel slog.Level
}

func main() {
	// Inside the initramfs, envd's first stage loads the virtio modules,
	// mounts the root disk and execs the real envd as PID 1 there. Main
	// never returns.
	if initramfs.Active() {
		initramfs.Main(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	}
	cfg, showVersion, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "envd:", err)
		os.Exit(2)
	}
	if showVersion {
		fmt.Printf("envd %s (envd protocol %s)\n", version.Version, version.EnvdCompat)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "envd:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (config, bool, error) {
	var cfg config
	fs := flag.NewFlagSet("envd", flag.ContinueOnError)
	fs.IntVar(&cfg.port, "port", envd.DefaultPort, "port to listen on")
	isNotFC := fs.Bool("isnotfc", false, "not running inside a VM: no MMDS, no clock setting, no port forwarding, no init duties (for running on a host)")
	noCgroups := fs.Bool("no-cgroups", false, "run processes without cgroups")
	fs.StringVar(&cfg.CgroupRoot, "cgroup-root", "/sys/fs/cgroup", "cgroup2 mount to create process groups under")
	fs.StringVar(&cfg.DefaultUser, "default-user", "root", "user requests act as until /init sets one")
	fs.StringVar(&cfg.hostname, "hostname", "sandbox", "hostname to set when running as PID 1")
	noPortForward := fs.Bool("no-port-forward", false, "do not re-expose loopback-only listeners")
	fs.TextVar(&cfg.logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn, error")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return cfg, false, err
	}
	if fs.NArg() > 0 {
		return cfg, false, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if cfg.port <= 0 || cfg.port > 65535 {
		return cfg, false, fmt.Errorf("-port %d is out of range 1-65535", cfg.port)
	}
	cfg.Addr = fmt.Sprintf(":%d", cfg.port)
	cfg.MMDS = !*isNotFC
	cfg.SetClock = !*isNotFC
	// On a host, re-exposing loopback-only listeners would publish the
	// host's private services; forwarding is for guests only.
	cfg.PortForward = !*noPortForward && !*isNotFC
	if *noCgroups {
		cfg.CgroupRoot = ""
	}
	return cfg, *showVersion, nil
}

func run(ctx context.Context, cfg config) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.logLevel}))
	if os.Getpid() == 1 && os.Getenv(childEnv) == "" {
		return runInit(ctx, cfg, log)
	}
	cfg.Logger = log
	if os.Getenv(childEnv) != "" {
		// Supervised in a guest: keep envd alive under memory pressure;
		// user processes get a higher score (see package process).
		if err := os.WriteFile("/proc/self/oom_score_adj", []byte(envdOOMScore), 0); err != nil {
			log.Warn("lower envd's OOM score", "err", err)
		}
	}
	srv, err := envd.New(cfg.Config)
	if err != nil {
		return err
	}
	return srv.ListenAndServe(ctx)
}

// runInit is PID 1: prepare the guest, then supervise a serving envd.
func runInit(ctx context.Context, cfg config, log *slog.Logger) error {
	// Modules come from the kernel command line (wrenn.modules=...), read
	// once /proc is mounted.
	if err := pid1.Setup(pid1.Config{
		Mount:          true,
		CmdlineModules: true,
		Hostname:       cfg.hostname,
		Logger:         log,
	}); err != nil {
		log.Error("guest setup incomplete", "err", err)
	}
	self, err := os.Executable()
	if err != nil {
		self = "/proc/self/exe"
	}
	env := append(os.Environ(), childEnv+"=1")
	code := pid1.Supervise(ctx, append([]string{self}, os.Args[1:]...), env, log)
	log.Info("envd child finished; powering off", "code", code)
	// PID 1 must not exit (the kernel would panic): flush disks and power off.
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		return fmt.Errorf("power off: %w", err)
	}
	return nil
}
