package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"

	"github.com/coder/websocket"
)

// PTYOptions says which terminal [Client.OpenPTY] attaches to.
type PTYOptions struct {
	// Cols and Rows are the initial size; 0 leaves the server's default.
	Cols, Rows int
	// PID reattaches to a running PTY process; 0 starts a new one.
	PID int
	// Cmd is the command to start; "" is a login shell.
	Cmd string
	// User runs the new process; "" is the template's default user.
	User string
	// Admin uses the admin route, which reaches any team's sandbox.
	Admin bool
}

// ptyReadLimit bounds one output frame.
const ptyReadLimit = 4 << 20

// PTY is an attached terminal. Read returns its output and Write sends it
// keystrokes; one goroutine may Read while others Write and Resize.
type PTY struct {
	conn   *websocket.Conn
	ctx    context.Context
	cancel context.CancelFunc
	pid    int

	readMu sync.Mutex
	buf    []byte // the unread rest of the current output frame

	mu       sync.Mutex
	ended    bool
	readErr  error // what Read returns once the output is consumed
	exitSeen bool
	exitCode int
	endErr   error // what Wait returns
	closed   bool  // Close was called
	done     chan struct{}
}

// errPTYClosed is what Read returns after Close.
var errPTYClosed = errors.New("terminal closed")

// control is a text frame in either direction.
type control struct {
	Type     string `json:"type"`
	PID      int    `json:"pid,omitempty"`
	ExitCode int    `json:"exit_code"`
	Cols     int    `json:"cols,omitempty"`
	Rows     int    `json:"rows,omitempty"`
}

// OpenPTY attaches to a terminal in sandbox id: a new login shell (or
// opts.Cmd), or the running PTY process opts.PID. It returns once the
// server has said which process it attached to. The credential goes both
// in the headers and as ?token=, the way browsers must send it. The
// session ends when ctx ends or Close is called.
func (c *Client) OpenPTY(ctx context.Context, id string, opts PTYOptions) (*PTY, error) {
	path := "/v1/sandboxes/" + seg(id) + "/pty"
	if opts.Admin {
		path = "/v1/admin/sandboxes/" + seg(id) + "/pty"
	}
	q := url.Values{}
	if t := c.token(); t != "" {
		q.Set("token", t)
	}
	if opts.Cols > 0 {
		q.Set("cols", itoa(opts.Cols))
	}
	if opts.Rows > 0 {
		q.Set("rows", itoa(opts.Rows))
	}
	if opts.PID > 0 {
		q.Set("pid", itoa(opts.PID))
	}
	if opts.Cmd != "" {
		q.Set("cmd", opts.Cmd)
	}
	if opts.User != "" {
		q.Set("user", opts.User)
	}
	h := http.Header{}
	c.authorize(h)
	conn, resp, err := websocket.Dial(ctx, c.endpoint(path, q), &websocket.DialOptions{HTTPClient: c.hc, HTTPHeader: h})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			defer resp.Body.Close()
			return nil, decodeError(resp)
		}
		return nil, c.transportError(ctx, http.MethodGet, path, err)
	}
	conn.SetReadLimit(ptyReadLimit)
	sctx, cancel := context.WithCancel(ctx)
	p := &PTY{conn: conn, ctx: sctx, cancel: cancel, done: make(chan struct{})}
	if err := p.awaitStart(); err != nil {
		cancel()
		conn.CloseNow()
		return nil, err
	}
	return p, nil
}

// awaitStart reads frames until the "started" control frame, keeping any
// output that came before it.
func (p *PTY) awaitStart() error {
	for {
		typ, data, err := p.conn.Read(p.ctx)
		if err != nil {
			return fmt.Errorf("terminal: %w", p.closeErr(err))
		}
		if typ == websocket.MessageBinary {
			p.buf = append(p.buf, data...)
			continue
		}
		var m control
		if err := json.Unmarshal(data, &m); err != nil {
			return fmt.Errorf("terminal: bad control frame %.200q: %w", data, err)
		}
		switch m.Type {
		case "started":
			p.pid = m.PID
			return nil
		case "exit":
			return fmt.Errorf("terminal: the process exited (code %d) before it started", m.ExitCode)
		}
	}
}

