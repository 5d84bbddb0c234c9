package image

import (
	"bytes"
	"context"
	"encoding/binary"
	"math/rand/v2"
	"os/exec"
	"testing"
)

// TestDecodeLZ4Legacy compares the decoder with the lz4 command's legacy
// format (what the kernel build uses) on data with long matches, overlapping
// matches and incompressible stretches, across several 8 MiB blocks.
func TestDecodeLZ4Legacy(t *testing.T) {
	if _, err := exec.LookPath("lz4"); err != nil {
		t.Skip("no lz4 command")
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var in bytes.Buffer
	for in.Len() < 20<<20 {
		switch rng.IntN(3) {
		case 0: // random bytes
			b := make([]byte, rng.IntN(4096))
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
			in.Write(b)
		case 1: // a run (an overlapping match)
			in.Write(bytes.Repeat([]byte{byte(rng.Uint32())}, rng.IntN(70000)))
		case 2: // a copy of earlier data (a long match)
			if in.Len() > 1000 {
				start := rng.IntN(in.Len() - 500)
				in.Write(append([]byte(nil), in.Bytes()[start:start+rng.IntN(500)]...))
			}
		}
	}
	cmd := exec.Command("lz4", "-l", "-c")
	cmd.Stdin = bytes.NewReader(in.Bytes())
	compressed, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	out, err := decodeLZ4Legacy(compressed)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, in.Bytes()) {
		t.Fatalf("decoded %d bytes, differing from the %d input bytes", len(out), in.Len())
	}
	// Corruptions are errors, never panics.
	for i := 0; i < 200; i++ {
		bad := append([]byte(nil), compressed[:4096]...)
		bad[4+rng.IntN(len(bad)-4)] ^= byte(1 + rng.IntN(255))
		decodeLZ4Legacy(bad)
	}
	if _, err := decodeLZ4Legacy(compressed[:len(compressed)-7]); err == nil {
		t.Error("a truncated frame decoded")
	}
}

func TestKernelPayloadRejectsNonKernels(t *testing.T) {
	if _, _, err := KernelPayload(make([]byte, 8192)); err == nil {
		t.Error("zeros accepted as a bzImage")
	}
	// A header that points outside the file.
	b := make([]byte, 8192)
	copy(b[bootHeaderMagic:], "HdrS")
	binary.LittleEndian.PutUint16(b[bootVersion:], 0x020f)
	b[bootSetupSects] = 1
	binary.LittleEndian.PutUint32(b[bootPayloadOffset:], 100)
	binary.LittleEndian.PutUint32(b[bootPayloadLength:], 1<<20)
	if _, _, err := KernelPayload(b); err == nil {
		t.Error("a payload outside the file was accepted")
	}
	if _, err := ExtractVmlinux(context.Background(), b); err == nil {
		t.Error("extracted a kernel from garbage")
	}
}
