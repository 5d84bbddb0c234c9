package agent

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/sandbox"
	"wrenn.dev/wrenn/internal/storage/cow"
	"wrenn.dev/wrenn/internal/vmm"
)

// CreateRequest asks for a sandbox.
type CreateRequest struct {
	// ID names the sandbox; the manager makes one when it is empty.
	ID string
	// Template is the image or template to boot, e.g. "minimal".
	Template string
	// VCPUs and MemoryMiB size it; 0 means Config.DefaultVCPUs and
	// Config.DefaultMemoryMiB.
	VCPUs, MemoryMiB int
	// Timeout is its lifetime; 0 means Config.DefaultTimeout.
	Timeout time.Duration
	// EnvVars are the default environment of every process in it.
	EnvVars map[string]string
	// Metadata is the caller's, kept with the sandbox and served to the
	// guest through MMDS where the driver has it.
	Metadata map[string]string
	// Egress lets the sandbox reach the internet.
	Egress bool
}

// Limits on request fields.
const (
	maxEnvVars      = 1024
	maxMetadata     = 128
	maxMetadataKey  = 256
	maxMetadataVal  = 4096
	maxEnvVarsBytes = 256 << 10
)

// normalize applies defaults and checks every field, naming the first
// problem precisely. Errors are of class errdefs.ErrInvalidArgument.
func (m *Manager) normalize(req CreateRequest) (CreateRequest, error) {
	if req.ID != "" {
		if err := sandbox.ValidateID(req.ID); err != nil {
			return req, err
		}
	}
	if req.Template == "" {
		return req, errdefs.InvalidArgument("template is required (known: %s)", strings.Join(m.cfg.Images.Names(), ", "))
	}
	if req.VCPUs == 0 {
		req.VCPUs = m.cfg.DefaultVCPUs
	}
	if req.VCPUs < 1 || req.VCPUs > m.cfg.MaxSandboxVCPUs {
		return req, errdefs.InvalidArgument("vcpus %d is outside 1-%d", req.VCPUs, m.cfg.MaxSandboxVCPUs)
	}
	if req.MemoryMiB == 0 {
		req.MemoryMiB = m.cfg.DefaultMemoryMiB
	}
	if req.MemoryMiB < MinMemoryMiB {
		return req, errdefs.InvalidArgument("memory_mib %d is below the minimum of %d MiB", req.MemoryMiB, MinMemoryMiB)
	}
	if req.MemoryMiB > m.cfg.MaxMemoryMiB {
		return req, errdefs.InvalidArgument("memory_mib %d exceeds this host's memory budget of %d MiB", req.MemoryMiB, m.cfg.MaxMemoryMiB)
	}
	var err error
	if req.Timeout, err = m.timeout(req.Timeout); err != nil {
		return req, err
	}
	if len(req.EnvVars) > maxEnvVars {
		return req, errdefs.InvalidArgument("%d env vars is more than the %d allowed", len(req.EnvVars), maxEnvVars)
	}
	size := 0
	for _, k := range slices.Sorted(maps.Keys(req.EnvVars)) {
		v := req.EnvVars[k]
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return req, errdefs.InvalidArgument("env var name %q is invalid: it must be non-empty, without '=' or NUL", k)
		}
		if strings.ContainsRune(v, 0) {
			return req, errdefs.InvalidArgument("env var %s contains a NUL byte", k)
		}
		size += len(k) + len(v)
	}
	if size > maxEnvVarsBytes {
		return req, errdefs.InvalidArgument("env vars take %d bytes, more than the %d allowed", size, maxEnvVarsBytes)
	}
	if len(req.Metadata) > maxMetadata {
		return req, errdefs.InvalidArgument("%d metadata entries is more than the %d allowed", len(req.Metadata), maxMetadata)
	}
	for _, k := range slices.Sorted(maps.Keys(req.Metadata)) {
		if k == "" || len(k) > maxMetadataKey {
			return req, errdefs.InvalidArgument("metadata key %q is invalid: it must be 1-%d bytes", k, maxMetadataKey)
		}
		if len(req.Metadata[k]) > maxMetadataVal {
			return req, errdefs.InvalidArgument("metadata %s is %d bytes, more than the %d allowed", k, len(req.Metadata[k]), maxMetadataVal)
		}
	}
	req.EnvVars = maps.Clone(req.EnvVars)
	req.Metadata = maps.Clone(req.Metadata)
	return req, nil
}

