package filesystem

import (
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"

	"google.golang.org/protobuf/types/known/timestamppb"

	filesystempb "wrenn.dev/wrenn/internal/gen/filesystem"
)

// EntryInfoOf describes the filesystem object at path without following a
// final symlink (lstat):
//
//   - type is FILE, DIRECTORY or SYMLINK (UNSPECIFIED for devices, pipes
//     and sockets); a symlink carries symlink_target, the fully resolved
//     target when it resolves and the raw link text when it dangles;
//   - mode is the permission bits (mode & 0777) and permissions the
//     ls-style text of Go's fs.FileMode (e.g. "-rwxr-xr-x"), as E2B's envd
//     reports them;
//   - owner and group are names, or the numeric ids when unknown;
//   - metadata holds the user.e2b.* extended attributes, keyed without the
//     prefix.
//
// path is reported as given; pass an absolute, cleaned path. A missing path
// is ErrNotFound.
func EntryInfoOf(path string) (*filesystempb.EntryInfo, error) {
	return entryInfo(path, &idNames{})
}

func entryInfo(path string, names *idNames) (*filesystempb.EntryInfo, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, ClassifyOSError(err)
	}
	return entryFromInfo(path, fi, names), nil
}

// entryFromInfo builds the EntryInfo of path from its lstat result fi.
func entryFromInfo(path string, fi fs.FileInfo, names *idNames) *filesystempb.EntryInfo {
	mode := fi.Mode()
	e := &filesystempb.EntryInfo{
		Name:         fi.Name(),
		Path:         path,
		Size:         fi.Size(),
		Mode:         uint32(mode.Perm()),
		Permissions:  mode.String(),
		ModifiedTime: timestamppb.New(fi.ModTime()),
		Metadata:     readMetadata(path),
	}
	switch {
	case mode.IsRegular():
		e.Type = filesystempb.FileType_FILE_TYPE_FILE
	case mode.IsDir():
		e.Type = filesystempb.FileType_FILE_TYPE_DIRECTORY
	case mode&fs.ModeSymlink != 0:
		e.Type = filesystempb.FileType_FILE_TYPE_SYMLINK
		target, err := filepath.EvalSymlinks(path)
		if err != nil {
			target, err = os.Readlink(path)
		}
		if err == nil {
			e.SymlinkTarget = &target
		}
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		e.Owner = names.user(st.Uid)
		e.Group = names.group(st.Gid)
	}
	return e
}

// idNames turns uids and gids into names, remembering the answers for the
// life of one request (a listing repeats the same few owners many times).
// Unknown ids are shown as numbers. Not safe for concurrent use.
type idNames struct {
	users  map[uint32]string
	groups map[uint32]string
}

func (n *idNames) user(uid uint32) string {
	if name, ok := n.users[uid]; ok {
		return name
	}
	name := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(name); err == nil {
		name = u.Username
	}
	if n.users == nil {
		n.users = map[uint32]string{}
	}
	n.users[uid] = name
	return name
}

func (n *idNames) group(gid uint32) string {
	if name, ok := n.groups[gid]; ok {
		return name
	}
	name := strconv.FormatUint(uint64(gid), 10)
	if g, err := user.LookupGroupId(name); err == nil {
		name = g.Name
	}
	if n.groups == nil {
		n.groups = map[uint32]string{}
	}
	n.groups[gid] = name
	return name
}
