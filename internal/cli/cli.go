// Package cli implements wrenn's client verbs: `wrenn sandbox ...`,
// `wrenn template ...` and `wrenn login`, on top of package client.
//
// Each entry point ([Sandbox], [Template], [Login]) takes the arguments
// after its command word and an [Env] holding the process's standard
// streams, environment and terminal, so tests drive the verbs with buffers,
// a fake environment and a fake terminal.
//
// Every verb accepts the client flags -url, -api-key and -json, anywhere
// among its arguments. The server and credential come from, in order: the
// flags, the environment (WRENN_URL, WRENN_API_KEY), and the config file
// ($WRENN_CONFIG, else $XDG_CONFIG_HOME/wrenn/config.json, else
// ~/.config/wrenn/config.json), which holds {"url", "api_key"} and, after
// `wrenn login`, a session token; the URL defaults to
// http://127.0.0.1:8080.
//
// Output convention: people get aligned tables for lists and short lines
// otherwise. With -json, stdout carries JSON Lines: each object the API
// answered, one per line, in the API's shape; a list prints one line per
// element (so `-all` streams, and `jq -s` makes an array); verbs whose API
// answer is empty (kill, template delete) print nothing; exec prints the
// exec stream's events as the server sent them (output base64-encoded).
// Messages and hints always go to stderr.
//
// Errors: a mistake in the arguments is a [*UsageError] (wrenn exits 2);
// exec and shell return an [*ExitError] carrying the remote command's exit
// code, which wrenn exits with.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/term"

	"wrenn.dev/wrenn/internal/client"
	"wrenn.dev/wrenn/internal/version"
)

// DefaultURL is the server used when no flag, variable or config names one:
// where `wrenn dev` listens.
const DefaultURL = "http://127.0.0.1:8080"

// Env is the world a verb runs in.
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Getenv reads an environment variable; nil is os.Getenv.
	Getenv func(string) string
	// Term is the terminal on Stdin, or nil when Stdin is not a terminal
	// (no raw mode, no password prompt).
	Term Terminal
	// Now is the clock for ages and expiries; nil is time.Now.
	Now func() time.Time
	// HTTPClient sends the requests; nil is http.DefaultClient.
	HTTPClient *http.Client
}

// Terminal is the terminal wrenn runs in, behind an interface so tests
// can use a fake one.
type Terminal interface {
	// MakeRaw puts the terminal in raw mode and returns the function that
	// restores it.
	MakeRaw() (restore func() error, err error)
	// Size returns the terminal's width and height in characters.
	Size() (cols, rows int, err error)
	// Resizes returns a channel that receives a value when the terminal's
	// size changes (SIGWINCH), and a function that stops the notifications.
	Resizes() (<-chan struct{}, func())
	// ReadPassword reads a line with echo off.
	ReadPassword() ([]byte, error)
}

// OSEnv returns the Env of the running process: os.Stdin (with its
// terminal, when it is one), the given output streams, and os.Getenv.
func OSEnv(stdout, stderr io.Writer) Env {
	env := Env{Stdin: os.Stdin, Stdout: stdout, Stderr: stderr, Getenv: os.Getenv}
	if fd := int(os.Stdin.Fd()); term.IsTerminal(fd) {
		env.Term = osTerminal{fd: fd}
	}
	return env
}

// osTerminal is a real terminal, by file descriptor.
type osTerminal struct{ fd int }

func (t osTerminal) MakeRaw() (func() error, error) {
	st, err := term.MakeRaw(t.fd)
	if err != nil {
		return nil, fmt.Errorf("put the terminal in raw mode: %w", err)
	}
	return func() error { return term.Restore(t.fd, st) }, nil
}

func (t osTerminal) Size() (int, int, error) { return term.GetSize(t.fd) }

func (t osTerminal) Resizes() (<-chan struct{}, func()) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGWINCH)
	out := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-sig:
				select {
				case out <- struct{}{}:
				default: // one pending notice is enough: the size is read fresh
				}
			case <-done:
				return
			}
		}
	}()
	var once sync.Once
	return out, func() {
		once.Do(func() {
			signal.Stop(sig)
			close(done)
		})
	}
}

func (t osTerminal) ReadPassword() ([]byte, error) { return term.ReadPassword(t.fd) }

func (env *Env) getenv(k string) string {
	if env.Getenv == nil {
		return os.Getenv(k)
	}
	return env.Getenv(k)
}