// lookupTemplate finds a template, turning an unknown name into an
// InvalidArgument that lists the known ones.
func (m *Manager) lookupTemplate(ctx context.Context, name string) (*Template, error) {
	t, err := m.cfg.Images.Lookup(ctx, name)
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		return nil, errdefs.InvalidArgument("unknown template %q (known: %s)", name, strings.Join(m.cfg.Images.Names(), ", "))
	case err != nil:
		return nil, fmt.Errorf("template %s: %w", name, err)
	case t.Kernel == "" || t.RootFS == "":
		return nil, fmt.Errorf("template %s has no kernel or root disk", name)
	}
	return t, nil
}

// Create makes a sandbox and returns once envd in it answers, with the
// sandbox Running. ctx bounds the call, not the VM. On any error nothing of
// the sandbox is left: VM stopped, slot released, files and record removed.
//
// Errors: errdefs.ErrInvalidArgument for a bad request (unknown template,
// sizes out of range), errdefs.ErrAlreadyExists for a live sandbox's id,
// errdefs.ErrResourceExhausted when the host's vCPU or memory budget (or
// its network slots) cannot take it, errdefs.ErrUnavailable when the
// manager is not running.
func (m *Manager) Create(ctx context.Context, req CreateRequest) (*sandbox.Sandbox, error) {
	if err := m.ready(); err != nil {
		return nil, err
	}
	var err error
	st := m.snapshotTemplate(req.Template)
	if st != nil {
		if req, err = fitTemplate(req, st); err != nil {
			return nil, err
		}
	}
	req, err = m.normalize(req)
	if err != nil {
		return nil, err
	}
	var tmpl *Template
	if st != nil {
		tmpl = &Template{Name: st.ID, Shell: st.Shell}
	} else if tmpl, err = m.lookupTemplate(ctx, req.Template); err != nil {
		return nil, err
	}
	if req.ID == "" {
		req.ID = newID()
	}
	b, err := m.reserve(req, tmpl)
	if err != nil {
		return nil, err
	}
	defer b.unlock()
	start := time.Now()
	if st != nil {
		err = m.createFromTemplate(ctx, b, req, st)
	} else {
		err = m.boot(ctx, b, req, tmpl)
	}
	if err != nil {
		m.abortCreate(ctx, b, err)
		return nil, fmt.Errorf("create sandbox %s: %w", req.ID, err)
	}
	m.watch(b)
	m.startSampler(b)
	sb := m.snapshot(b)
	m.log.Info("sandbox created", logKeySandbox, sb.ID, logKeyTemplate, sb.Template, logKeySlot, b.slot.Index,
		logKeyPID, b.pid, logKeyTook, time.Since(start))
	return sb, nil
}

