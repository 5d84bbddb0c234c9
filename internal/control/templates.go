package control

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"slices"
	"time"

	"connectrpc.com/connect"

	"wrenn.dev/wrenn/internal/control/db"
	"wrenn.dev/wrenn/internal/errdefs"
	pb "wrenn.dev/wrenn/internal/gen/hostagent/v1"
	"wrenn.dev/wrenn/internal/sandbox"
)

// Template kinds.
const (
	// TemplateImage is a guest image the agents build and cold-boot.
	TemplateImage = "image"
	// TemplateSnapshot is a named snapshot of a sandbox; creating from it
	// restores the snapshot.
	TemplateSnapshot = "snapshot"
)

// Template is something sandboxes are created from.
type Template struct {
	Name string
	Kind string
	// For snapshots: the template's ID, its fixed size, its source and
	// when it was taken.
	ID              string
	VCPUs           int
	MemoryMiB       int
	SourceSandboxID string
	CreatedAt       time.Time
}

// noteImages records the images host hostID offers.
func (s *Service) noteImages(hostID string, names []string) {
	s.imagesMu.Lock()
	defer s.imagesMu.Unlock()
	if s.images == nil {
		s.images = map[string][]string{}
	}
	s.images[hostID] = slices.Clone(names)
}

// ListTemplates lists the images the hosts offer and p's team's snapshot
// templates, images first, each by name.
func (s *Service) ListTemplates(ctx context.Context, p Principal) ([]Template, error) {
	snaps, err := s.store.ListTemplates(ctx, p.TeamID)
	if err != nil {
		return nil, err
	}
	s.imagesMu.Lock()
	var names []string
	for _, list := range s.images {
		names = append(names, list...)
	}
	s.imagesMu.Unlock()
	slices.Sort(names)
	names = slices.Compact(names)
	out := make([]Template, 0, len(names)+len(snaps))
	for _, n := range names {
		out = append(out, Template{Name: n, Kind: TemplateImage})
	}
	for _, t := range snaps {
		out = append(out, snapshotTemplate(t))
	}
	return out, nil
}

func snapshotTemplate(t db.Template) Template {
	return Template{Name: t.Name, Kind: TemplateSnapshot, ID: t.ID, VCPUs: t.VCPUs, MemoryMiB: t.MemoryMiB,
		SourceSandboxID: t.SourceSandboxID, CreatedAt: t.CreatedAt}
}

// ListSnapshots lists p's team's snapshot templates.
func (s *Service) ListSnapshots(ctx context.Context, p Principal) ([]Template, error) {
	snaps, err := s.store.ListTemplates(ctx, p.TeamID)
	if err != nil {
		return nil, err
	}
	out := make([]Template, 0, len(snaps))
	for _, t := range snaps {
		if t.TeamID == p.TeamID {
			out = append(out, snapshotTemplate(t))
		}
	}
	return out, nil
}

// newTemplateID returns a fresh template ID, the name the agent stores it
// under.
func newTemplateID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "tpl-" + hex.EncodeToString(b[:])
}

// CreateSnapshot takes a named snapshot template of one of p's team's
// running or paused sandboxes. Sandboxes created from it restore it, on
// the host that holds its files.
func (s *Service) CreateSnapshot(ctx context.Context, p Principal, sandboxID, name string) (Template, error) {
	if err := validName("name", name, maxTemplateName); err != nil {
		return Template{}, err
	}
	sb, err := s.sandboxOf(ctx, p, sandboxID, false)
	if err != nil {
		return Template{}, err
	}
	if sb.State != sandbox.StateRunning && sb.State != sandbox.StatePaused {
		return Template{}, errdefs.Conflict("sandbox %s is %s; snapshot a running or paused sandbox", sb.ID, sb.State)
	}
	if _, err := s.store.GetTemplate(ctx, p.TeamID, name); err == nil {
		return Template{}, errdefs.AlreadyExists("template %q already exists", name)
	} else if !errors.Is(err, errdefs.ErrNotFound) {
		return Template{}, err
	}
	c, err := s.hostFor(ctx, sb)
	if err != nil {
		return Template{}, err
	}
	id := newTemplateID()
	resp, err := c.CreateSnapshot(ctx, connect.NewRequest(&pb.CreateSnapshotRequest{SandboxId: sb.ID, TemplateId: id}))
	if err != nil {
		return Template{}, agentError(sb.HostID, err)
	}
	t, err := s.store.CreateTemplate(ctx, db.Template{
		ID: id, TeamID: p.TeamID, Name: name, VCPUs: int(resp.Msg.GetTemplate().GetVcpus()),
		MemoryMiB: int(resp.Msg.GetTemplate().GetMemoryMib()), SourceSandboxID: sb.ID, HostID: sb.HostID,
	})
	if err != nil {
		// Do not leave the agent holding files nobody can reach.
		if _, derr := c.DeleteSnapshot(context.WithoutCancel(ctx), connect.NewRequest(&pb.DeleteSnapshotRequest{TemplateId: id})); derr != nil {
			s.log.Warn("removing a snapshot that could not be recorded", logKeyHost, sb.HostID, "template", id, logKeyErr, derr)
		}
		return Template{}, err
	}
	s.log.Info("snapshot template created", logKeySandbox, sb.ID, "template", id, "name", name)
	return snapshotTemplate(t), nil
}

// DeleteSnapshot deletes one of p's team's snapshot templates and its
// files on its host. Sandboxes already made from it are not affected.
func (s *Service) DeleteSnapshot(ctx context.Context, p Principal, name string) error {
	if err := validName("name", name, maxTemplateName); err != nil {
		return errdefs.NotFound("template %q not found", name)
	}
	t, err := s.store.GetTemplate(ctx, p.TeamID, name)
	if err != nil {
		return err
	}
	if t.TeamID != p.TeamID {
		return errdefs.NotFound("template %q not found", name) // built in
	}
	if t.HostID != "" {
		h, err := s.store.GetHost(ctx, t.HostID)
		switch {
		case errors.Is(err, errdefs.ErrNotFound):
			// The host is gone, and its files with it.
		case err != nil:
			return err
		default:
			_, err := s.agents.Client(h.Address).DeleteSnapshot(ctx, connect.NewRequest(&pb.DeleteSnapshotRequest{TemplateId: t.ID}))
			if err != nil && connect.CodeOf(err) != connect.CodeNotFound {
				return agentError(t.HostID, err)
			}
		}
	}
	_, err = s.store.DeleteTemplate(ctx, p.TeamID, name)
	return err
}
