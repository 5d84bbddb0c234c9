//go:build linux

package process

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/proto"

	"wrenn.dev/wrenn/internal/envd/identity"
	"wrenn.dev/wrenn/internal/errdefs"
	rpc "wrenn.dev/wrenn/internal/gen/process"
)

func TestSubscriberQueue(t *testing.T) {
	sub := newSubscriber(2)
	read := make([]byte, 4095)

	// Not lagging: each offer is its own chunk, copied.
	copy(read, bytes.Repeat([]byte("a"), len(read)))
	if !sub.offer(streamPTY, read) {
		t.Fatalf("offer() to an empty queue = false")
	}
	read[0] = 'X' // the reader reuses its buffer
	// Lagging: PTY reads merge into one chunk (up to maxMerged bytes).
	for range 3 {
		if !sub.offer(streamPTY, read[:4095]) {
			t.Fatalf("offer() while merging = false")
		}
	}
	// A different stream, and a chunk too big to merge, need new chunks.
	if !sub.offer(streamStdout, []byte("out")) {
		t.Fatalf("offer(stdout) = false, want a second chunk")
	}
	if sub.offer(streamStdout, make([]byte, pipeChunkSize)) {
		t.Fatalf("offer() past the limit = true")
	}
	if !sub.offer(streamStdout, []byte("more")) {
		t.Fatalf("offer() merging into the last chunk = false")
	}

	c, ok, done, _, _ := sub.next()
	if !ok || done || c.stream != streamPTY || len(c.data) != 4*4095 || c.data[0] != 'a' || c.data[4095] != 'X' {
		t.Fatalf("next() = %v bytes of stream %v (ok %v done %v), want 4 merged PTY reads", len(c.data), c.stream, ok, done)
	}
	c, ok, _, _, _ = sub.next()
	if !ok || c.stream != streamStdout || string(c.data) != "outmore" {
		t.Fatalf("next() = %q of stream %v, want %q on stdout", c.data, c.stream, "outmore")
	}
	if _, ok, done, _, _ := sub.next(); ok || done {
		t.Fatalf("next() on an empty open queue = ok %v done %v", ok, done)
	}

	end := &rpc.ProcessEvent_EndEvent{Exited: true, Status: "exit status 0"}
	sub.offer(streamStdout, []byte("last"))
	sub.close(end, nil)
	sub.close(nil, errdefs.ResourceExhausted("ignored: already closed"))
	if c, ok, _, _, _ := sub.next(); !ok || string(c.data) != "last" {
		t.Fatalf("next() after close = %q, %v; want the queued %q first", c.data, ok, "last")
	}
	_, ok, done, gotEnd, err := sub.next()
	if ok || !done || !proto.Equal(gotEnd, end) || err != nil {
		t.Fatalf("next() at the end = ok %v done %v end %v err %v, want done with %v", ok, done, gotEnd, err, end)
	}
	select {
	case <-sub.wake:
	default:
		t.Errorf("no wake-up pending after close")
	}
}

func TestNewDefaults(t *testing.T) {
	s := New(Config{Users: identity.NewResolver("")})
	if s.cfg.ExitRetention != DefaultExitRetention || s.cfg.SubscriberBuffer != DefaultSubscriberBuffer || s.log == nil {
		t.Errorf("New(zero Config) = retention %v, buffer %d, logger %v; want the defaults", s.cfg.ExitRetention, s.cfg.SubscriberBuffer, s.log)
	}
	if err := s.Close(t.Context()); err != nil {
		t.Errorf("Close() of an idle service = %v", err)
	}
	defer func() {
		if recover() == nil {
			t.Errorf("New(Config{}) without Users did not panic")
		}
	}()
	New(Config{})
}
