package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"wrenn.dev/wrenn/internal/errdefs"
)

// qmpConn is a small client of QEMU's machine protocol (QMP) over its
// Unix socket: the greeting and qmp_capabilities handshake, commands
// matched to their replies by id, optional file descriptors passed with a
// command (SCM_RIGHTS), and asynchronous events.
type qmpConn struct {
	conn *net.UnixConn

	mu      sync.Mutex
	nextID  int
	pending map[string]chan qmpReply

	events   chan qmpEvent
	closed   chan struct{} // closed when the reader stops
	readErr  error
	closeOne sync.Once
}

// qmpReply is the answer to one command.
type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *qmpError       `json:"error"`
	ID     string          `json:"id"`
}

// qmpError is an error QEMU returned for a command.
type qmpError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *qmpError) Error() string { return "qmp: " + e.Class + ": " + e.Desc }

// qmpEvent is an asynchronous QMP event.
type qmpEvent struct {
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// qmpEventBuffer bounds the undelivered events kept; the reader never
// blocks on a slow consumer, it drops the event (commands poll state, so
// events are only a shortcut).
const qmpEventBuffer = 64

// dialQMP connects to a QMP socket and completes the handshake. QEMU
// serves one QMP client at a time, so this waits (within ctx) while
// another client is connected.
func dialQMP(ctx context.Context, path string) (*qmpConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: connect %s: %w", path, err)
	}
	q := &qmpConn{
		conn:    c.(*net.UnixConn),
		pending: map[string]chan qmpReply{},
		events:  make(chan qmpEvent, qmpEventBuffer),
		closed:  make(chan struct{}),
	}
	// The greeting comes first; read it before the reader goroutine runs.
	stop := context.AfterFunc(ctx, func() { q.conn.SetReadDeadline(time.Unix(1, 0)) })
	r := bufio.NewReaderSize(q.conn, 64<<10)
	line, err := r.ReadBytes('\n')
	stop()
	if err != nil {
		q.conn.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("qmp: greeting from %s: %w", path, ctx.Err())
		}
		return nil, fmt.Errorf("qmp: greeting from %s: %w", path, err)
	}
	var greeting struct {
		QMP *json.RawMessage `json:"QMP"`
	}
	if err := json.Unmarshal(line, &greeting); err != nil || greeting.QMP == nil {
		q.conn.Close()
		return nil, fmt.Errorf("qmp: %s sent no greeting: %q", path, line)
	}
	q.conn.SetReadDeadline(time.Time{})
	go q.read(r)
	if err := q.execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		q.Close()
		return nil, err
	}
	return q, nil
}

// read dispatches replies and events until the connection ends.
func (q *qmpConn) read(r *bufio.Reader) {
	var err error
	for {
		var line []byte
		line, err = r.ReadBytes('\n')
		if err != nil {
			break
		}
		var probe struct {
			Event string `json:"event"`
		}
		if json.Unmarshal(line, &probe) == nil && probe.Event != "" {
			var ev qmpEvent
			if json.Unmarshal(line, &ev) == nil {
				select {
				case q.events <- ev:
				default:
				}
			}
			continue
		}
		var rep qmpReply
		if e := json.Unmarshal(line, &rep); e != nil {
			continue
		}
		q.mu.Lock()
		ch := q.pending[rep.ID]
		delete(q.pending, rep.ID)
		q.mu.Unlock()
		if ch != nil {
			ch <- rep // buffered
		}
	}
	q.mu.Lock()
	q.readErr = err
	q.mu.Unlock()
	close(q.closed)
}

// Events delivers QMP events as they arrive.
func (q *qmpConn) Events() <-chan qmpEvent { return q.events }

// execute runs a command and decodes its return value into out (if not nil).
func (q *qmpConn) execute(ctx context.Context, cmd string, args, out any) error {
	return q.executeFD(ctx, cmd, args, out, nil)
}

// executeFD runs a command, passing fd along with it when not nil (for
// getfd).
func (q *qmpConn) executeFD(ctx context.Context, cmd string, args, out any, fd *os.File) error {
	q.mu.Lock()
	q.nextID++
	id := strconv.Itoa(q.nextID)
	ch := make(chan qmpReply, 1)
	q.pending[id] = ch
	q.mu.Unlock()
	defer func() {
		q.mu.Lock()
		delete(q.pending, id)
		q.mu.Unlock()
	}()
	msg := map[string]any{"execute": cmd, "id": id}
	if args != nil {
		msg["arguments"] = args
	}
	data, err := json.Marshal(msg)
	if err != nil {
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	data = append(data, '\n')
	if dl, ok := ctx.Deadline(); ok {
		q.conn.SetWriteDeadline(dl)
		defer q.conn.SetWriteDeadline(time.Time{})
	}
	if fd != nil {
		_, _, err = q.conn.WriteMsgUnix(data, unix.UnixRights(int(fd.Fd())), nil)
	} else {
		_, err = q.conn.Write(data)
	}
	if err != nil {
		return fmt.Errorf("qmp %s: send: %w", cmd, err)
	}
	select {
	case rep := <-ch:
		if rep.Error != nil {
			return fmt.Errorf("qmp %s: %w", cmd, rep.Error)
		}
		if out != nil && len(rep.Return) > 0 {
			if err := json.Unmarshal(rep.Return, out); err != nil {
				return fmt.Errorf("qmp %s: decode reply: %w", cmd, err)
			}
		}
		return nil
	case <-q.closed:
		q.mu.Lock()
		err := q.readErr
		q.mu.Unlock()
		return fmt.Errorf("qmp %s: connection closed (%v): %w", cmd, err, errdefs.ErrUnavailable)
	case <-ctx.Done():
		return fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
	}
}

// Close closes the connection and waits for the reader to stop.
func (q *qmpConn) Close() error {
	var err error
	q.closeOne.Do(func() {
		err = q.conn.Close()
		<-q.closed
	})
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
