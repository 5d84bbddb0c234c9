//go:build linux

package process

import (
	"sync"

	rpc "wrenn.dev/wrenn/internal/gen/process"
)

// stream says which output a chunk came from.
type stream uint8

const (
	streamStdout stream = iota
	streamStderr
	streamPTY
)

// Read sizes, which are also the largest data event sent.
const (
	pipeChunkSize = 32 << 10 // stdout and stderr
	ptyChunkSize  = 16 << 10 // PTY master
)

// maxChunk is the largest chunk of s that is read at once.
func (s stream) maxChunk() int {
	if s == streamPTY {
		return ptyChunkSize
	}
	return pipeChunkSize
}

// maxMerged is the largest data event sent: while a subscriber lags, reads
// are merged up to this size, so a burst costs fewer, larger messages.
const maxMerged = 64 << 10

// chunk is one queued piece of output. Its data belongs to the queue.
type chunk struct {
	stream stream
	data   []byte
}

// subscriber is one stream's view of a process's output: a bounded queue
// filled by the process without ever blocking, and drained by the stream's
// handler at the client's pace.
type subscriber struct {
	limit int           // most chunks queued at once
	wake  chan struct{} // capacity 1; signalled when the queue or state changes
	room  chan struct{} // capacity 1; signalled when a chunk is taken or it closes

	mu     sync.Mutex
	queue  []chunk // queued chunks are queue[head:]
	head   int
	queued int                        // bytes in queue[head:]
	closed bool                       // no more output will be queued
	end    *rpc.ProcessEvent_EndEvent // set with closed when the process ended
	err    error                      // set with closed when the subscriber was dropped
}

func newSubscriber(limit int) *subscriber {
	return &subscriber{limit: limit, wake: make(chan struct{}, 1), room: make(chan struct{}, 1)}
}

// maxBytes bounds the bytes queued: merging makes chunks larger, so the
// chunk limit alone would let memory grow past limit reads' worth.
func (s *subscriber) maxBytes() int { return s.limit * ptyChunkSize }

func (s *subscriber) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// offer queues a copy of data without blocking; data is not retained. It
// reports false when the queue is full. While the subscriber lags,
// consecutive output of one stream is merged into chunks of up to the
// stream's chunk size, so a reader that is briefly slower than the process
// is not dropped for the sake of many small reads.
func (s *subscriber) offer(st stream, data []byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return true
	}
	lagging := len(s.queue) > s.head
	if lagging {
		last := &s.queue[len(s.queue)-1]
		if last.stream == st && len(last.data)+len(data) <= maxMerged && s.queued+len(data) <= s.maxBytes() {
			if cap(last.data)-len(last.data) < len(data) {
				grown := make([]byte, len(last.data), maxMerged)
				copy(grown, last.data)
				last.data = grown
			}
			last.data = append(last.data, data...)
			s.queued += len(data)
			s.signal()
			return true
		}
	}
	if len(s.queue)-s.head >= s.limit || s.queued+len(data) > s.maxBytes() {
		return false
	}
	if len(s.queue) == cap(s.queue) && s.head > 0 {
		// Reuse the consumed front instead of growing the array.
		n := copy(s.queue, s.queue[s.head:])
		clear(s.queue[n:])
		s.queue, s.head = s.queue[:n], 0
	}
	// A chunk that will probably be merged into gets room to grow.
	size := len(data)
	if lagging {
		size = maxMerged
	}
	s.queue = append(s.queue, chunk{stream: st, data: append(make([]byte, 0, size), data...)})
	s.queued += len(data)
	s.signal()
	return true
}

// close marks the queue complete: after the queued chunks the stream ends
// with end (the process ended) or err (the subscriber was dropped).
func (s *subscriber) close(end *rpc.ProcessEvent_EndEvent, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed, s.end, s.err = true, end, err
	s.signal()
	s.freed()
}

// freed tells a producer waiting for room that there may be some.
func (s *subscriber) freed() {
	select {
	case s.room <- struct{}{}:
	default:
	}
}

// next takes the oldest queued chunk. When the queue is empty, done reports
// whether the stream is over; end and err then say how it ended.
func (s *subscriber) next() (c chunk, ok, done bool, end *rpc.ProcessEvent_EndEvent, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.head < len(s.queue) {
		c = s.queue[s.head]
		s.queue[s.head] = chunk{}
		s.queued -= len(c.data)
		s.head++
		if s.head == len(s.queue) {
			s.queue, s.head = s.queue[:0], 0
		}
		s.freed()
		return c, true, false, nil, nil
	}
	return chunk{}, false, s.closed, s.end, s.err
}
