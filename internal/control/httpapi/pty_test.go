package httpapi_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"wrenn.dev/wrenn/internal/control/controltest"
)

// term is a test client of the terminal WebSocket.
type term struct {
	t    *testing.T
	conn *websocket.Conn
	pid  uint32
	out  bytes.Buffer
	exit *int
}

func dialPTY(t *testing.T, p *controltest.Platform, id, query string) *term {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	u := "ws" + strings.TrimPrefix(p.URL, "http") + "/v1/sandboxes/" + id + "/pty?" + query
	conn, resp, err := websocket.Dial(ctx, u, nil)
	if err != nil {
		t.Fatalf("dial %s: %v (%v)", u, err, resp)
	}
	conn.SetReadLimit(-1)
	tm := &term{t: t, conn: conn}
	t.Cleanup(func() { conn.CloseNow() })
	typ, b, err := conn.Read(ctx)
	var c struct {
		Type string `json:"type"`
		PID  uint32 `json:"pid"`
	}
	if err != nil || typ != websocket.MessageText || json.Unmarshal(b, &c) != nil || c.Type != "started" || c.PID == 0 {
		t.Fatalf("first frame %v %q %v, want started with a pid", typ, b, err)
	}
	tm.pid = c.PID
	return tm
}

func (tm *term) send(s string) {
	tm.t.Helper()
	if err := tm.conn.Write(context.Background(), websocket.MessageBinary, []byte(s)); err != nil {
		tm.t.Fatalf("send: %v", err)
	}
}

func (tm *term) resize(cols, rows int) {
	tm.t.Helper()
	b, _ := json.Marshal(map[string]any{"type": "resize", "cols": cols, "rows": rows})
	if err := tm.conn.Write(context.Background(), websocket.MessageText, b); err != nil {
		tm.t.Fatalf("resize: %v", err)
	}
}

// until reads until the output contains want (or the terminal exits).
func (tm *term) until(want string) string {
	tm.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for !strings.Contains(tm.out.String(), want) {
		typ, b, err := tm.conn.Read(ctx)
		if err != nil {
			tm.t.Fatalf("waiting for %q: %v; output so far %q", want, err, tm.out.String())
		}
		if typ == websocket.MessageText {
			var c struct {
				Type     string `json:"type"`
				ExitCode *int   `json:"exit_code"`
			}
			json.Unmarshal(b, &c) //nolint:errcheck
			if c.Type == "exit" {
				tm.exit = c.ExitCode
				return tm.out.String()
			}
			continue
		}
		tm.out.Write(b)
	}
	return tm.out.String()
}

func TestPTYWebSocket(t *testing.T) {
	p, _ := platform(t)
	sb := create(t, p, p.A.MemberKey, map[string]any{"template": "minimal"})
	tm := dialPTY(t, p, sb.ID, "token="+p.A.MemberKey+"&cols=80&rows=24&cmd=/bin/sh")
	tm.send("stty size; export MARK=kept\n")
	tm.until("24 80")
	tm.resize(120, 40)
	tm.send("stty size\n")
	tm.until("40 120")

	// Drop the socket: the shell keeps running and a new socket reattaches
	// to it by pid, with its state.
	tm.conn.Close(websocket.StatusNormalClosure, "")
	again := dialPTY(t, p, sb.ID, "token="+p.A.MemberKey+"&pid="+strconv.Itoa(int(tm.pid)))
	if again.pid != tm.pid {
		t.Fatalf("reattached to pid %d, want %d", again.pid, tm.pid)
	}
	again.send("echo mark=$MARK; exit 7\n")
	again.until("mark=kept")
	again.until("\x00never") // read to the exit
	if again.exit == nil || *again.exit != 7 {
		t.Fatalf("exit %v, want 7; output %q", again.exit, again.out.String())
	}
	// A JWT works as ?token= too; a bad control frame closes with 1008.
	var login struct{ Token string }
	p.Do(t, "POST", "/v1/auth/login", "", map[string]string{"email": p.A.Email, "password": p.A.Password}).JSON(t, &login)
	bad := dialPTY(t, p, sb.ID, "token="+login.Token)
	var err error
	bad.conn.Write(context.Background(), websocket.MessageText, []byte(`{"type":"dance"}`)) //nolint:errcheck
	_, _, err = bad.conn.Read(context.Background())
	for err == nil {
		_, _, err = bad.conn.Read(context.Background())
	}
	if websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
		t.Errorf("after a bad control frame: %v, want close 1008", err)
	}
	// An admin of another team reaches the sandbox only on the admin route.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	base := "ws" + strings.TrimPrefix(p.URL, "http")
	if _, resp, err := websocket.Dial(ctx, base+"/v1/sandboxes/"+sb.ID+"/pty?token="+p.B.AdminKey, nil); err == nil || resp == nil || resp.StatusCode != 404 {
		t.Errorf("team B's admin on the team route: %v %v, want 404", err, resp)
	}
	if _, resp, err := websocket.Dial(ctx, base+"/v1/admin/sandboxes/"+sb.ID+"/pty?token="+p.B.MemberKey, nil); err == nil || resp == nil || resp.StatusCode != 403 {
		t.Errorf("team B's member on the admin route: %v %v, want 403", err, resp)
	}
	adm, _, err := websocket.Dial(ctx, base+"/v1/admin/sandboxes/"+sb.ID+"/pty?token="+p.B.AdminKey+"&cmd="+url.QueryEscape("echo admin-was-here"), nil)
	if err != nil {
		t.Fatalf("team B's admin on the admin route: %v", err)
	}
	at := &term{t: t, conn: adm}
	at.until("admin-was-here")
	adm.CloseNow()

	// Reattaching to a pid that is not there is a clear refusal.
	r := p.DoHeader(t, "GET", "/v1/sandboxes/"+sb.ID+"/pty?pid=999999", http.Header{"X-Api-Key": {p.A.MemberKey}, "Upgrade": {"websocket"}, "Connection": {"Upgrade"}}, nil)
	if r.Status != 404 && r.Status != 412 {
		t.Errorf("reattach to a missing pid = %d %s", r.Status, r.Body)
	}
}