// reserve checks the budgets and registers a Starting sandbox, with its
// operation lock held, in one step under the manager lock.
func (m *Manager) reserve(req CreateRequest, tmpl *Template) (*box, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.phase != phaseStarted {
		return nil, errdefs.Unavailable("host agent is shutting down")
	}
	if old, ok := m.boxes[req.ID]; ok && old.sb.State.Live() {
		return nil, errdefs.AlreadyExists("sandbox %s already exists", req.ID)
	}
	vcpus, mem, _ := m.usedLocked()
	if vcpus+req.VCPUs > m.cfg.MaxVCPUs || mem+req.MemoryMiB > m.cfg.MaxMemoryMiB {
		return nil, errdefs.ResourceExhausted("host is full: %d of %d vCPUs and %d of %d MiB are free, the sandbox needs %d vCPUs and %d MiB",
			m.cfg.MaxVCPUs-vcpus, m.cfg.MaxVCPUs, m.cfg.MaxMemoryMiB-mem, m.cfg.MaxMemoryMiB, req.VCPUs, req.MemoryMiB)
	}
	b := newBox(&sandbox.Sandbox{
		ID:              req.ID,
		Template:        req.Template,
		State:           sandbox.StateStarting,
		VCPUs:           req.VCPUs,
		MemoryMiB:       req.MemoryMiB,
		CreatedAt:       m.cfg.Clock(),
		Metadata:        req.Metadata,
		Egress:          req.Egress,
		EnvdAccessToken: newToken(),
		Driver:          m.cfg.Driver.Name(),
	})
	b.shell = tmpl.Shell
	b.envVars = req.EnvVars
	b.op <- struct{}{}
	// A tombstone of the same id is replaced; its record is overwritten.
	m.boxes[req.ID] = b
	m.notifyLocked()
	return b, nil
}

// boot does the work of Create (op held). Whatever it made is recorded in
// b, for abortCreate to undo.
func (m *Manager) boot(ctx context.Context, b *box, req CreateRequest, tmpl *Template) error {
	// The record exists before any resource does, so that a crash at any
	// point leaves something that names what to clean up.
	if err := m.persist(b); err != nil {
		return err
	}
	dir := filepath.Join(m.sandboxesDir, b.id)
	if err := os.RemoveAll(dir); err != nil { // left by a tombstone of this id
		return err
	}
	b.dir = dir
	if err := os.MkdirAll(filepath.Join(dir, vmDirName), 0o700); err != nil {
		return fmt.Errorf("make sandbox directory: %w", err)
	}
	rootfs := filepath.Join(dir, rootfsName)
	t0 := time.Now()
	method, err := cow.Clone(ctx, tmpl.RootFS, rootfs)
	if err != nil {
		return fmt.Errorf("clone root disk: %w", err)
	}
	m.log.Debug("root disk cloned", logKeySandbox, b.id, logKeyMethod, method, logKeyTook, time.Since(t0))

	slot, err := m.cfg.Network.Acquire(ctx, req.Egress)
	if err != nil {
		return err
	}
	b.slot = slot
	if err := m.persist(b); err != nil {
		return err
	}

	sb := m.snapshot(b)
	spec := vmm.Spec{
		ID:         b.id,
		Dir:        filepath.Join(dir, vmDirName),
		Kernel:     tmpl.Kernel,
		Initrd:     tmpl.Initrd,
		KernelArgs: strings.TrimSpace(tmpl.KernelArgs + " " + slot.KernelIPArg()),
		RootFS:     rootfs,
		VCPUs:      req.VCPUs,
		MemoryMiB:  req.MemoryMiB,
		Net:        &vmm.NetSpec{NetNS: slot.NetNS, Tap: slot.Tap, MAC: slot.GuestMAC},
		Metadata:   guestMetadata(sb),
	}
	mach, err := m.cfg.Driver.Boot(ctx, spec)
	if err != nil {
		return err
	}
	b.machine, b.pid, b.spec = mach, mach.PID(), &spec
	b.restore = restoreSpec(spec)
	if err := m.persist(b); err != nil {
		return err
	}

	base := m.envdBase(slot.HostIP)
	m.update(b, func(sb *sandbox.Sandbox) {
		sb.HostIP = slot.HostIP.String()
		sb.EnvdURL = base
	})
	if err := m.connectEnvd(ctx, b, mach, base, sb.EnvdAccessToken, initRequest{
		EnvVars:        req.EnvVars,
		AccessToken:    sb.EnvdAccessToken,
		Timestamp:      m.cfg.Clock().UTC(),
		DefaultUser:    tmpl.DefaultUser,
		DefaultWorkdir: tmpl.DefaultWorkdir,
	}); err != nil {
		return err
	}
	if _, err := m.apply(b, sandbox.EventStarted, ""); err != nil {
		return err
	}
	m.update(b, func(sb *sandbox.Sandbox) { sb.ExpiresAt = m.cfg.Clock().Add(req.Timeout) })
	return m.persist(b)
}

