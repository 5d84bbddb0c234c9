package client_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/coder/websocket"

	"wrenn.dev/wrenn/internal/client"
	"wrenn.dev/wrenn/internal/errdefs"
)

// ptyServer is a fake terminal: it sends "started", echoes keystrokes,
// answers a resize with a line of output naming the size, and on the
// keystrokes "exit" sends an exit frame with code 7 and closes normally.
// Each request's URL and headers go to the returned channel.
func ptyServer(t *testing.T) (*httptest.Server, <-chan *http.Request) {
	t.Helper()
	seen := make(chan *http.Request, 4)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Clone(context.Background())
		if r.URL.Query().Get("token") != testKey {
			w.WriteHeader(401)
			io.WriteString(w, `{"message":"invalid API key","code":401}`)
			return
		}
		conn, err := websocket.Accept(w, r, nil)
		if err != nil {
			t.Errorf("fake pty: accept: %v", err)
			return
		}
		defer conn.CloseNow()
		ctx := r.Context()
		conn.Write(ctx, websocket.MessageText, []byte(`{"type":"started","pid":42}`))
		for {
			typ, data, err := conn.Read(ctx)
			if err != nil {
				return
			}
			switch {
			case typ == websocket.MessageText:
				var m struct {
					Type       string
					Cols, Rows int
				}
				if err := json.Unmarshal(data, &m); err != nil || m.Type != "resize" {
					t.Errorf("fake pty: control frame %q, want a resize", data)
				}
				conn.Write(ctx, websocket.MessageBinary, []byte("size "+strconv.Itoa(m.Cols)+"x"+strconv.Itoa(m.Rows)+"\n"))
			case string(data) == "exit":
				conn.Write(ctx, websocket.MessageBinary, []byte("bye\n"))
				conn.Write(ctx, websocket.MessageText, []byte(`{"type":"exit","exit_code":7}`))
				conn.Close(websocket.StatusNormalClosure, "")
				return
			default:
				conn.Write(ctx, websocket.MessageBinary, data)
			}
		}
	}))
	t.Cleanup(srv.Close)
	return srv, seen
}

// readUntil reads from r until the output so far contains want.
func readUntil(t *testing.T, r io.Reader, want string) string {
	t.Helper()
	var out bytes.Buffer
	buf := make([]byte, 3) // small reads exercise the frame buffer
	for !strings.Contains(out.String(), want) {
		n, err := r.Read(buf)
		out.Write(buf[:n])
		if err != nil {
			t.Fatalf("PTY.Read waiting for %q: got %q then %v", want, out.String(), err)
		}
	}
	return out.String()
}

func TestPTY(t *testing.T) {
	srv, seen := ptyServer(t)
	c := newClient(t, srv.URL)
	p, err := c.OpenPTY(context.Background(), "sb-1", client.PTYOptions{Cols: 100, Rows: 30, Cmd: "/bin/bash", User: "root"})
	if err != nil {
		t.Fatalf("OpenPTY: %v", err)
	}
	defer p.Close()
	r := <-seen
	if r.URL.Path != "/v1/sandboxes/sb-1/pty" {
		t.Errorf("OpenPTY requested %s", r.URL.Path)
	}
	q := r.URL.Query()
	for k, want := range map[string]string{"token": testKey, "cols": "100", "rows": "30", "cmd": "/bin/bash", "user": "root", "pid": ""} {
		if got := q.Get(k); got != want {
			t.Errorf("OpenPTY sent %s=%q, want %q", k, got, want)
		}
	}
	if got := r.Header.Get("X-API-Key"); got != testKey {
		t.Errorf("OpenPTY sent X-API-Key %q, want the key", got)
	}
	if p.PID() != 42 {
		t.Errorf("PTY.PID() = %d, want 42", p.PID())
	}

	if _, err := p.Write([]byte("hello")); err != nil {
		t.Fatalf("PTY.Write: %v", err)
	}
	readUntil(t, p, "hello")
	if err := p.Resize(120, 40); err != nil {
		t.Fatalf("PTY.Resize: %v", err)
	}
	readUntil(t, p, "size 120x40\n")
	if _, err := p.Write([]byte("exit")); err != nil {
		t.Fatalf("PTY.Write: %v", err)
	}
	rest, err := io.ReadAll(p)
	if err != nil || string(rest) != "bye\n" {
		t.Fatalf("PTY output after exit = %q, %v; want \"bye\\n\", nil (io.EOF)", rest, err)
	}
	code, err := p.Wait()
	if code != 7 || err != nil {
		t.Fatalf("PTY.Wait() = %d, %v; want 7, nil", code, err)
	}
	if n, err := p.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("PTY.Read after the end = %d, %v; want 0, io.EOF", n, err)
	}
}

func TestPTYAdminAndReattach(t *testing.T) {
	srv, seen := ptyServer(t)
	p, err := newClient(t, srv.URL).OpenPTY(context.Background(), "sb-1", client.PTYOptions{PID: 42, Admin: true})
	if err != nil {
		t.Fatalf("OpenPTY: %v", err)
	}
	r := <-seen
	if r.URL.Path != "/v1/admin/sandboxes/sb-1/pty" || r.URL.Query().Get("pid") != "42" {
		t.Errorf("OpenPTY(admin, pid 42) requested %s?%s", r.URL.Path, r.URL.RawQuery)
	}
	if err := p.Close(); err != nil {
		t.Errorf("PTY.Close: %v", err)
	}
	if _, err := p.Wait(); err == nil {
		t.Errorf("PTY.Wait after Close = nil error, want one saying the terminal was closed")
	}
	if _, err := p.Read(make([]byte, 8)); err == nil || err == io.EOF {
		t.Errorf("PTY.Read after Close: error %v, want a closed error", err)
	}
}

func TestPTYRefused(t *testing.T) {
	srv, _ := ptyServer(t)
	c, err := client.New(srv.URL, "wrn_wrong")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.OpenPTY(context.Background(), "sb-1", client.PTYOptions{})
	if !errors.Is(err, errdefs.ErrUnauthenticated) || err.Error() != "invalid API key" {
		t.Fatalf("OpenPTY with a wrong key: error %v, want the server's 401", err)
	}
}

func TestPTYServerError(t *testing.T) {
	tests := []struct {
		name    string
		started bool
	}{
		{"before started", false},
		{"after started", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				conn, err := websocket.Accept(w, r, nil)
				if err != nil {
					return
				}
				if tt.started {
					conn.Write(r.Context(), websocket.MessageText, []byte(`{"type":"started","pid":1}`))
				}
				conn.Close(websocket.StatusInternalError, "host host-a is unreachable")
			}))
			defer srv.Close()
			p, err := newClient(t, srv.URL).OpenPTY(context.Background(), "sb-1", client.PTYOptions{})
			if !tt.started {
				if err == nil || !strings.Contains(err.Error(), "host host-a is unreachable") {
					t.Fatalf("OpenPTY closed with 1011: error %v, want the reason", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("OpenPTY: %v", err)
			}
			defer p.Close()
			if _, err := io.ReadAll(p); err == nil || !strings.Contains(err.Error(), "host host-a is unreachable") {
				t.Errorf("PTY.Read after a 1011 close: error %v, want the reason", err)
			}
			if _, err := p.Wait(); err == nil || !strings.Contains(err.Error(), "1011") {
				t.Errorf("PTY.Wait after a 1011 close: error %v, want one naming the status", err)
			}
		})
	}
}
