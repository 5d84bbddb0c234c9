package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"

	"wrenn.dev/wrenn/internal/agent/agentapi"
	"wrenn.dev/wrenn/internal/agent/agentcmd"
	pb "wrenn.dev/wrenn/internal/gen/hostagent/v1"
	"wrenn.dev/wrenn/internal/gen/hostagent/v1/hostagentv1connect"
	"wrenn.dev/wrenn/internal/image"
)

// benchSnapshot: a real host agent (QEMU, real network slots; needs root)
// in process. Figures:
//
//   - snapshot_create_from_template: CreateSandbox from a snapshot
//     template, against a cold boot of the same image on the same driver
//     (best of three each; ratio = template / cold, lower is better).
//   - snapshot_pause_per_gib: PauseSandbox time per GiB of touched guest
//     memory (MemTotal - MemFree in the guest), against writing the same
//     number of bytes from memory to a file and fsyncing it.
//   - snapshot_resume_to_exec: ResumeSandbox plus the first exec, against
//     a cold boot plus its first exec.
func benchSnapshot(ctx context.Context, envdBin string) error {
	envdAbs, err := filepath.Abs(envdBin)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("snapshot benchmarks need root (network slots)")
	}
	work, err := os.MkdirTemp("", "wrenn-bench-snapshot-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if _, err := (&image.Builder{CacheDir: image.DefaultCacheDir(), EnvdBinary: envdAbs, Progress: io.Discard}).Build(ctx, image.Minimal); err != nil {
		return fmt.Errorf("build the minimal image: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(work, "agent.log"))
	if err != nil {
		ln.Close()
		return err
	}
	defer logf.Close()
	ready := make(chan net.Addr, 1)
	actx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- agentcmd.Run(actx, agentcmd.Config{
			Secret: "bench-snapshot-secret", DataDir: filepath.Join(work, "data"), HostID: "bench", Driver: "qemu",
			Accelerator: "auto", ImageCacheDir: image.DefaultCacheDir(), EnvdBinary: envdAbs,
			Prebuild: []string{image.Minimal}, MaxVCPUs: 8, MaxMemoryMiB: 4096,
			NetPrefix: "wrsnb", SlotFirst: 930, SlotLast: 935, Uplinks: []string{"wrsnbnoup"}, DestroyOnExit: true,
			Logger: slog.New(slog.NewTextHandler(logf, nil)), Listener: ln, Ready: func(a net.Addr) { ready <- a },
		})
	}()
	defer func() {
		cancel()
		<-done
	}()
	var c hostagentv1connect.HostAgentClient
	select {
	case a := <-ready:
		hc := agentapi.NewHTTPClient()
		defer hc.CloseIdleConnections()
		c = agentapi.NewClient(hc, "http://"+a.String(), "bench-snapshot-secret")
	case err := <-done:
		return fmt.Errorf("agent: %v", err)
	}
	const memMiB = 256
	create := func(tmpl string) (string, time.Duration, error) {
		t0 := time.Now()
		res, err := c.CreateSandbox(ctx, connect.NewRequest(&pb.CreateSandboxRequest{Template: tmpl, MemoryMib: memMiB}))
		if err != nil {
			return "", 0, err
		}
		return res.Msg.GetSandbox().GetId(), time.Since(t0), nil
	}
	destroy := func(id string) {
		_, _ = c.DestroySandbox(context.WithoutCancel(ctx), connect.NewRequest(&pb.DestroySandboxRequest{Id: id}))
	}
	shell := func(id, script string) (string, error) {
		stream, err := c.Exec(ctx, connect.NewRequest(&pb.ExecRequest{SandboxId: id, Cmd: "/bin/sh", Args: []string{"-c", script}}))
		if err != nil {
			return "", err
		}
		defer stream.Close()
		var out strings.Builder
		code := int32(-1)
		for stream.Receive() {
			switch ev := stream.Msg().GetEvent().(type) {
			case *pb.ExecResponse_Stdout:
				out.Write(ev.Stdout)
			case *pb.ExecResponse_Exited_:
				code = ev.Exited.GetExitCode()
			}
		}
		if err := stream.Err(); err != nil {
			return "", err
		}
		if code != 0 {
			return out.String(), fmt.Errorf("%q exited %d", script, code)
		}
		return out.String(), nil
	}

	// Cold boots (to envd ready, and to a first exec).
	var cold, coldExec time.Duration
	for range 3 {
		t0 := time.Now()
		id, took, err := create(image.Minimal)
		if err != nil {
			return err
		}
		_, err = shell(id, "true")
		first := time.Since(t0)
		destroy(id)
		if err != nil {
			return err
		}
		if cold == 0 || took < cold {
			cold = took
		}
		if coldExec == 0 || first < coldExec {
			coldExec = first
		}
	}

	src, _, err := create(image.Minimal)
	if err != nil {
		return err
	}
	defer destroy(src)
	// Touch guest memory: dd's 128 MiB buffer is written, then freed
	// (freed pages keep their bytes, so a snapshot must carry them).
	out, err := shell(src, `dd if=/dev/urandom of=/dev/null bs=128M count=1 2>/dev/null; `+
		`awk '/^MemTotal:/{t=$2} /^MemFree:/{f=$2} END{print (t-f)*1024}' /proc/meminfo`)
	if err != nil {
		return err
	}
	touched, err := strconv.ParseFloat(strings.TrimSpace(out), 64)
	if err != nil || touched <= 0 {
		return fmt.Errorf("touched memory %q: %v", out, err)
	}
	t0 := time.Now()
	if _, err := c.PauseSandbox(ctx, connect.NewRequest(&pb.PauseSandboxRequest{Id: src})); err != nil {
		return err
	}
	pause := time.Since(t0)
	base, err := writeFileBaseline(filepath.Join(work, "baseline"), int64(touched))
	if err != nil {
		return err
	}
	gib := touched / (1 << 30)
	line("snapshot_pause_per_gib", pause.Seconds()/gib, "s/GiB", "write_fsync_same_bytes", base.Seconds()/gib)

	t0 = time.Now()
	if _, err := c.ResumeSandbox(ctx, connect.NewRequest(&pb.ResumeSandboxRequest{Id: src})); err != nil {
		return err
	}
	if _, err := shell(src, "true"); err != nil {
		return err
	}
	line("snapshot_resume_to_exec", ms(time.Since(t0)), "ms", "cold_boot_to_exec", ms(coldExec))

	if _, err := c.CreateSnapshot(ctx, connect.NewRequest(&pb.CreateSnapshotRequest{SandboxId: src, TemplateId: "bench-tpl"})); err != nil {
		return err
	}
	var fromTmpl time.Duration
	for range 3 {
		id, took, err := create("bench-tpl")
		if err != nil {
			return err
		}
		destroy(id)
		if fromTmpl == 0 || took < fromTmpl {
			fromTmpl = took
		}
	}
	_, _ = c.DeleteSnapshot(ctx, connect.NewRequest(&pb.DeleteSnapshotRequest{TemplateId: "bench-tpl"}))
	line("snapshot_create_from_template", ms(fromTmpl), "ms", "cold_boot_qemu_"+image.Minimal, ms(cold))
	return nil
}

// writeFileBaseline writes n random bytes (generated beforehand) to a new
// file and fsyncs it, returning the time that took.
func writeFileBaseline(path string, n int64) (time.Duration, error) {
	buf := make([]byte, n)
	_, _ = rand.Read(buf)
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer os.Remove(path)
	defer f.Close()
	t0 := time.Now()
	if _, err := f.Write(buf); err != nil {
		return 0, err
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}
