package httpapi

import (
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"time"

	"wrenn.dev/wrenn/internal/control"
	"wrenn.dev/wrenn/internal/control/auth"
	"wrenn.dev/wrenn/internal/control/db"
	"wrenn.dev/wrenn/internal/errdefs"
)

// maxJSONBody bounds a JSON request body.
const maxJSONBody = 1 << 20

// decode reads r's JSON body into v strictly: the content type must be
// JSON, unknown fields, trailing data and bodies over maxJSONBody are
// refused. With optional, an empty body leaves v as it is.
func decode(w http.ResponseWriter, r *http.Request, v any, optional bool) error {
	if r.ContentLength == 0 && optional {
		return nil
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			return errdefs.InvalidArgument("the body must be application/json, not %q", ct)
		}
	}
	body := http.MaxBytesReader(w, r.Body, maxJSONBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &tooBig):
			return errdefs.TooLarge("the body is larger than %d bytes", maxJSONBody)
		case errors.Is(err, io.ErrUnexpectedEOF):
			return errdefs.InvalidArgument("the body is not valid JSON (it ends early)")
		case errors.Is(err, io.EOF):
			if optional {
				return nil
			}
			return errdefs.InvalidArgument("the body is empty; a JSON object is required")
		case errors.As(err, &syn):
			return errdefs.InvalidArgument("the body is not valid JSON (at byte %d)", syn.Offset)
		case errors.As(err, &typ):
			return errdefs.InvalidArgument("field %q must be %s", typ.Field, typ.Type)
		}
		return errdefs.InvalidArgument("the body is not valid: %v", err)
	}
	if dec.More() {
		return errdefs.InvalidArgument("the body has data after the JSON object")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errdefs.InvalidArgument("the body has data after the JSON object")
	}
	return nil
}

// timeOrNil is t in UTC, or nil when zero (JSON null).
func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

type sandboxView struct {
	ID        string            `json:"id"`
	TeamID    string            `json:"team_id"`
	Template  string            `json:"template"`
	State     string            `json:"state"`
	VCPUs     int               `json:"vcpus"`
	MemoryMiB int               `json:"memory_mib"`
	Metadata  map[string]string `json:"metadata"`
	Egress    bool              `json:"egress"`
	HostID    string            `json:"host_id"`
	Reason    string            `json:"reason"`
	CreatedAt time.Time         `json:"created_at"`
	UpdatedAt time.Time         `json:"updated_at"`
	ExpiresAt *time.Time        `json:"expires_at"`
	EndedAt   *time.Time        `json:"ended_at"`
}

func sandboxJSON(s db.Sandbox) sandboxView {
	md := s.Metadata
	if md == nil {
		md = map[string]string{}
	}
	return sandboxView{
		ID: s.ID, TeamID: s.TeamID, Template: s.Template, State: s.State.String(), VCPUs: s.VCPUs, MemoryMiB: s.MemoryMiB,
		Metadata: md, Egress: s.Egress, HostID: s.HostID, Reason: s.Reason,
		CreatedAt: s.CreatedAt.UTC(), UpdatedAt: s.UpdatedAt.UTC(), ExpiresAt: timeOrNil(s.ExpiresAt), EndedAt: timeOrNil(s.EndedAt),
	}
}

type apiKeyView struct {
	ID         string     `json:"id"`
	Name       string     `json:"name"`
	Prefix     string     `json:"prefix"`
	Role       string     `json:"role"`
	CreatedAt  time.Time  `json:"created_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
	RevokedAt  *time.Time `json:"revoked_at"`
}

func apiKeyJSON(k db.APIKey) apiKeyView {
	return apiKeyView{ID: k.ID, Name: k.Name, Prefix: auth.APIKeyScheme + k.Prefix, Role: k.Role, CreatedAt: k.CreatedAt.UTC(),
		LastUsedAt: timeOrNil(k.LastUsedAt), RevokedAt: timeOrNil(k.RevokedAt)}
}

type userView struct {
	ID        string    `json:"id"`
	TeamID    string    `json:"team_id"`
	Email     string    `json:"email"`
	Role      string    `json:"role"`
	CreatedAt time.Time `json:"created_at"`
}

func userJSON(u db.User) userView {
	return userView{ID: u.ID, TeamID: u.TeamID, Email: u.Email, Role: u.Role, CreatedAt: u.CreatedAt.UTC()}
}

type teamView struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

func teamJSON(t db.Team) teamView {
	return teamView{ID: t.ID, Name: t.Name, CreatedAt: t.CreatedAt.UTC()}
}

type hostView struct {
	ID              string    `json:"id"`
	Address         string    `json:"address"`
	Driver          string    `json:"driver"`
	Accelerator     string    `json:"accelerator"`
	State           string    `json:"state"`
	VCPUsTotal      int       `json:"vcpus_total"`
	MemoryMiBTotal  int64     `json:"memory_mib_total"`
	VCPUsUsed       int       `json:"vcpus_used"`
	MemoryMiBUsed   int64     `json:"memory_mib_used"`
	Sandboxes       int       `json:"sandboxes"`
	LastHeartbeatAt time.Time `json:"last_heartbeat_at"`
	CreatedAt       time.Time `json:"created_at"`
}

func hostJSON(h db.Host) hostView {
	return hostView{ID: h.ID, Address: h.Address, Driver: h.Driver, Accelerator: h.Accelerator, State: string(h.State),
		VCPUsTotal: h.CapacityVCPUs, MemoryMiBTotal: h.CapacityMemoryMiB, VCPUsUsed: h.VCPUsUsed, MemoryMiBUsed: h.MemoryMiBUsed,
		Sandboxes: h.Sandboxes, LastHeartbeatAt: h.LastHeartbeatAt.UTC(), CreatedAt: h.CreatedAt.UTC()}
}

type templateView struct {
	Name      string     `json:"name"`
	Kind      string     `json:"kind"`
	ID        string     `json:"id,omitempty"`
	VCPUs     *int       `json:"vcpus"`
	MemoryMiB *int       `json:"memory_mib"`
	SandboxID string     `json:"source_sandbox_id,omitempty"`
	CreatedAt *time.Time `json:"created_at,omitempty"`
}

func templateJSON(t control.Template) templateView {
	v := templateView{Name: t.Name, Kind: t.Kind}
	if t.Kind == control.TemplateSnapshot {
		v.ID, v.SandboxID = t.ID, t.SourceSandboxID
		v.VCPUs, v.MemoryMiB = &t.VCPUs, &t.MemoryMiB
		v.CreatedAt = timeOrNil(t.CreatedAt)
	}
	return v
}
