package control

import (
	"context"
	"slices"
	"time"

	"wrenn.dev/wrenn/internal/control/db"
	"wrenn.dev/wrenn/internal/errdefs"
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

// CreateSnapshot takes a named snapshot template of one of p's team's
// sandboxes.
func (s *Service) CreateSnapshot(ctx context.Context, p Principal, sandboxID, name string) (Template, error) {
	if err := validName("name", name, maxTemplateName); err != nil {
		return Template{}, err
	}
	if _, err := s.sandboxOf(ctx, p, sandboxID, false); err != nil {
		return Template{}, err
	}
	return Template{}, errdefs.NotImplemented("snapshot templates are not available yet: the host agents cannot take snapshots")
}

// DeleteSnapshot deletes one of p's team's snapshot templates.
func (s *Service) DeleteSnapshot(ctx context.Context, p Principal, name string) error {
	if err := validName("name", name, maxTemplateName); err != nil {
		return errdefs.NotFound("template %q not found", name)
	}
	_, err := s.store.DeleteTemplate(ctx, p.TeamID, name)
	return err
}
