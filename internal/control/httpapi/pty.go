package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"

	"wrenn.dev/wrenn/internal/control"
	"wrenn.dev/wrenn/internal/errdefs"
)

// Terminal WebSocket tuning.
const (
	// inputQueueChunks is how many input messages (keystroke frames and
	// resizes) may wait for the agent. When it is full the socket is not
	// read until there is room: TCP pushes back on the client instead of
	// the connection being dropped.
	inputQueueChunks = 4096
	// maxCoalesce bounds the input merged into one agent message.
	maxCoalesce = 64 << 10
	// maxFrame bounds one message from the client.
	maxFrame = 1 << 20
)

// ptyControl is a text frame either way.
type ptyControl struct {
	Type     string `json:"type"`
	Cols     uint32 `json:"cols,omitempty"`
	Rows     uint32 `json:"rows,omitempty"`
	PID      uint32 `json:"pid,omitempty"`
	ExitCode *int   `json:"exit_code,omitempty"`
	Message  string `json:"message,omitempty"`
}

// inputItem is one queued client message: input bytes, or a resize.
type inputItem struct {
	data       []byte
	cols, rows uint32
}

func queryUint(r *http.Request, name string) (uint32, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return 0, errdefs.InvalidArgument("%s must be a non-negative number, not %q", name, v)
	}
	return uint32(n), nil
}

// pty serves the terminal WebSocket; anyTeam is the admin route.
func (a *api) pty(anyTeam bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p := principal(r)
		if anyTeam && !p.Admin() {
			a.fail(w, r, errdefs.PermissionDenied("this needs the admin role"))
			return
		}
		var opts control.PTYOptions
		var err error
		for _, f := range []struct {
			name string
			dst  *uint32
		}{{"cols", &opts.Cols}, {"rows", &opts.Rows}, {"pid", &opts.PID}} {
			if *f.dst, err = queryUint(r, f.name); err != nil {
				a.fail(w, r, err)
				return
			}
		}
		opts.Cmd, opts.User, opts.AnyTeam = r.URL.Query().Get("cmd"), r.URL.Query().Get("user"), anyTeam
		if r.Header.Get("Upgrade") == "" {
			a.fail(w, r, errdefs.InvalidArgument("this route is a WebSocket: connect with a WebSocket client"))
			return
		}
		// The terminal outlives nothing: it is detached when the socket ends.
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		term, err := a.svc.OpenPTY(ctx, p, chi.URLParam(r, "id"), opts)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		defer term.Close()
		conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
		if err != nil {
			return // Accept has answered
		}
		defer conn.CloseNow()
		conn.SetReadLimit(maxFrame)
		a.servePTY(ctx, conn, term)
	}
}

// servePTY pumps a terminal both ways until it exits or either side goes.
func (a *api) servePTY(ctx context.Context, conn *websocket.Conn, term *control.PTY) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if err := writeControl(ctx, conn, ptyControl{Type: "started", PID: term.PID()}); err != nil {
		return
	}

	queue := make(chan inputItem, inputQueueChunks)
	done := make(chan struct{}, 2)
	go func() { // socket → queue
		defer func() { done <- struct{}{} }()
		defer close(queue)
		for {
			typ, data, err := conn.Read(ctx)
			if err != nil {
				cancel(err)
				return
			}
			item := inputItem{data: data}
			if typ == websocket.MessageText {
				var c ptyControl
				if json.Unmarshal(data, &c) != nil || c.Type != "resize" || c.Cols == 0 || c.Rows == 0 {
					conn.Close(websocket.StatusPolicyViolation, `text frames must be {"type":"resize","cols":N,"rows":N}`)
					cancel(errors.New("bad control frame"))
					return
				}
				item = inputItem{cols: c.Cols, rows: c.Rows}
			}
			select {
			case queue <- item:
			case <-ctx.Done():
				return
			}
		}
	}()
	go func() { // queue → agent, coalescing consecutive input
		defer func() { done <- struct{}{} }()
		var pending []byte
		for {
			item, ok := <-queue
			if !ok {
				return
			}
			if item.data == nil {
				if err := term.Resize(item.cols, item.rows); err != nil {
					cancel(err)
					return
				}
				continue
			}
			pending = append(pending[:0], item.data...)
			var next *inputItem
		coalesce:
			for len(pending) < maxCoalesce {
				select {
				case it, ok := <-queue:
					if !ok {
						break coalesce
					}
					if it.data == nil {
						next = &it
						break coalesce
					}
					pending = append(pending, it.data...)
				default:
					break coalesce
				}
			}
			if err := term.Send(pending); err != nil {
				cancel(err)
				return
			}
			if next != nil {
				if err := term.Resize(next.cols, next.rows); err != nil {
					cancel(err)
					return
				}
			}
		}
	}()

	// agent → socket, at the pace the client reads.
	status, reason := websocket.StatusNormalClosure, ""
	for {
		ev, err := term.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				reason = "the terminal's stream ended"
			} else if ctx.Err() == nil {
				status, reason = websocket.StatusInternalError, truncate(errdefs.PublicMessage(err))
			}
			break
		}
		if ev.Exit != nil {
			code := ev.Exit.Code
			if err := writeControl(ctx, conn, ptyControl{Type: "exit", ExitCode: &code}); err != nil {
				break
			}
			reason = "exited"
			break
		}
		if err := conn.Write(ctx, websocket.MessageBinary, ev.Output); err != nil {
			break
		}
	}
	if ctx.Err() == nil {
		conn.Close(status, reason)
	}
	cancel(nil)
	term.Close()
	<-done
	<-done
}

func writeControl(ctx context.Context, conn *websocket.Conn, c ptyControl) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return conn.Write(ctx, websocket.MessageText, b)
}

// truncate keeps a close reason within the WebSocket limit of 123 bytes.
func truncate(s string) string {
	if len(s) > 120 {
		return s[:120]
	}
	return s
}
