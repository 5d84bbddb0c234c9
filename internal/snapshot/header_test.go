package snapshot

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"
)

func sampleHeader() *header {
	return &header{
		generation: 3,
		created:    time.Unix(1700000000, 123),
		parent:     "gen2",
		devices: []deviceHeader{
			{name: "memory", size: 10 * 4096, blockSize: 4096,
				layers:  []layerRef{{id: layerID{1}, generation: 1, blocks: 4}, {id: layerID{2}, generation: 3, blocks: 2}},
				extents: []extent{{start: 0, count: 4, layer: 0, lblock: 0}, {start: 6, count: 2, layer: 1, lblock: 0}}},
			{name: "vmstate", size: 100, blockSize: 4096},
		},
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	h := sampleHeader()
	got, err := decodeHeader(h.encode())
	if err != nil {
		t.Fatalf("decodeHeader(encode(h)) = %v", err)
	}
	got.created, h.created = got.created.UTC(), h.created.UTC()
	if got.devices[1].extents == nil {
		got.devices[1].extents = nil
	}
	h.devices[1].extents = []extent{}
	if !reflect.DeepEqual(got, h) {
		t.Errorf("decodeHeader(encode(h)) = %+v, want %+v", got, h)
	}
}

func TestHeaderRejectsImpossibleMaps(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mangle func(*header)
	}{
		{"extent past the device", func(h *header) { h.devices[0].extents[1].count = 5 }},
		{"extents overlap", func(h *header) { h.devices[0].extents[1].start = 3 }},
		{"extent past its layer", func(h *header) { h.devices[0].extents[1].lblock = 1 }},
		{"unknown layer", func(h *header) { h.devices[0].extents[1].layer = 7 }},
		{"empty extent", func(h *header) { h.devices[0].extents[1].count = 0 }},
		{"bad block size", func(h *header) { h.devices[1].blockSize = 3000 }},
		{"bad device name", func(h *header) { h.devices[1].name = "../x" }},
		{"devices unsorted", func(h *header) { h.devices[0], h.devices[1] = h.devices[1], h.devices[0] }},
		{"generation 0", func(h *header) { h.generation = 0 }},
	} {
		h := sampleHeader()
		tc.mangle(h)
		if _, err := decodeHeader(h.encode()); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: decodeHeader = %v, want ErrCorrupt", tc.name, err)
		}
	}
}

// FuzzDecodeHeader: no input makes decodeHeader panic or accept a map
// that check rejects.
func FuzzDecodeHeader(f *testing.F) {
	good := sampleHeader().encode()
	f.Add(good)
	f.Add(good[:20])
	f.Add(bytes.Repeat([]byte{0xff}, 64))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := decodeHeader(b)
		if err != nil {
			return
		}
		for i := range h.devices {
			if err := h.devices[i].check(); err != nil {
				t.Fatalf("accepted a header whose device fails check: %v", err)
			}
		}
	})
}