func (env *Env) now() time.Time {
	if env.Now == nil {
		return time.Now()
	}
	return env.Now()
}

// ExitError ends wrenn with the exit code of a command run in a sandbox.
// It carries no message: the command's own output said what happened.
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// UsageError is a mistake in how a verb was called (wrenn exits 2).
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

func usagef(format string, args ...any) error {
	return &UsageError{Msg: fmt.Sprintf(format, args...)}
}

// verb is one subcommand of a command word.
type verb struct {
	name, usage, summary string
	run                  func(ctx context.Context, env Env, args []string) error
}

// dispatch runs the verb args[0] of command word.
func dispatch(ctx context.Context, word string, verbs []verb, args []string, env Env) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help" {
		w := env.Stdout
		if len(args) == 0 {
			w = env.Stderr
		}
		fmt.Fprintf(w, "usage: wrenn %s <verb> [flags] [args]\n\nverbs:\n", word)
		for _, v := range verbs {
			fmt.Fprintf(w, "  %-8s %s\n", v.name, v.summary)
		}
		fmt.Fprintf(w, "\nRun wrenn %s <verb> -h for a verb's flags.\n", word)
		if len(args) == 0 {
			return usagef("wrenn %s needs a verb", word)
		}
		return nil
	}
	for _, v := range verbs {
		if v.name == args[0] {
			return v.run(ctx, env, args[1:])
		}
	}
	return usagef("wrenn %s: unknown verb %q; see wrenn %s -h", word, args[0], word)
}

// newFlags returns the flag set of a verb, which reports errors to stderr
// instead of exiting.
func newFlags(env Env, name, usage, summary string) *flag.FlagSet {
	fs := flag.NewFlagSet("wrenn "+name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.Usage = func() {
		fmt.Fprintf(env.Stderr, "usage: wrenn %s %s\n\n%s\n\nflags:\n", name, usage, summary)
		fs.PrintDefaults()
	}
	return fs
}

// errHelp is returned by parseArgs for -h; verbs return nil for it.
var errHelp = errors.New("help requested")

// parseArgs parses flags anywhere among args and returns the positional
// arguments. "--" ends the flags. With rawAfter > 0, once that many
// positional arguments are seen the first argument that is not a flag
// ends the flags too (exec ID CMD ARGS...: CMD's own flags are not
// wrenn's).
func parseArgs(fs *flag.FlagSet, args []string, rawAfter int) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, errHelp
			}
			return nil, &UsageError{Msg: err.Error()}
		}
		rest := fs.Args()
		if endedWithTerminator(fs, args[:len(args)-len(rest)]) {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		if rawAfter > 0 && len(pos) >= rawAfter {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// endedWithTerminator reports whether the flags fs consumed ended with a
// "--" terminator (and not a flag's value that happens to be "--").
func endedWithTerminator(fs *flag.FlagSet, consumed []string) bool {
	n := len(consumed)
	if n == 0 || consumed[n-1] != "--" {
		return false
	}
	if n == 1 {
		return true
	}
	prev := strings.TrimLeft(consumed[n-2], "-")
	if !strings.HasPrefix(consumed[n-2], "-") || strings.Contains(prev, "=") {
		return true
	}
	f := fs.Lookup(prev)
	if f == nil {
		return true
	}
	if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
		return true
	}
	return false // "--" was the value of the flag before it
}

// globals are the client flags every verb takes.
type globals struct {
	url, apiKey string
	json        bool
}

func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.url, "url", "", "server URL (default $WRENN_URL, the config file, or "+DefaultURL+")")
	fs.StringVar(&g.apiKey, "api-key", "", "API key (default $WRENN_API_KEY or the config file)")
	fs.BoolVar(&g.json, "json", false, "print the API's JSON objects, one per line")
}

// session is a verb's connection to the server.
type session struct {
	c   *client.Client
	url string
	// cred names the credential and where it came from, and fix says what
	// to do when the server refuses it.
	cred, fix string
}

// serverURL resolves the server's URL: flag, WRENN_URL, config, default.
func (g *globals) serverURL(env Env, cfg Config) string {
	for _, u := range []string{g.url, env.getenv("WRENN_URL"), cfg.URL} {
		if u != "" {
			return u
		}
	}
	return DefaultURL
}

