package db

import (
	"context"
	"fmt"
	"time"

	"wrenn.dev/wrenn/internal/control/db/dbq"
)

// Template is a named snapshot a team can create sandboxes from. TeamID
// empty means built in, for every team.
type Template struct {
	ID        string
	TeamID    string
	Name      string
	VCPUs     int
	MemoryMiB int
	// SourceSandboxID is the sandbox it was taken from; HostID the host
	// holding its files.
	SourceSandboxID string
	HostID          string
	CreatedAt       time.Time
}

func templateFromRow(r dbq.Template) Template {
	return Template{
		ID: r.ID, TeamID: deref(r.TeamID), Name: r.Name, VCPUs: int(r.VCPUs), MemoryMiB: int(r.MemoryMiB),
		SourceSandboxID: deref(r.SourceSandboxID), HostID: deref(r.HostID), CreatedAt: r.CreatedAt,
	}
}

// CreateTemplate stores a template. A name the team already uses is
// ErrAlreadyExists.
func (d *DB) CreateTemplate(ctx context.Context, t Template) (Template, error) {
	row, err := d.q.CreateTemplate(ctx, d.pool, dbq.CreateTemplateParams{
		ID: t.ID, TeamID: nonZero(t.TeamID), Name: t.Name, VCPUs: int32(t.VCPUs), MemoryMiB: int32(t.MemoryMiB),
		SourceSandboxID: nonZero(t.SourceSandboxID), HostID: nonZero(t.HostID),
	})
	if err != nil {
		return Template{}, interpret(err, fmt.Sprintf("template %q", t.Name))
	}
	return templateFromRow(row), nil
}

// GetTemplate finds the team's template called name, or a built-in one.
func (d *DB) GetTemplate(ctx context.Context, teamID, name string) (Template, error) {
	row, err := d.q.GetTemplate(ctx, d.pool, dbq.GetTemplateParams{Name: name, TeamID: nonZero(teamID)})
	if err != nil {
		return Template{}, interpret(err, fmt.Sprintf("template %q", name))
	}
	return templateFromRow(row), nil
}

// ListTemplates returns the team's templates and the built-in ones, by name.
func (d *DB) ListTemplates(ctx context.Context, teamID string) ([]Template, error) {
	rows, err := d.q.ListTemplates(ctx, d.pool, nonZero(teamID))
	if err != nil {
		return nil, interpret(err, "templates")
	}
	out := make([]Template, len(rows))
	for i, r := range rows {
		out[i] = templateFromRow(r)
	}
	return out, nil
}

// DeleteTemplate removes the team's template called name and returns it.
// Built-in templates cannot be deleted this way: they are ErrNotFound.
func (d *DB) DeleteTemplate(ctx context.Context, teamID, name string) (Template, error) {
	row, err := d.q.DeleteTemplate(ctx, d.pool, dbq.DeleteTemplateParams{Name: name, TeamID: nonZero(teamID)})
	if err != nil {
		return Template{}, interpret(err, fmt.Sprintf("template %q", name))
	}
	return templateFromRow(row), nil
}
