package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"wrenn.dev/wrenn/internal/sandbox"
	"wrenn.dev/wrenn/internal/vmm"
)

// recordVersion is the version of the record format.
const recordVersion = 1

// record is what the agent persists per sandbox: enough to report it after
// a restart, and to reattach to its VM or clean up after it.
type record struct {
	Version int             `json:"version"`
	Sandbox sandbox.Sandbox `json:"sandbox"`
	// Dir is the sandbox's directory (root disk clone, VM directory); ""
	// once it is removed (or before it exists).
	Dir string `json:"dir,omitempty"`
	// Slot is the index of the network slot it holds; 0 for none (slot
	// indices start at 1).
	Slot int `json:"slot,omitempty"`
	// Spec is the spec its VM was booted from, and PID that VM's process;
	// nil and 0 while no VM runs.
	Spec *vmm.Spec `json:"spec,omitempty"`
	PID  int       `json:"pid,omitempty"`
	// Shell is the template's shell, for terminals.
	Shell string `json:"shell,omitempty"`
	// Snapshot is the sandbox's own snapshot in the snapshot store;
	// BaseSnapshot one it diffs against without owning it (its
	// template's); SnapshotGen numbers its snapshots.
	Snapshot     string `json:"snapshot,omitempty"`
	BaseSnapshot string `json:"base_snapshot,omitempty"`
	SnapshotGen  int    `json:"snapshot_gen,omitempty"`
	// Frozen: the sandbox's state is in Snapshot and it has (or should
	// have) no VM. A restart finds it Paused.
	Frozen bool `json:"frozen,omitempty"`
	// EnvVars are the create request's, sent again at every /init.
	EnvVars map[string]string `json:"env_vars,omitempty"`
	// RestoreSpec is the VM spec (without network) a snapshot restores
	// with.
	RestoreSpec *vmm.Spec `json:"restore_spec,omitempty"`
}

// leftovers reports whether the record still names resources.
func (r *record) leftovers() bool {
	return r.Dir != "" || r.Slot != 0 || r.PID != 0 || r.Snapshot != ""
}

// store keeps one JSON file per sandbox in dir, each replaced atomically
// (written to a temporary file, synced, renamed, directory synced).
type store struct{ dir string }

const (
	recordSuffix  = ".json"
	tempPrefix    = ".tmp-"
	corruptSuffix = ".corrupt"
)

func (s *store) path(id string) string { return filepath.Join(s.dir, id+recordSuffix) }

// save writes r in place of the sandbox's previous record.
func (s *store) save(r *record) error {
	r.Version = recordVersion
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode record of sandbox %s: %w", r.Sandbox.ID, err)
	}
	f, err := os.CreateTemp(s.dir, tempPrefix+r.Sandbox.ID+"-")
	if err != nil {
		return fmt.Errorf("save record of sandbox %s: %w", r.Sandbox.ID, err)
	}
	tmp := f.Name()
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, s.path(r.Sandbox.ID))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("save record of sandbox %s: %w", r.Sandbox.ID, err)
	}
	return s.syncDir()
}

// remove deletes the sandbox's record; a missing one is not an error.
func (s *store) remove(id string) error {
	if err := os.Remove(s.path(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove record of sandbox %s: %w", id, err)
	}
	return s.syncDir()
}

func (s *store) syncDir() error {
	d, err := os.Open(s.dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", s.dir, err)
	}
	return nil
}

// load reads every record. Temporary files of interrupted saves are
// removed. A record that cannot be read is renamed to <name>.corrupt (kept
// for people to look at, ignored from then on) and reported in errs.
func (s *store) load() (recs []*record, errs []error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, []error{fmt.Errorf("read records: %w", err)}
	}
	for _, e := range entries {
		name := e.Name()
		p := filepath.Join(s.dir, name)
		switch {
		case strings.HasPrefix(name, tempPrefix):
			if err := os.Remove(p); err != nil {
				errs = append(errs, err)
			}
			continue
		case !strings.HasSuffix(name, recordSuffix) || !e.Type().IsRegular():
			continue
		}
		r, err := readRecord(p)
		if err == nil && r.Sandbox.ID+recordSuffix != name {
			err = fmt.Errorf("record %s is of sandbox %q", name, r.Sandbox.ID)
		}
		if err != nil {
			errs = append(errs, err)
			if rerr := os.Rename(p, p+corruptSuffix); rerr != nil {
				errs = append(errs, rerr)
			}
			continue
		}
		recs = append(recs, r)
	}
	return recs, errs
}

func readRecord(path string) (*record, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("record %s: %w", path, err)
	}
	if r.Version != recordVersion {
		return nil, fmt.Errorf("record %s has version %d, this agent reads %d", path, r.Version, recordVersion)
	}
	if err := sandbox.ValidateID(r.Sandbox.ID); err != nil {
		return nil, fmt.Errorf("record %s: %w", path, err)
	}
	return &r, nil
}

// writeJSONAtomic writes v as JSON to path (in dir) through a synced
// temporary file and a rename, then syncs dir.
func writeJSONAtomic(dir, path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, tempPrefix)
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDirPath(dir)
}

// readJSON decodes the JSON file at path into v.
func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func syncDirPath(dir string) error { return (&store{dir: dir}).syncDir() }