// guestMetadata is what the guest reads from MMDS (where the driver serves
// it): the keys envd's mmds package reads, plus the caller's metadata.
func guestMetadata(sb *sandbox.Sandbox) map[string]any {
	sum := sha256.Sum256([]byte(sb.EnvdAccessToken))
	md := map[string]any{
		"instanceID":      sb.ID,
		"envID":           sb.Template,
		"accessTokenHash": hex.EncodeToString(sum[:]),
	}
	if len(sb.Metadata) > 0 {
		md["metadata"] = maps.Clone(sb.Metadata)
	}
	return md
}

// envdBase is the URL of envd in the guest behind a slot's host IP.
func (m *Manager) envdBase(hostIP netip.Addr) string {
	return "http://" + net.JoinHostPort(hostIP.String(), strconv.Itoa(m.cfg.EnvdPort))
}

// connectEnvd gives b a client for envd at base using body's access token,
// waits for envd to answer and sends it /init with body, authorised by
// authToken: the token envd knows now (body's own for a fresh guest, the
// old one for a restored guest whose token /init rotates).
func (m *Manager) connectEnvd(ctx context.Context, b *box, mach vmm.Machine, base, authToken string, body initRequest) error {
	envd := newEnvdClient(base, body.AccessToken, m.cfg.HTTPClient)
	m.mu.Lock()
	b.envd = envd
	m.mu.Unlock()
	if err := m.waitEnvd(ctx, mach, envd); err != nil {
		return err
	}
	return envd.initAs(ctx, body, authToken)
}

// waitEnvd polls envd's /health until it answers, the VM exits, or
// Config.BootTimeout (or ctx) ends.
func (m *Manager) waitEnvd(ctx context.Context, mach vmm.Machine, envd *envdClient) error {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.BootTimeout)
	defer cancel()
	delay := 5 * time.Millisecond
	timer := time.NewTimer(0)
	defer timer.Stop()
	var last error
	for {
		select {
		case <-mach.Done():
			return fmt.Errorf("vm exited before envd answered: %w", exitError(mach))
		case <-ctx.Done():
			return fmt.Errorf("waiting for envd: %w (last error: %v)", errdefs.ErrDeadlineExceeded, last)
		case <-timer.C:
		}
		hctx, hcancel := context.WithTimeout(ctx, time.Second)
		last = envd.health(hctx)
		hcancel()
		if last == nil {
			return nil
		}
		delay = min(2*delay, 200*time.Millisecond)
		timer.Reset(delay)
	}
}

// exitError is why mach exited, for error messages.
func exitError(mach vmm.Machine) error {
	if err := mach.Err(); err != nil {
		return err
	}
	return errors.New("it was stopped")
}

// abortCreate undoes a failed create: it releases everything and removes
// the sandbox. When cleanup itself fails, the sandbox stays as a Dead
// tombstone whose record names what is left, and Destroy (or the next
// agent) retries.
func (m *Manager) abortCreate(ctx context.Context, b *box, cause error) {
	reason := "create failed: " + cause.Error()
	if err := m.release(ctx, b); err != nil {
		m.log.Error("cleanup after failed create is incomplete", logKeySandbox, b.id, logKeyErr, err)
		if _, aerr := m.apply(b, sandbox.EventDied, reason); aerr == nil {
			m.persistOrLog(b)
		}
		return
	}
	m.mu.Lock()
	delete(m.boxes, b.id)
	m.notifyLocked()
	m.mu.Unlock()
	if err := m.store.remove(b.id); err != nil {
		m.log.Error("cannot remove record of failed create", logKeySandbox, b.id, logKeyErr, err)
	}
	m.log.Info("sandbox create failed; everything released", logKeySandbox, b.id, logKeyReason, reason)
}

// newID returns a random sandbox id.
func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "sb-" + hex.EncodeToString(b[:])
}

// newToken returns a fresh random envd access token.
func newToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}
