package files

import (
	"bytes"
	"compress/gzip"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestAdaptiveGzip(t *testing.T) {
	rng := rand.NewChaCha8([32]byte{7})
	random := func(n int) []byte {
		b := make([]byte, n)
		_, _ = rng.Read(b)
		return b
	}
	text := func(n int) []byte {
		return []byte(strings.Repeat("the quick brown fox jumps over the lazy dog\n", n/44+1)[:n])
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name     string
		data     []byte
		maxRatio float64 // compressed/original must not exceed this
	}{
		{"empty", nil, 100},
		{"one byte", []byte("x"), 100},
		{"text", text(3 * gzipChunkSize), 0.05},
		{"random", random(3*gzipChunkSize + 17), 1.001},
		{"exactly one chunk", random(gzipChunkSize), 1.001},
		{"random then text", cat(random(5*gzipChunkSize), text(8*gzipChunkSize)), 0.45},
		{"text then random then text", cat(text(gzipChunkSize+5), random(2*gzipChunkSize), text(gzipChunkSize)), 0.6},
		// Text right after a chunk that did not compress is stored unseen.
		{"alternating", cat(random(gzipChunkSize), text(gzipChunkSize), random(gzipChunkSize), text(gzipChunkSize)), 1.001},
	}
	z := newAdaptiveGzip(io.Discard)
	for _, tt := range tests {
		for _, writeSize := range []int{1 << 20, 1000} {
			var out bytes.Buffer
			z.Reset(&out)
			for p := tt.data; len(p) > 0; {
				n := min(writeSize, len(p))
				if _, err := z.Write(p[:n]); err != nil {
					t.Fatalf("adaptiveGzip(%s).Write: %v", tt.name, err)
				}
				p = p[n:]
			}
			if err := z.Close(); err != nil {
				t.Fatalf("adaptiveGzip(%s).Close: %v", tt.name, err)
			}
			zr, err := gzip.NewReader(bytes.NewReader(out.Bytes()))
			if err != nil {
				t.Fatalf("adaptiveGzip(%s): header: %v", tt.name, err)
			}
			got, err := io.ReadAll(zr) // also checks the CRC and size
			if err != nil || !bytes.Equal(got, tt.data) {
				t.Fatalf("adaptiveGzip(%s, writes of %d) decodes to %d bytes, err %v; want %d bytes", tt.name, writeSize, len(got), err, len(tt.data))
			}
			if len(tt.data) > 0 {
				if ratio := float64(out.Len()) / float64(len(tt.data)); ratio > tt.maxRatio {
					t.Errorf("adaptiveGzip(%s): %d bytes for %d, ratio %.3f > %.3f", tt.name, out.Len(), len(tt.data), ratio, tt.maxRatio)
				}
			}
		}
	}
	if _, err := z.Write([]byte("x")); err == nil {
		t.Error("adaptiveGzip.Write after Close succeeded")
	}
}