// closeErr describes err, the error that ended reading.
func (p *PTY) closeErr(err error) error {
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		if ce.Reason != "" {
			return fmt.Errorf("the server closed the terminal: %s (websocket status %d)", ce.Reason, int(ce.Code))
		}
		return fmt.Errorf("the server closed the terminal (websocket status %d)", int(ce.Code))
	}
	if p.ctx.Err() != nil {
		return p.ctx.Err()
	}
	return err
}

// PID returns the terminal's process id in the sandbox, which
// PTYOptions.PID reattaches to.
func (p *PTY) PID() int { return p.pid }

// Read reads terminal output. It returns io.EOF when the process has exited
// and the server has closed the session normally.
func (p *PTY) Read(b []byte) (int, error) {
	p.readMu.Lock()
	defer p.readMu.Unlock()
	for len(p.buf) == 0 {
		p.mu.Lock()
		ended, rerr := p.ended, p.readErr
		p.mu.Unlock()
		if ended {
			return 0, rerr
		}
		typ, data, err := p.conn.Read(p.ctx)
		if err != nil {
			p.end(err)
			continue
		}
		if typ == websocket.MessageBinary {
			p.buf = data
			continue
		}
		var m control
		if json.Unmarshal(data, &m) == nil && m.Type == "exit" {
			p.mu.Lock()
			p.exitSeen, p.exitCode = true, m.ExitCode
			p.mu.Unlock()
		}
		// Other control frames ("started" on reattach) carry nothing Read needs.
	}
	n := copy(b, p.buf)
	p.buf = p.buf[n:]
	return n, nil
}

// end records how the session ended; err is the error that ended reading.
func (p *PTY) end(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ended {
		return
	}
	p.ended = true
	switch {
	case websocket.CloseStatus(err) == websocket.StatusNormalClosure:
		p.readErr = io.EOF
	case p.closed:
		p.readErr = errPTYClosed
	default:
		p.readErr = p.closeErr(err)
	}
	switch {
	case p.exitSeen:
		p.endErr = nil
	case p.closed:
		p.endErr = errPTYClosed
	case p.readErr == io.EOF:
		p.endErr = errors.New("the server closed the terminal without an exit status")
	default:
		p.endErr = p.readErr
	}
	close(p.done)
}

// Write sends keystrokes.
func (p *PTY) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	if err := p.conn.Write(p.ctx, websocket.MessageBinary, b); err != nil {
		return 0, fmt.Errorf("terminal input: %w", p.writeErr(err))
	}
	return len(b), nil
}

// Resize changes the terminal's size.
func (p *PTY) Resize(cols, rows int) error {
	data, _ := json.Marshal(control{Type: "resize", Cols: cols, Rows: rows})
	if err := p.conn.Write(p.ctx, websocket.MessageText, data); err != nil {
		return fmt.Errorf("terminal resize: %w", p.writeErr(err))
	}
	return nil
}

func (p *PTY) writeErr(err error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errPTYClosed
	}
	return err
}

// Wait returns the process's exit code once the session has ended: after
// Read has returned io.EOF (reading to the end is what reveals the exit),
// or after Close. A session that ended without an exit status (Close, a
// broken connection, the server closing with an error) is an error.
func (p *PTY) Wait() (int, error) {
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitCode, p.endErr
}

// Close detaches from the terminal; the process keeps running in the
// sandbox and can be reattached with its PID. Close unblocks Read and Wait.
func (p *PTY) Close() error {
	p.mu.Lock()
	already := p.closed
	p.closed = true
	p.mu.Unlock()
	if already {
		return nil
	}
	// The close handshake's error only says the session had already ended.
	_ = p.conn.Close(websocket.StatusNormalClosure, "")
	p.cancel()
	p.end(errPTYClosed)
	return nil
}
