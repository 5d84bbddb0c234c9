package cli_test

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"wrenn.dev/wrenn/internal/cli"
	"wrenn.dev/wrenn/internal/errdefs"
)

func writeConfig(t *testing.T, path string, cfg map[string]any) {
	t.Helper()
	data, _ := json.Marshal(cfg)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestConfigPath(t *testing.T) {
	tests := []struct {
		vars map[string]string
		want string
	}{
		{map[string]string{"WRENN_CONFIG": "/etc/w.json", "XDG_CONFIG_HOME": "/x", "HOME": "/h"}, "/etc/w.json"},
		{map[string]string{"XDG_CONFIG_HOME": "/x", "HOME": "/h"}, "/x/wrenn/config.json"},
		{map[string]string{"HOME": "/h"}, "/h/.config/wrenn/config.json"},
		{map[string]string{}, ""},
	}
	for _, tt := range tests {
		if got := cli.ConfigPath(func(k string) string { return tt.vars[k] }); got != tt.want {
			t.Errorf("ConfigPath(%v) = %q, want %q", tt.vars, got, tt.want)
		}
	}
}

// TestPrecedence checks flags > environment > config file, for the URL
// and the credential.
func TestPrecedence(t *testing.T) {
	api := newFakeAPI(t, nil)
	// Each source names a different path prefix of the one fake server,
	// so the request's path says which URL was used.
	flagURL, envURL, fileURL := api.srv.URL+"/flag", api.srv.URL+"/env", api.srv.URL+"/file"
	future := now.Add(time.Hour)
	tests := []struct {
		name     string
		flags    []string
		env      map[string]string
		file     map[string]any
		wantPath string
		wantCred string
	}{
		{"flags win", []string{"-url", flagURL, "-api-key", "k-flag"}, map[string]string{"WRENN_URL": envURL, "WRENN_API_KEY": "k-env"},
			map[string]any{"url": fileURL, "api_key": "k-file"}, "/flag", "k-flag"},
		{"environment beats the file", nil, map[string]string{"WRENN_URL": envURL, "WRENN_API_KEY": "k-env"},
			map[string]any{"url": fileURL, "api_key": "k-file"}, "/env", "k-env"},
		{"the file", nil, nil, map[string]any{"url": fileURL, "api_key": "k-file"}, "/file", "k-file"},
		{"a live session token beats the file's key", nil, nil,
			map[string]any{"url": fileURL, "api_key": "k-file", "token": "jwt", "token_expires_at": future}, "/file", "Bearer jwt"},
		{"an expired token yields to the file's key", nil, nil,
			map[string]any{"url": fileURL, "api_key": "k-file", "token": "jwt", "token_expires_at": now.Add(-time.Second)}, "/file", "k-file"},
		{"the environment's key beats a token", nil, map[string]string{"WRENN_API_KEY": "k-env"},
			map[string]any{"url": fileURL, "token": "jwt", "token_expires_at": future}, "/file", "k-env"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			home := t.TempDir()
			vars := map[string]string{"HOME": home}
			for k, v := range tt.env {
				vars[k] = v
			}
			writeConfig(t, filepath.Join(home, ".config", "wrenn", "config.json"), tt.file)
			env, _ := testEnv(t, "")
			env.Getenv = func(k string) string { return vars[k] }
			before := len(api.requests())
			args := append([]string{"get", "sb-1"}, tt.flags...)
			cli.Sandbox(bg, args, env) // the fake answers 404; only the request matters
			reqs, creds := api.requests()[before:], api.credentials()[before:]
			if len(reqs) != 1 || reqs[0] != "GET "+tt.wantPath+"/v1/sandboxes/sb-1" || creds[0] != tt.wantCred {
				t.Errorf("wrenn sandbox %s sent %q with credentials %q; want GET %s/v1/sandboxes/sb-1 with %q",
					strings.Join(args, " "), reqs, creds, tt.wantPath, tt.wantCred)
			}
		})
	}
}

func TestCredentialErrors(t *testing.T) {
	api := newFakeAPI(t, map[string]http.HandlerFunc{
		"GET /v1/sandboxes/sb-1": answer(401, `{"message":"token expired","code":401}`),
	})
	home := t.TempDir()
	path := filepath.Join(home, ".config", "wrenn", "config.json")
	tests := []struct {
		name string
		file map[string]any // nil: no config file
		err  string
	}{
		{"nothing", nil, `no API key: pass -api-key, set WRENN_API_KEY, or put it in ` + path +
			` as "api_key" (wrenn dev prints one); or run wrenn login`},
		{"expired token", map[string]any{"token": "jwt", "token_expires_at": now.Add(-time.Minute)},
			"the session token in " + path + " expired at " + now.Add(-time.Minute).Local().Format(time.DateTime) +
				": run wrenn login again, or use an API key (-api-key, WRENN_API_KEY)"},
		{"refused token", map[string]any{"token": "jwt"},
			"the server refused the session token in " + path + ": token expired; run wrenn login again"},
		{"bad file", map[string]any{"url": 7}, "config file " + path +
			" is not valid JSON (json: cannot unmarshal number into Go struct field Config.url of type string); fix or delete it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			os.Remove(path)
			if tt.file != nil {
				writeConfig(t, path, tt.file)
			}
			env, _ := testEnv(t, api.srv.URL)
			vars := map[string]string{"HOME": home, "WRENN_URL": api.srv.URL}
			env.Getenv = func(k string) string { return vars[k] }
			err := cli.Sandbox(bg, []string{"get", "sb-1"}, env)
			checkErr(t, "wrenn sandbox get sb-1 ("+tt.name+")", err, tt.err, false, nil)
		})
	}
}

func TestUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	ln.Close()
	env, _ := testEnv(t, url)
	err = cli.Sandbox(bg, []string{"list"}, env)
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("wrenn sandbox list with no server: error %v, want class unavailable", err)
	}
	for _, want := range []string{"the Wrenn server at " + url + " is unreachable", "wrenn dev", "WRENN_URL"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("wrenn sandbox list with no server: error %q does not say %q", err, want)
		}
	}
}

func TestLogin(t *testing.T) {
	const loginAnswer = `{"token":"a.b.c","expires_at":"2026-11-30T08:10:00Z","user":{"id":"u-1","team_id":"team-1","email":"ada@example.com","role":"admin","created_at":"2026-11-29T20:00:00Z"}}`
	api := newFakeAPI(t, map[string]http.HandlerFunc{
		"POST /v1/auth/login": func(w http.ResponseWriter, r *http.Request) {
			var in struct{ Email, Password string }
			json.NewDecoder(r.Body).Decode(&in)
			if in.Password != "correct horse" {
				answer(401, `{"message":"wrong email or password","code":401}`)(w, r)
				return
			}
			answer(200, loginAnswer)(w, r)
		},
	})
	expires := time.Date(2026, 11, 30, 8, 10, 0, 0, time.UTC)
	tests := []struct {
		name   string
		args   []string
		stdin  string
		term   *fakeTerm
		stdout string
		stderr string
		err    string
		usage  bool
	}{
		{
			name: "password on stdin", args: []string{"-email", "ada@example.com", "-password-stdin"}, stdin: "correct horse\nignored\n",
			stdout: "logged in to URL as ada@example.com (admin); session token saved in CONFIG, valid until " + expires.Local().Format(time.DateTime) + "\n",
		},
		{
			name: "prompt", args: []string{"-email", "ada@example.com", "-json"}, term: &fakeTerm{password: "correct horse"},
			stdout: loginAnswer + "\n", stderr: "Password: \n",
		},
		{
			name: "wrong password", args: []string{"-email", "ada@example.com", "-password-stdin"}, stdin: "wrong\n",
			err: "login refused: wrong email or password; check the email and password",
		},
		{
			name: "no terminal", args: []string{"-email", "ada@example.com"},
			err: "standard input is not a terminal: pass the password on it with -password-stdin", usage: true,
		},
		{
			name: "no email", args: []string{"-password-stdin"},
			err: "wrenn login needs -email", usage: true,
		},
		{
			name: "empty password", args: []string{"-email", "ada@example.com", "-password-stdin"},
			err: "no password on standard input",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env, vars := testEnv(t, api.srv.URL)
			delete(vars, "WRENN_API_KEY")
			env.Stdin = strings.NewReader(tt.stdin)
			if tt.term != nil {
				env.Term = tt.term
			}
			call := "wrenn login " + strings.Join(tt.args, " ")
			err := cli.Login(bg, tt.args, env)
			checkErr(t, call, err, tt.err, tt.usage, nil)
			stdout, stderr := out(env)
			path := configPath(vars)
			want := strings.NewReplacer("URL", api.srv.URL, "CONFIG", path).Replace(tt.stdout)
			if !sameOutput(stdout, want) || stderr != tt.stderr {
				t.Errorf("%s printed %q and %q to stderr, want %q and %q", call, stdout, stderr, want, tt.stderr)
			}
			if tt.err != "" {
				if _, err := os.Stat(path); err == nil {
					t.Errorf("%s failed but wrote %s", call, path)
				}
				return
			}
			st, err := os.Stat(path)
			if err != nil || st.Mode().Perm() != 0o600 {
				t.Fatalf("%s: config file %s: mode %v, %v; want 0600", call, path, st.Mode(), err)
			}
			var cfg cli.Config
			data, _ := os.ReadFile(path)
			if err := json.Unmarshal(data, &cfg); err != nil || cfg.URL != api.srv.URL || cfg.Token != "a.b.c" ||
				cfg.TokenExpiresAt == nil || !cfg.TokenExpiresAt.Equal(expires) {
				t.Errorf("%s saved %s, want the URL, token and expiry", call, data)
			}

			// Later verbs use the saved token.
			before := len(api.requests())
			cli.Sandbox(bg, []string{"list"}, env)
			if creds := api.credentials()[before:]; len(creds) != 1 || creds[0] != "Bearer a.b.c" {
				t.Errorf("after %s, wrenn sandbox list sent credentials %q, want the session token", call, creds)
			}
		})
	}
}

func TestLoginKeepsTheAPIKey(t *testing.T) {
	api := newFakeAPI(t, map[string]http.HandlerFunc{
		"POST /v1/auth/login": answer(200, `{"token":"a.b.c","expires_at":"2026-11-30T08:10:00Z","user":{"email":"ada@example.com","role":"member"}}`),
	})
	env, vars := testEnv(t, api.srv.URL)
	env.Stdin = strings.NewReader("pw\n")
	writeConfig(t, configPath(vars), map[string]any{"api_key": "k-file", "url": "http://elsewhere:1"})
	if err := cli.Login(bg, []string{"-email", "ada@example.com", "-password-stdin"}, env); err != nil {
		t.Fatalf("wrenn login: %v", err)
	}
	if _, stderr := out(env); stderr != "note: WRENN_API_KEY is set, and wins over the session token; unset it to use the token\n" {
		t.Errorf("wrenn login with WRENN_API_KEY set printed %q to stderr, want a note", stderr)
	}
	var cfg cli.Config
	data, _ := os.ReadFile(configPath(vars))
	json.Unmarshal(data, &cfg)
	if cfg.APIKey != "k-file" || cfg.Token != "a.b.c" || cfg.URL != api.srv.URL {
		t.Errorf("wrenn login turned the config into %s; want the API key kept, the token and the new URL", data)
	}
}
