package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"wrenn.dev/wrenn/internal/client"
	"wrenn.dev/wrenn/internal/version"
)

// Login runs `wrenn login`: it exchanges an email and password for a
// session token and saves the token, with the server's URL, in the config
// file, where later verbs find it.
func Login(ctx context.Context, args []string, env Env) error {
	fs := newFlags(env, "login", "-email EMAIL [-password-stdin] [-url URL]",
		"Log in with email and password and save the session token (valid 12 h)\nand the server's URL in the config file.")
	var g globals
	fs.StringVar(&g.url, "url", "", "server URL (default $WRENN_URL, the config file, or "+DefaultURL+")")
	fs.BoolVar(&g.json, "json", false, "print the API's login answer (with the token) as JSON")
	var email string
	var passwordStdin bool
	fs.StringVar(&email, "email", "", "the user's email (required)")
	fs.BoolVar(&passwordStdin, "password-stdin", false, "read the password from the first line of standard input")
	pos, err := parseArgs(fs, args, 0)
	if errors.Is(err, errHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("wrenn login takes no arguments; see wrenn login -h")
	}
	if email == "" {
		return usagef("wrenn login needs -email")
	}
	if !passwordStdin && env.Term == nil {
		return usagef("standard input is not a terminal: pass the password on it with -password-stdin")
	}
	cfg, path, err := loadConfig(env)
	if err != nil {
		return err
	}
	if path == "" {
		return errors.New("nowhere to save the session token: set WRENN_CONFIG to a file name, or HOME")
	}
	url := g.serverURL(env, cfg)

	password, err := readPassword(env, passwordStdin)
	if err != nil {
		return err
	}
	opts := []client.Option{client.WithUserAgent("wrenn/" + version.Version)}
	if env.HTTPClient != nil {
		opts = append(opts, client.WithHTTPClient(env.HTTPClient))
	}
	c, err := client.New(url, "", opts...)
	if err != nil {
		return fmt.Errorf("%w (from -url, WRENN_URL or the config file)", err)
	}
	sess, err := c.Login(ctx, email, password)
	var ce *client.Error
	if errors.As(err, &ce) && ce.Status == http.StatusUnauthorized {
		return fmt.Errorf("login refused: %w; check the email and password", err)
	}
	if err != nil {
		return err
	}
	cfg.URL, cfg.Token, cfg.TokenExpiresAt = url, sess.Token, &sess.ExpiresAt
	if err := saveConfig(path, cfg); err != nil {
		return err
	}
	if env.getenv("WRENN_API_KEY") != "" {
		fmt.Fprintln(env.Stderr, "note: WRENN_API_KEY is set, and wins over the session token; unset it to use the token")
	}
	if g.json {
		return printJSON(env.Stdout, sess)
	}
	_, err = fmt.Fprintf(env.Stdout, "logged in to %s as %s (%s); session token saved in %s, valid until %s\n",
		url, sess.User.Email, sess.User.Role, path, sess.ExpiresAt.Local().Format(time.DateTime))
	return err
}

// readPassword reads the password from stdin's first line, or prompts for
// it on the terminal without echo.
func readPassword(env Env, fromStdin bool) (string, error) {
	if fromStdin {
		line, err := bufio.NewReader(env.Stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("read the password from standard input: %w", err)
		}
		pw := strings.TrimRight(line, "\r\n")
		if pw == "" {
			return "", errors.New("no password on standard input")
		}
		return pw, nil
	}
	fmt.Fprint(env.Stderr, "Password: ")
	pw, err := env.Term.ReadPassword()
	fmt.Fprintln(env.Stderr)
	if err != nil {
		return "", fmt.Errorf("read the password: %w", err)
	}
	if len(pw) == 0 {
		return "", errors.New("no password given")
	}
	return string(pw), nil
}
