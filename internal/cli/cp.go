package cli

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"wrenn.dev/wrenn/internal/client"
)

// remote is one side of a copy: ID:/abs/path in a sandbox, or a local path
// ("-" for stdin or stdout).
type remote struct {
	id, path string
}

// splitRemote parses ID:/abs/path. A local path never matches: its part
// before the first ":" would contain a "/", or its part after would not
// start with one.
func splitRemote(arg string) (remote, bool) {
	id, p, ok := strings.Cut(arg, ":")
	if !ok || id == "" || strings.Contains(id, "/") || !strings.HasPrefix(p, "/") {
		return remote{}, false
	}
	return remote{id: id, path: p}, true
}

func sandboxCp(ctx context.Context, env Env, args []string) error {
	vs := newSandboxVerb(env, "cp", 2)
	var user string
	vs.fs.StringVar(&user, "user", "", "read or write the sandbox's file as this user (default: the template's)")
	var src, dst string
	var from, to remote
	var fromRemote, toRemote bool
	vs.check = func(pos []string) error {
		src, dst = pos[0], pos[1]
		from, fromRemote = splitRemote(src)
		to, toRemote = splitRemote(dst)
		switch {
		case fromRemote && toRemote:
			return usagef("wrenn sandbox cp copies between a sandbox and this machine; SRC and DST are both ID:/path")
		case !fromRemote && !toRemote:
			return usagef("wrenn sandbox cp: one of SRC and DST must be ID:/absolute/path")
		case toRemote && src == "-" && strings.HasSuffix(to.path, "/"):
			return usagef("wrenn sandbox cp: copying stdin needs a file name, not the directory %s", to.path)
		}
		return nil
	}
	return vs.run(args, func(s *session, _ []string) error {
		if toRemote {
			return upload(ctx, env, s, vs.g.json, src, to, user)
		}
		return download(ctx, env, s, vs.g.json, from, dst, user)
	})
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func upload(ctx context.Context, env Env, s *session, asJSON bool, src string, to remote, user string) error {
	var r io.Reader = env.Stdin
	if src != "-" {
		f, err := os.Open(src)
		if err != nil {
			return err
		}
		defer f.Close()
		if st, err := f.Stat(); err != nil {
			return err
		} else if st.IsDir() {
			return fmt.Errorf("%s is a directory; wrenn sandbox cp copies single files", src)
		}
		r = f
		if strings.HasSuffix(to.path, "/") {
			to.path += filepath.Base(src)
		}
	}
	cr := &countingReader{r: r}
	fi, err := s.c.Upload(ctx, to.id, to.path, user, cr)
	if err != nil {
		return err
	}
	if fi.Size != cr.n {
		return fmt.Errorf("sent %d bytes but the sandbox wrote %d to %s", cr.n, fi.Size, fi.Path)
	}
	if asJSON {
		return printJSON(env.Stdout, fi)
	}
	_, err = fmt.Fprintf(env.Stdout, "copied %d bytes to %s:%s\n", fi.Size, to.id, fi.Path)
	return err
}

func download(ctx context.Context, env Env, s *session, asJSON bool, from remote, dst, user string) error {
	body, err := s.c.Download(ctx, from.id, from.path, user)
	if err != nil {
		return err
	}
	defer body.Close()
	var n int64
	msgs := env.Stdout
	if dst == "-" {
		msgs = env.Stderr // stdout carries the file
		if n, err = io.Copy(env.Stdout, body); err != nil {
			return fmt.Errorf("copy %s:%s: %w", from.id, from.path, err)
		}
	} else {
		if st, err := os.Stat(dst); err == nil && st.IsDir() {
			dst = filepath.Join(dst, path.Base(from.path))
		}
		if n, err = writeFile(dst, body); err != nil {
			return fmt.Errorf("copy %s:%s to %s: %w", from.id, from.path, dst, err)
		}
	}
	if asJSON {
		return printJSON(msgs, client.FileInfo{Path: from.path, Size: n})
	}
	to := dst
	if dst == "-" {
		to = "stdout"
	}
	_, err = fmt.Fprintf(msgs, "copied %d bytes from %s:%s to %s\n", n, from.id, from.path, to)
	return err
}

// writeFile streams r into a new file that replaces dst only once it is
// complete, keeping an existing dst's permissions.
func writeFile(dst string, r io.Reader) (int64, error) {
	mode := fs.FileMode(0o644)
	if st, err := os.Stat(dst); err == nil {
		mode = st.Mode().Perm()
	}
	f, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".wrenn-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name()) // fails harmlessly once renamed
	n, err := io.Copy(f, r)
	if err == nil {
		err = f.Chmod(mode)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), dst)
	}
	return n, err
}
