package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
)

// Exec runs a command in a sandbox, waits for it to exit and returns its
// exit status and output.
func (c *Client) Exec(ctx context.Context, id string, req ExecRequest) (*ExecResult, error) {
	var res ExecResult
	if err := c.do(ctx, http.MethodPost, "/v1/sandboxes/"+seg(id)+"/exec", nil, req, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// maxEventLine bounds one line of an exec stream. Output chunks are far
// smaller; the bound only stops a broken server from exhausting memory.
const maxEventLine = 16 << 20

// ExecStream runs a command in a sandbox and calls fn with each event as it
// arrives, in order: "started", "stdout"/"stderr" (Data decoded), and
// "exit". It returns the exit event. An "error" event (the stream failed
// after it began) ends the stream as an *Error with the event's code and
// message; so does fn's error, returned as is.
func (c *Client) ExecStream(ctx context.Context, id string, req ExecRequest, fn func(ExecEvent) error) (ExecEvent, error) {
	data, err := marshal(req)
	if err != nil {
		return ExecEvent{}, fmt.Errorf("exec: encode request: %w", err)
	}
	path := "/v1/sandboxes/" + seg(id) + "/exec/stream"
	resp, err := c.send(ctx, http.MethodPost, path, nil, bytes.NewReader(data), "application/json")
	if err != nil {
		return ExecEvent{}, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), maxEventLine)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var ev ExecEvent
		if err := json.Unmarshal(line, &ev); err != nil {
			return ExecEvent{}, fmt.Errorf("exec stream: bad event %.200q: %w", line, err)
		}
		ev.Raw = bytes.Clone(line)
		if ev.Type == EventError {
			return ExecEvent{}, &Error{Status: ev.Code, Message: ev.Message}
		}
		if fn != nil {
			if err := fn(ev); err != nil {
				return ExecEvent{}, err
			}
		}
		if ev.Type == EventExit {
			return ev, nil
		}
	}
	if err := sc.Err(); err != nil {
		if ctx.Err() != nil {
			return ExecEvent{}, fmt.Errorf("exec stream: %w", ctx.Err())
		}
		return ExecEvent{}, fmt.Errorf("exec stream broke: %w", err)
	}
	return ExecEvent{}, errors.New("exec stream ended before the command exited")
}

// Upload writes r to path in the sandbox as user ("" for the template's
// default), streaming it as an application/octet-stream body: r is read as
// the request is sent, never held in memory whole. r is not closed.
func (c *Client) Upload(ctx context.Context, id, path, user string, r io.Reader) (*FileInfo, error) {
	body := r
	if _, ok := r.(io.Closer); ok {
		body = struct{ io.Reader }{r} // the transport closes Closers; r is the caller's
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint("/v1/sandboxes/"+seg(id)+"/files", fileQuery(path, user)), body)
	if err != nil {
		return nil, fmt.Errorf("upload %s: %w", path, err)
	}
	if l, ok := r.(interface{ Len() int }); ok {
		req.ContentLength = int64(l.Len())
		if req.ContentLength == 0 {
			req.Body = http.NoBody
		}
	}
	c.authorize(req.Header)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, c.transportError(ctx, http.MethodPost, "/v1/sandboxes/"+id+"/files", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, decodeError(resp)
	}
	var fi FileInfo
	if err := json.NewDecoder(resp.Body).Decode(&fi); err != nil {
		return nil, fmt.Errorf("upload %s: decode answer: %w", path, err)
	}
	return &fi, nil
}

// Download opens path in the sandbox as user ("" for the template's
// default) with GET .../files. The caller reads the file's bytes from the
// returned body as they arrive and must close it.
func (c *Client) Download(ctx context.Context, id, path, user string) (io.ReadCloser, error) {
	resp, err := c.send(ctx, http.MethodGet, "/v1/sandboxes/"+seg(id)+"/files", fileQuery(path, user), nil, "")
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// DownloadPost is Download through POST .../files/download, which carries
// the path in the body instead of the URL (keeping it out of access logs).
func (c *Client) DownloadPost(ctx context.Context, id, path, user string) (io.ReadCloser, error) {
	in := struct {
		Path string `json:"path"`
		User string `json:"user,omitempty"`
	}{path, user}
	data, err := marshal(in)
	if err != nil {
		return nil, fmt.Errorf("download %s: %w", path, err)
	}
	resp, err := c.send(ctx, http.MethodPost, "/v1/sandboxes/"+seg(id)+"/files/download", nil, bytes.NewReader(data), "application/json")
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// ListDir lists the directory at path in the sandbox, as user ("" for the
// template's default).
func (c *Client) ListDir(ctx context.Context, id, path, user string) ([]DirEntry, error) {
	var out struct {
		Entries []DirEntry `json:"entries"`
	}
	if err := c.do(ctx, http.MethodGet, "/v1/sandboxes/"+seg(id)+"/files/list", fileQuery(path, user), nil, &out); err != nil {
		return nil, err
	}
	return out.Entries, nil
}

func fileQuery(path, user string) url.Values {
	q := url.Values{"path": {path}}
	if user != "" {
		q.Set("user", user)
	}
	return q
}

// itoa is strconv.Itoa, for query values.
func itoa(n int) string { return strconv.Itoa(n) }