// TestPTYTyping sends a 5,000-character paste one byte per frame, as fast
// as the socket takes them: everything arrives, in order.
func TestPTYTyping(t *testing.T) {
	p, _ := platform(t)
	sb := create(t, p, p.A.MemberKey, map[string]any{"template": "minimal"})
	dir := t.TempDir()
	tm := dialPTY(t, p, sb.ID, "token="+p.A.MemberKey+"&cmd=/bin/sh")
	tm.send("stty -echo raw; head -c 5000 > " + dir + "/paste; echo; echo done-$((6*7))\n")
	var want bytes.Buffer
	for i := range 5000 {
		c := byte('a' + i%26)
		if i%100 == 99 {
			c = '0' + byte(i/100%10)
		}
		want.WriteByte(c)
		if err := tm.conn.Write(context.Background(), websocket.MessageBinary, []byte{c}); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
	}
	tm.until("done-42")
	out := execOK(t, p, p.A.MemberKey, sb.ID, "wc -c < "+dir+"/paste; sha256sum "+dir+"/paste")
	sum := sha256.Sum256(want.Bytes())
	if !strings.Contains(out, "5000") || !strings.Contains(out, fmt.Sprintf("%x", sum)) {
		t.Fatalf("the paste arrived as %q, want 5000 bytes with sha256 %x", out, sum)
	}
}

// TestPTYFlood streams about 100 MiB of numbered lines through the
// terminal WebSocket to a slow reader: every line arrives once, in order,
// and the server's memory stays bounded because it reads from the agent
// only as fast as the client takes output.
func TestPTYFlood(t *testing.T) {
	p, _ := platform(t)
	sb := create(t, p, p.A.MemberKey, map[string]any{"template": "minimal"})
	const last = 12_500_000 // seq 1..12.5M is ~101 MiB (plus PTY \r)
	tm := dialPTY(t, p, sb.ID, "token="+p.A.MemberKey+"&cmd="+url.QueryEscape(fmt.Sprintf("stty -echo; seq 1 %d; exit 3", last)))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	baseline, peak := ms.HeapInuse, uint64(0)

	next := 1
	var partial []byte
	total := 0
	frames := 0
	exited := false
	for !exited {
		typ, b, err := tm.conn.Read(ctx)
		if err != nil {
			t.Fatalf("read after line %d (%d bytes): %v", next-1, total, err)
		}
		if typ == websocket.MessageText {
			exited = strings.Contains(string(b), `"exit"`)
			continue
		}
		total += len(b)
		frames++
		partial = append(partial, b...)
		for {
			i := bytes.IndexByte(partial, '\n')
			if i < 0 {
				break
			}
			line := strings.TrimRight(string(partial[:i]), "\r")
			partial = partial[i+1:]
			if line == "" {
				continue
			}
			n, err := strconv.Atoi(line)
			if err != nil || n != next {
				t.Fatalf("line %q after %d: lost, reordered or mangled output", line, next-1)
			}
			next++
		}
		partial = append([]byte(nil), partial...)
		if frames%512 == 0 {
			// A slow reader: the server must hold back, not buffer.
			time.Sleep(5 * time.Millisecond)
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
		}
	}
	if next-1 != last {
		t.Fatalf("got lines 1..%d, want 1..%d", next-1, last)
	}
	grew := int64(peak) - int64(baseline)
	t.Logf("%d MiB in %d frames; heap grew at most %d MiB", total>>20, frames, grew>>20)
	if total < 100<<20 {
		t.Errorf("only %d bytes arrived", total)
	}
	if grew > 64<<20 {
		t.Errorf("the heap grew by %d MiB while streaming: output is being buffered", grew>>20)
	}
}
