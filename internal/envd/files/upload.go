package files

import (
	"compress/gzip"
	"errors"
	"io"
	"io/fs"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"wrenn.dev/wrenn/internal/envd/filesystem"
	"wrenn.dev/wrenn/internal/envd/identity"
	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/httpjson"
)

// Metadata limits, as E2B's envd sets them: a key is at most the Linux
// xattr name limit (255) minus the "user.e2b." prefix, and all of a file's
// metadata (prefixed keys plus values) fits one inode's xattr budget.
const (
	metadataHeaderPrefix = "X-Metadata-"
	maxMetadataKey       = 246
	maxMetadataTotal     = 4096
)

// fileMode is the mode of uploaded files that replace nothing.
const fileMode = 0o644

// entryJSON is the EntryInfo of E2B's envd HTTP API.
type entryJSON struct {
	Path     string            `json:"path"`
	Name     string            `json:"name"`
	Type     string            `json:"type"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// upload writes the request's file or files. Each is streamed into a
// temporary file next to its destination and renamed into place only once
// every file of the request has been received, so a failed upload leaves
// no partial file behind (directories it created stay).
func (h *Handler) upload(w http.ResponseWriter, r *http.Request) {
	entries, err := h.receive(r)
	if err != nil {
		httpjson.Error(w, r, h.log, err)
		return
	}
	httpjson.Write(w, http.StatusOK, entries)
}

func (h *Handler) receive(r *http.Request) ([]entryJSON, error) {
	signed, err := h.authorize(r, opWrite)
	if err != nil {
		return nil, err
	}
	u, err := h.user(r, signed)
	if err != nil {
		return nil, err
	}
	md, err := parseMetadata(r.Header)
	if err != nil {
		return nil, err
	}
	switch enc := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			return nil, errdefs.InvalidArgument("request body is not valid gzip: %v", err)
		}
		defer zr.Close()
		r.Body = struct {
			io.Reader
			io.Closer
		}{zr, r.Body}
	default:
		return nil, errdefs.InvalidArgument("unsupported Content-Encoding %q: send gzip or none", enc)
	}

	var staged []*stagedFile
	defer func() {
		for _, sf := range staged {
			sf.discard()
		}
	}()
	queryPath := r.URL.Query().Get("path")
	if ct := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Type"))); strings.HasPrefix(ct, "multipart/") {
		mr, err := r.MultipartReader()
		if err != nil {
			return nil, errdefs.InvalidArgument("malformed multipart body: %v", err)
		}
		for {
			part, err := mr.NextPart()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, errdefs.InvalidArgument("malformed multipart body: %v", err)
			}
			filename := partFilename(part)
			if filename == "" && part.FormName() != "file" {
				part.Close() // an ordinary form field
				continue
			}
			target := queryPath
			switch {
			case target != "" && len(staged) > 0:
				return nil, errdefs.InvalidArgument("the path query parameter names one file but the body has several; name each part with its filename instead")
			case target == "":
				target = filename
			}
			if target == "" {
				return nil, errdefs.InvalidArgument("missing path: set the path query parameter or the part's filename")
			}
			sf, err := h.stage(u, target, part, md)
			part.Close()
			if err != nil {
				return nil, err
			}
			staged = append(staged, sf)
		}
		if len(staged) == 0 {
			return nil, errdefs.InvalidArgument("the multipart body has no file part")
		}
	} else {
		if queryPath == "" {
			return nil, errdefs.InvalidArgument("missing path: a raw (non-multipart) upload needs the path query parameter")
		}
		sf, err := h.stage(u, queryPath, r.Body, md)
		if err != nil {
			return nil, err
		}
		staged = append(staged, sf)
	}

	entries := make([]entryJSON, 0, len(staged))
	for _, sf := range staged {
		if err := sf.commit(); err != nil {
			return nil, err
		}
		entries = append(entries, entryOf(sf.path))
		h.log.DebugContext(r.Context(), "file uploaded", logKeyPath, sf.path, logKeyUser, u.Name, logKeyBytes, sf.size)
	}
	return entries, nil
}

// partFilename returns a part's filename parameter as sent: unlike
// Part.FileName it keeps the directories, which carry the destination.
func partFilename(p *multipart.Part) string {
	_, params, err := mime.ParseMediaType(p.Header.Get("Content-Disposition"))
	if err != nil {
		return ""
	}
	return params["filename"]
}

// parseMetadata collects X-Metadata-<key> headers (key lowercased, first
// value of a repeated header) and enforces E2B's limits: keys and values
// printable US-ASCII, keys at most 246 bytes, at most 4096 bytes in total
// counting each key with its xattr prefix.
func parseMetadata(h http.Header) (map[string]string, error) {
	var md map[string]string
	total := 0
	for name, vals := range h {
		if len(name) <= len(metadataHeaderPrefix) || !strings.EqualFold(name[:len(metadataHeaderPrefix)], metadataHeaderPrefix) || len(vals) == 0 {
			continue
		}
		key, val := strings.ToLower(name[len(metadataHeaderPrefix):]), vals[0]
		if !printableASCII(key) || !printableASCII(val) {
			return nil, errdefs.InvalidArgument("metadata header %s: keys and values must be printable US-ASCII", name)
		}
		if len(key) > maxMetadataKey {
			return nil, errdefs.InvalidArgument("metadata key %.32q... is %d bytes, more than the %d allowed", key, len(key), maxMetadataKey)
		}
		total += len(filesystem.MetadataXattrPrefix) + len(key) + len(val)
		if md == nil {
			md = map[string]string{}
		}
		md[key] = val
	}
	if total > maxMetadataTotal {
		return nil, errdefs.InvalidArgument("metadata is %d bytes in total, more than the %d allowed", total, maxMetadataTotal)
	}
	return md, nil
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// stagedFile is an upload received into a temporary file beside its
// destination, waiting to be renamed into place.
type stagedFile struct {
	tmp  string // "" once committed or discarded
	path string
	size int64
}

// commit renames the file into place.
func (sf *stagedFile) commit() error {
	if err := os.Rename(sf.tmp, sf.path); err != nil {
		return filesystem.ClassifyOSError(err)
	}
	sf.tmp = ""
	return nil
}

// discard removes the temporary file unless it was committed.
func (sf *stagedFile) discard() {
	if sf.tmp != "" {
		_ = os.Remove(sf.tmp)
		sf.tmp = ""
	}
}

// stage receives src into a temporary file for target (a request path),
// owned by u, with metadata md.
func (h *Handler) stage(u *identity.User, target string, src io.Reader, md map[string]string) (*stagedFile, error) {
	path, err := h.users.ResolvePath(u, target)
	if err != nil {
		return nil, err
	}
	f, path, err := createTemp(u, path)
	if err != nil {
		return nil, err
	}
	sf := &stagedFile{tmp: f.Name(), path: path}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			sf.discard()
		}
	}()
	sf.size, err = copyBody(f, src)
	if err != nil {
		return nil, err
	}
	if err := filesystem.SetMetadata(f, md); err != nil {
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, filesystem.ClassifyOSError(err)
	}
	ok = true
	return sf, nil
}

// createTemp prepares to replace path with a new file owned by u: it
// follows a symlink at path to its target, refuses a directory, creates
// the missing parent directories (owned by u) and opens a temporary file
// in the destination directory with the mode of the file it replaces (or
// 0644). It returns the file and the path to rename it to.
func createTemp(u *identity.User, path string) (*os.File, string, error) {
	mode := fs.FileMode(fileMode)
	fi, err := os.Lstat(path)
	if err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		if real, rerr := filepath.EvalSymlinks(path); rerr == nil {
			path = real
			fi, err = os.Lstat(path)
		} else {
			fi, err = nil, fs.ErrNotExist // dangling: replace the link itself
		}
	}
	switch {
	case err == nil && fi.IsDir():
		return nil, "", errdefs.InvalidArgument("%s is a directory", path)
	case err == nil:
		mode = fi.Mode().Perm()
	case !errors.Is(err, fs.ErrNotExist):
		return nil, "", filesystem.ClassifyOSError(err)
	}
	dir := filepath.Dir(path)
	if err := filesystem.EnsureDir(dir, u.UID, u.GID); err != nil {
		return nil, "", err
	}
	f, err := os.CreateTemp(dir, filesystem.TempPrefix+"*")
	if err != nil {
		return nil, "", filesystem.ClassifyOSError(err)
	}
	if err := f.Chmod(mode); err == nil {
		err = f.Chown(int(u.UID), int(u.GID))
	}
	if err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, "", filesystem.ClassifyOSError(err)
	}
	return f, path, nil
}

var copyBuffers = sync.Pool{New: func() any {
	b := make([]byte, 256<<10)
	return &b
}}

// copyBody streams src into dst. A failure to read src (a broken or
// truncated body) is ErrInvalidArgument; a failure to write is classified
// from its errno (ENOSPC is ErrResourceExhausted).
func copyBody(dst *os.File, src io.Reader) (int64, error) {
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	buf := *bp
	var total int64
	for {
		// Fill the buffer before writing: a multipart part yields a few
		// KiB per Read, and one write per Read would dominate the cost.
		n, rerr := fill(src, buf)
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return total, filesystem.ClassifyOSError(err)
			}
			total += int64(n)
		}
		if rerr == io.EOF { // not wrapped, by io.Reader's contract
			return total, nil
		}
		if rerr != nil {
			return total, errdefs.InvalidArgument("reading the upload body: %v", rerr)
		}
	}
}

// fill reads into buf until it is full or src fails; it returns io.EOF
// only for a clean end of src, unlike io.ReadFull, which reports a short
// read as io.ErrUnexpectedEOF whatever the cause.
func fill(src io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := src.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// entryOf describes a file just written, falling back to what is known
// if it is already gone again.
func entryOf(path string) entryJSON {
	e := entryJSON{Path: path, Name: filepath.Base(path), Type: "file"}
	if info, err := filesystem.EntryInfoOf(path); err == nil {
		e.Metadata = info.GetMetadata()
	}
	return e
}