// connect resolves the server and credential and makes the client.
func (g *globals) connect(env Env) (*session, error) {
	cfg, path, err := loadConfig(env)
	if err != nil {
		return nil, err
	}
	s := &session{url: g.serverURL(env, cfg)}
	opts := []client.Option{client.WithUserAgent("wrenn/" + version.Version)}
	if env.HTTPClient != nil {
		opts = append(opts, client.WithHTTPClient(env.HTTPClient))
	}
	var key string
	switch {
	case g.apiKey != "":
		key, s.cred = g.apiKey, "API key given with -api-key"
	case env.getenv("WRENN_API_KEY") != "":
		key, s.cred = env.getenv("WRENN_API_KEY"), "API key in WRENN_API_KEY"
	case cfg.Token != "" && (cfg.TokenExpiresAt == nil || env.now().Before(*cfg.TokenExpiresAt)):
		opts = append(opts, client.WithBearer(cfg.Token))
		s.cred, s.fix = "session token in "+path, "run wrenn login again"
	case cfg.APIKey != "":
		key, s.cred = cfg.APIKey, "API key in "+path
	case cfg.Token != "":
		return nil, fmt.Errorf("the session token in %s expired at %s: run wrenn login again, or use an API key (-api-key, WRENN_API_KEY)",
			path, cfg.TokenExpiresAt.Local().Format(time.DateTime))
	default:
		where := path
		if where == "" {
			where = "a config file named by WRENN_CONFIG"
		}
		return nil, fmt.Errorf(`no API key: pass -api-key, set WRENN_API_KEY, or put it in %s as "api_key" (wrenn dev prints one); or run wrenn login`, where)
	}
	s.c, err = client.New(s.url, key, opts...)
	if err != nil {
		return nil, fmt.Errorf("%w (from -url, WRENN_URL or the config file)", err)
	}
	return s, nil
}

// explain adds the fix to errors whose message alone does not say it.
func (s *session) explain(err error) error {
	var ce *client.Error
	if errors.As(err, &ce) {
		switch ce.Status {
		case http.StatusUnauthorized:
			fix := s.fix
			if fix == "" {
				fix = "check the key, or create another"
			}
			return fmt.Errorf("the server refused the %s: %w; %s", s.cred, err, fix)
		case http.StatusForbidden:
			return fmt.Errorf("not allowed with the %s: %w", s.cred, err)
		}
	}
	return err
}

// verbSetup parses a verb's arguments and connects. want is the number of
// positional arguments (-1: one or more); rawAfter is parseArgs's.
type verbSetup struct {
	env      Env
	name     string
	want     int
	rawAfter int
	// check, when set, validates the positional arguments before the
	// verb connects.
	check func(pos []string) error
	g     globals
	fs    *flag.FlagSet
}

// newVerb sets up verb v of command word (whose verbs are in table).
func newVerb(env Env, word string, table []verb, v string, want int) *verbSetup {
	vs := &verbSetup{env: env, name: word + " " + v, want: want}
	usage, summary := "", ""
	for _, tv := range table {
		if tv.name == v {
			usage, summary = tv.usage, tv.summary
		}
	}
	vs.fs = newFlags(env, vs.name, usage, summary)
	vs.g.register(vs.fs)
	return vs
}

// parse parses args and checks the number of positional arguments.
func (vs *verbSetup) parse(args []string) ([]string, error) {
	pos, err := parseArgs(vs.fs, args, vs.rawAfter)
	if err != nil {
		return nil, err
	}
	switch {
	case vs.want >= 0 && len(pos) != vs.want:
		return nil, usagef("wrenn %s takes %s, got %d; see wrenn %s -h", vs.name, vs.describeWant(), len(pos), vs.name)
	case vs.want < 0 && len(pos) == 0 && vs.check == nil:
		return nil, usagef("wrenn %s needs at least one sandbox id; see wrenn %s -h", vs.name, vs.name)
	}
	return pos, nil
}

func (vs *verbSetup) describeWant() string {
	switch vs.want {
	case 0:
		return "no arguments"
	case 1:
		return "one argument"
	}
	return strconv.Itoa(vs.want) + " arguments"
}

// run parses, connects and calls fn; -h is not an error.
func (vs *verbSetup) run(args []string, fn func(s *session, pos []string) error) error {
	pos, err := vs.parse(args)
	if errors.Is(err, errHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	if vs.check != nil {
		if err := vs.check(pos); err != nil {
			return err
		}
	}
	s, err := vs.g.connect(vs.env)
	if err != nil {
		return err
	}
	return s.explain(fn(s, pos))
}
