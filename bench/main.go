// Command bench measures Wrenn against baselines taken in the same run and
// prints one line per figure:
//
//	metric=<name> value=<number> unit=<unit> baseline=<name>:<number> ratio=<number>
//
// The machines this runs on are shared and noisy, so only the ratios are
// meant to be compared between runs. See docs/benchmarks.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

type options struct {
	envdBin  string
	execN    int
	transfer int64
	ptyBytes int64
	only     string
	vmBoots  int
}

func main() {
	var o options
	flag.StringVar(&o.envdBin, "envd", "bin/envd", "envd binary to measure")
	flag.IntVar(&o.execN, "exec-n", 300, "exec round trips per measurement")
	flag.Int64Var(&o.transfer, "transfer-bytes", 100<<20, "bytes per upload/download")
	flag.Int64Var(&o.ptyBytes, "pty-bytes", 100<<20, "bytes of PTY output")
	flag.StringVar(&o.only, "only", "", "comma-separated metric prefixes to run (default all)")
	flag.IntVar(&o.vmBoots, "vm-boots", 3, "cold boots to measure (best is reported)")
	flag.Parse()
	ctx := context.Background()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// line prints one figure in the BENCHMARKS.md format. For "higher is
// better" units the ratio is value/baseline; for latencies it is too, so a
// ratio of 3 means three times the baseline's time.
func line(metric string, value float64, unit, baseName string, base float64) {
	ratio := 0.0
	if base != 0 {
		ratio = value / base
	}
	fmt.Printf("metric=%s value=%.4g unit=%s baseline=%s:%.4g ratio=%.3f\n", metric, value, unit, baseName, base, ratio)
}

func run(ctx context.Context, o options) error {
	want := func(name string) bool {
		if o.only == "" {
			return true
		}
		for _, p := range strings.Split(o.only, ",") {
			if strings.HasPrefix(name, p) {
				return true
			}
		}
		return false
	}
	e, err := startEnvd(ctx, o.envdBin)
	if err != nil {
		return err
	}
	defer e.stop()

	if want("envd_exec") {
		if err := benchExec(ctx, e, o.execN); err != nil {
			return fmt.Errorf("exec: %w", err)
		}
	}
	if want("envd_upload") || want("envd_download") {
		if err := benchTransfer(ctx, e, o.transfer, want); err != nil {
			return fmt.Errorf("transfer: %w", err)
		}
	}
	if want("envd_pty") {
		if err := benchPTY(ctx, e, o.ptyBytes); err != nil {
			return fmt.Errorf("pty: %w", err)
		}
	}
	if want("vm_") {
		if err := benchVM(ctx, o.envdBin, o.vmBoots); err != nil {
			return fmt.Errorf("vm: %w", err)
		}
	}
	if want("snapshot_") {
		if err := benchSnapshot(ctx, o.envdBin); err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
	}
	if want("uffd_") {
		if err := benchUFFD(ctx); err != nil {
			return fmt.Errorf("uffd: %w", err)
		}
	}
	if want("api_") || want("control_") || want("pty_ws") {
		if err := benchControl(ctx, o.envdBin, o.ptyBytes, want); err != nil {
			return fmt.Errorf("control plane: %w", err)
		}
	}
	return nil
}

// envdProc is an envd started in host mode on a free loopback port.
type envdProc struct {
	url  string
	cmd  *exec.Cmd
	dir  string
	done chan error
}

func startEnvd(ctx context.Context, bin string) (*envdProc, error) {
	abs, err := filepath.Abs(bin)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dir, err := os.MkdirTemp("", "wrenn-bench-")
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, abs, "-isnotfc", "-no-cgroups", "-no-port-forward", "-port", fmt.Sprint(port), "-log-level", "error")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start envd %s: %w", abs, err)
	}
	e := &envdProc{url: fmt.Sprintf("http://127.0.0.1:%d", port), cmd: cmd, dir: dir, done: make(chan error, 1)}
	go func() { e.done <- cmd.Wait() }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get(e.url + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusNoContent {
				return e, nil
			}
		}
		select {
		case err := <-e.done:
			os.RemoveAll(dir)
			return nil, fmt.Errorf("envd exited before it was healthy: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			e.stop()
			return nil, errors.New("envd was not healthy within 15s")
		}
	}
}

func (e *envdProc) stop() {
	_ = e.cmd.Process.Signal(os.Interrupt)
	select {
	case <-e.done:
	case <-time.After(10 * time.Second):
		_ = e.cmd.Process.Kill()
		<-e.done
	}
	os.RemoveAll(e.dir)
}

func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(p * float64(len(s)-1))
	return s[i]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// copyN reads r to the end and returns the byte count.
func drain(r io.Reader) (int64, error) {
	return io.Copy(io.Discard, r)
}
