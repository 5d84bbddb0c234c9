package snapshot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"go.uber.org/goleak"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/testlog"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const bs = DefaultBlockSize

// randDevice returns n blocks of random data in which about zeroPct% of
// the blocks are zero.
func randDevice(rng *rand.Rand, n, zeroPct int) []byte {
	b := make([]byte, n*bs)
	for i := range n {
		if rng.IntN(100) < zeroPct {
			continue
		}
		fillRandom(rng, b[i*bs:(i+1)*bs])
	}
	return b
}

func fillRandom(rng *rand.Rand, b []byte) {
	for i := 0; i < len(b); i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], rng.Uint64())
		copy(b[i:], w[:])
	}
	b[0] |= 1 // never all zero by chance
}

func mem(b []byte) DeviceSource {
	return DeviceSource{Content: bytes.NewReader(b), Size: int64(len(b))}
}

func newStore(t *testing.T) *Store {
	t.Helper()
	s, err := OpenStore(t.TempDir(), testlog.New(t))
	if err != nil {
		t.Fatalf("OpenStore: %v", err)
	}
	return s
}

func readView(t *testing.T, s *Store, name, device string) []byte {
	t.Helper()
	snap, err := s.Open(name)
	if err != nil {
		t.Fatalf("Open(%q) = %v", name, err)
	}
	defer snap.Close()
	v, err := snap.Device(device)
	if err != nil {
		t.Fatalf("Device(%q) = %v", device, err)
	}
	b := make([]byte, v.Size())
	if n, err := v.ReadAt(b, 0); n != len(b) || (err != nil && err != io.EOF) {
		t.Fatalf("ReadAt(%s/%s, 0) = %d, %v; want %d", name, device, n, err, len(b))
	}
	return b
}

// files returns every regular file under dir with its size, by path
// relative to dir.
func files(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[rel] = fi.Size()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// layerFiles returns the ids of the layer files on disk.
func layerFiles(t *testing.T, s *Store) []string {
	t.Helper()
	var ids []string
	for p := range files(t, s.Dir()) {
		if id, ok := strings.CutPrefix(p, layersDir+"/"); ok {
			ids = append(ids, strings.TrimSuffix(id, layerSuffix))
		}
	}
	slices.Sort(ids)
	return ids
}

// referencedLayers returns the union of the layers of every snapshot.
func referencedLayers(t *testing.T, s *Store) []string {
	t.Helper()
	list, err := s.List()
	if err != nil {
		t.Fatalf("List() = %v", err)
	}
	var ids []string
	for _, in := range list {
		for _, l := range in.Layers {
			if !slices.Contains(ids, l.ID) {
				ids = append(ids, l.ID)
			}
		}
	}
	slices.Sort(ids)
	return ids
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestRoundTrip(t *testing.T) {
	s := newStore(t)
	rng := rand.New(rand.NewPCG(1, 2))
	memory := randDevice(rng, 1024, 40)                          // 4 MiB, ~40% zero blocks
	clear(memory[100*bs : 300*bs])                               // and a long zero run
	rootfs := randDevice(rng, 256, 70)                           // 1 MiB
	vmstate := randDevice(rng, 3, 0)[:2*bs+1809]                 // not a whole number of blocks
	big := append(randDevice(rng, 4, 0), make([]byte, 2<<20)...) // 64 KiB blocks
	devs := map[string]DeviceSource{
		"memory": mem(memory), "rootfs": mem(rootfs), "vmstate": mem(vmstate),
		"big": {Content: bytes.NewReader(big), Size: int64(len(big)), BlockSize: 64 << 10},
	}
	want := map[string][]byte{"memory": memory, "rootfs": rootfs, "vmstate": vmstate, "big": big}
	info, err := s.Write(context.Background(), "snap", "", devs)
	if err != nil {
		t.Fatalf("Write(snap) = %v", err)
	}
	if info.Generation != 1 || info.Parent != "" || len(info.Devices) != 4 {
		t.Errorf("Write(snap) info = %+v; want generation 1, no parent, 4 devices", info)
	}
	snap, err := s.Open("snap")
	if err != nil {
		t.Fatalf("Open(snap) = %v", err)
	}
	defer snap.Close()
	if got := snap.Devices(); !slices.Equal(got, []string{"big", "memory", "rootfs", "vmstate"}) {
		t.Errorf("Devices() = %v", got)
	}
	for name, w := range want {
		v, err := snap.Device(name)
		if err != nil {
			t.Fatalf("Device(%q) = %v", name, err)
		}
		if v.Size() != int64(len(w)) {
			t.Errorf("Device(%q).Size() = %d, want %d", name, v.Size(), len(w))
		}
		// Reads of every alignment: whole, across block edges, short
		// ones inside a block, ones running past the end.
		sz := int64(len(w))
		for _, r := range []struct{ off, n int64 }{
			{0, sz}, {1, sz - 1}, {bs - 3, 7}, {bs, bs}, {sz - 5, 5}, {sz - 5, 100}, {sz / 2, sz}, {17, 3 * bs},
		} {
			p := make([]byte, r.n)
			n, err := v.ReadAt(p, r.off)
			wantN := min(r.n, sz-r.off)
			if int64(n) != wantN || (wantN < r.n) != (err == io.EOF) || (err != nil && err != io.EOF) {
				t.Errorf("%s.ReadAt(%d bytes, %d) = %d, %v; want %d", name, r.n, r.off, n, err, wantN)
				continue
			}
			if !bytes.Equal(p[:n], w[r.off:r.off+wantN]) {
				t.Errorf("%s.ReadAt(%d bytes, %d): content differs", name, r.n, r.off)
			}
		}
		if n, err := v.ReadAt(make([]byte, 1), sz); n != 0 || err != io.EOF {
			t.Errorf("%s.ReadAt(1 byte, %d) = %d, %v; want 0, EOF", name, sz, n, err)
		}
		dst := filepath.Join(t.TempDir(), name+".img")
		if err := s.Materialize(context.Background(), "snap", name, dst); err != nil {
			t.Fatalf("Materialize(snap, %s) = %v", name, err)
		}
		got, err := os.ReadFile(dst)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, w) {
			t.Errorf("Materialize(snap, %s): content differs", name)
		}
	}
	// The materialized memory has holes for its zero blocks.
	dst := filepath.Join(t.TempDir(), "memory.img")
	if err := s.Materialize(context.Background(), "snap", "memory", dst); err != nil {
		t.Fatal(err)
	}
	var dataBytes int64
	for i := 0; i < len(memory); i += bs {
		if !bytes.Equal(memory[i:i+bs], zeros[:bs]) {
			dataBytes += bs
		}
	}
	if a := allocated(t, dst); a > dataBytes+64<<10 {
		t.Errorf("materialized memory allocates %d bytes; its data blocks are %d", a, dataBytes)
	}
	if err := s.Materialize(context.Background(), "snap", "memory", dst); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("Materialize onto an existing file = %v, want ErrAlreadyExists", err)
	}
	if err := s.Materialize(context.Background(), "snap", "nope", filepath.Join(t.TempDir(), "x")); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Materialize(snap, nope) = %v, want ErrNotFound", err)
	}
	// IsZero agrees with the content, block by block.
	v, _ := snap.Device("memory")
	for i := int64(0); i < int64(len(memory)); i += bs {
		if got, want := v.IsZero(i, bs), bytes.Equal(memory[i:i+bs], zeros[:bs]); got != want {
			t.Fatalf("memory.IsZero(%d, %d) = %v, want %v", i, bs, got, want)
		}
	}
	if !v.IsZero(100*bs, 200*bs) || !v.IsZero(100*bs+5, 10) {
		t.Errorf("memory.IsZero inside the zero run = false")
	}
	if v.IsZero(0, int64(len(memory))) {
		t.Errorf("memory.IsZero(whole device) = true")
	}
}

func TestZeroBlocksAreNotStored(t *testing.T) {
	s := newStore(t)
	rng := rand.New(rand.NewPCG(3, 4))
	dev := make([]byte, 512*bs)
	dataBlocks := 0
	for i := 0; i < 512; i += 7 {
		fillRandom(rng, dev[i*bs:(i+1)*bs])
		dataBlocks++
	}
	info, err := s.Write(context.Background(), "sparse", "", map[string]DeviceSource{
		"memory": mem(dev),
		"empty":  mem(make([]byte, 64*bs)),
	})
	if err != nil {
		t.Fatalf("Write(sparse) = %v", err)
	}
	layers := layerFiles(t, s)
	if len(layers) != 1 {
		t.Fatalf("layer files = %v, want exactly one (the all-zero device needs none)", layers)
	}
	size := files(t, s.Dir())[filepath.Join(layersDir, layers[0]+layerSuffix)]
	if size != int64(dataBlocks*bs) {
		t.Errorf("layer is %d bytes, want %d (%d non-zero blocks)", size, dataBlocks*bs, dataBlocks)
	}
	if info.StoredBytes != size || info.OwnBytes != size {
		t.Errorf("Info StoredBytes, OwnBytes = %d, %d; want %d", info.StoredBytes, info.OwnBytes, size)
	}
	for _, d := range info.Devices {
		want := map[string]int64{"memory": int64(dataBlocks), "empty": 0}[d.Name]
		if d.DataBlocks != want {
			t.Errorf("device %s: DataBlocks = %d, want %d", d.Name, d.DataBlocks, want)
		}
	}
	if got := readView(t, s, "sparse", "empty"); !bytes.Equal(got, make([]byte, 64*bs)) {
		t.Error("the all-zero device does not read as zeros")
	}
}

// changeBlocks modifies count random blocks of dev in place, a third
// each zeroed, rewritten with random data, and rewritten with the same
// bytes, and returns a bitmap of the blocks it touched.
func changeBlocks(rng *rand.Rand, dev []byte, count int) Bitmap {
	n := len(dev) / bs
	dirty := NewBitmap(int64(n))
	for range count {
		i := rng.IntN(n)
		switch b := dev[i*bs : (i+1)*bs]; rng.IntN(3) {
		case 0:
			clear(b)
		case 1:
			fillRandom(rng, b)
		case 2: // same bytes: dirty but unchanged
		}
		dirty.Set(int64(i))
	}
	return dirty
}

// diffBlocks counts the blocks of cur that are non-zero and differ from
// prev (a partial last block counts as one).
func diffBlocks(prev, cur []byte) int {
	block := func(b []byte, i int) []byte {
		out := make([]byte, bs)
		if i < len(b) {
			copy(out, b[i:])
		}
		return out
	}
	n := 0
	for i := 0; i < len(cur); i += bs {
		b := block(cur, i)
		if !bytes.Equal(b, zeros[:bs]) && !bytes.Equal(b, block(prev, i)) {
			n++
		}
	}
	return n
}

func TestDiffStoresOnlyChangedBlocks(t *testing.T) {
	for _, tc := range []struct {
		name string
		hint bool
		grow int // blocks added to the device
	}{
		{"compare all", false, 0},
		{"dirty hint", true, 0},
		{"device grows", false, 16},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			rng := rand.New(rand.NewPCG(5, 6))
			base := randDevice(rng, 1024, 30)
			if _, err := s.Write(context.Background(), "base", "", map[string]DeviceSource{"memory": mem(base)}); err != nil {
				t.Fatalf("Write(base) = %v", err)
			}
			cur := append(bytes.Clone(base), make([]byte, tc.grow*bs)...)
			dirty := changeBlocks(rng, cur, 60)
			for i := 1024; i < 1024+tc.grow; i += 2 {
				fillRandom(rng, cur[i*bs:(i+1)*bs])
			}
			want := diffBlocks(base, cur)
			src := mem(cur)
			if tc.hint {
				src.Dirty = dirty
			}
			info, err := s.Write(context.Background(), "next", "base", map[string]DeviceSource{"memory": src})
			if err != nil {
				t.Fatalf("Write(next, parent base) = %v", err)
			}
			if info.OwnBytes != int64(want*bs) {
				t.Errorf("Write(next): OwnBytes = %d, want %d (%d changed non-zero blocks)", info.OwnBytes, want*bs, want)
			}
			var own []LayerInfo
			for _, l := range info.Layers {
				if l.Own {
					own = append(own, l)
				}
			}
			if len(own) != 1 {
				t.Fatalf("Write(next): own layers %+v, want one", own)
			}
			if size := files(t, s.Dir())[filepath.Join(layersDir, own[0].ID+layerSuffix)]; size != int64(want*bs) {
				t.Errorf("new layer file is %d bytes, want %d", size, want*bs)
			}
			if !bytes.Equal(readView(t, s, "next", "memory"), cur) {
				t.Error("next reads differently from what was written")
			}
			if !bytes.Equal(readView(t, s, "base", "memory"), base) {
				t.Error("base changed")
			}
		})
	}
}

func TestDirtyHintIsTrusted(t *testing.T) {
	// Blocks outside the hint are taken from the parent unread: a caller
	// whose hint is wrong gets the parent's bytes, not a silent mix.
	s := newStore(t)
	rng := rand.New(rand.NewPCG(7, 8))
	base := randDevice(rng, 64, 0)
	if _, err := s.Write(context.Background(), "base", "", map[string]DeviceSource{"memory": mem(base)}); err != nil {
		t.Fatal(err)
	}
	cur := bytes.Clone(base)
	fillRandom(rng, cur[3*bs:4*bs])  // in the hint
	fillRandom(rng, cur[9*bs:10*bs]) // not in the hint
	dirty := NewBitmap(64)
	dirty.Set(3)
	src := mem(cur)
	src.Dirty = dirty
	if _, err := s.Write(context.Background(), "next", "base", map[string]DeviceSource{"memory": src}); err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(base)
	copy(want[3*bs:4*bs], cur[3*bs:4*bs])
	if !bytes.Equal(readView(t, s, "next", "memory"), want) {
		t.Error("next is not the parent plus the hinted block")
	}
	src.Dirty = Bitmap{} // covers none of the 64 blocks
	if _, err := s.Write(context.Background(), "short", "base", map[string]DeviceSource{"memory": src}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Write with a bitmap too short = %v, want ErrInvalidArgument", err)
	}
}

func TestMergedMapResolvesInOneLookup(t *testing.T) {
	const gens, blocks = 5, 200
	s := newStore(t)
	dev := make([]byte, blocks*bs)
	owner := make([]int, blocks) // generation that last wrote each block
	parent := ""
	for g := 1; g <= gens; g++ {
		// Generation g rewrites blocks i with i%g == 0 with the byte g.
		for i := 0; i < blocks; i += g {
			for j := range bs {
				dev[i*bs+j] = byte(g)
			}
			owner[i] = g
		}
		name := fmt.Sprintf("gen%d", g)
		if _, err := s.Write(context.Background(), name, parent, map[string]DeviceSource{"memory": mem(dev)}); err != nil {
			t.Fatalf("Write(%s) = %v", name, err)
		}
		parent = name
	}
	snap, err := s.Open("gen5")
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	v, _ := snap.Device("memory")
	if len(v.layers) != gens {
		t.Fatalf("gen5 references %d layers, want %d", len(v.layers), gens)
	}
	for i := range blocks {
		// One lookup in gen5's own map names the layer holding block i.
		e := v.extents[v.find(uint64(i))]
		if e.start > uint64(i) {
			t.Fatalf("block %d: not in gen5's map", i)
		}
		if got := v.layers[e.layer].generation; int(got) != owner[i] {
			t.Errorf("block %d maps to generation %d's layer, want %d", i, got, owner[i])
		}
		p := make([]byte, bs)
		if _, err := v.ReadAt(p, int64(i*bs)); err != nil {
			t.Fatal(err)
		}
		if p[0] != byte(owner[i]) || p[bs-1] != byte(owner[i]) {
			t.Errorf("block %d reads %d, want %d", i, p[0], owner[i])
		}
	}
	in := snap.Info()
	for g, l := range in.Layers {
		if l.Generation != uint64(g+1) || l.Own != (g+1 == gens) {
			t.Errorf("Info().Layers[%d] = %+v; want generation %d", g, l, g+1)
		}
	}
}

// TestPauseResumeTenTimes is what a sandbox paused and resumed over and
// over does to its files: each resume materializes the last snapshot,
// the guest changes a few blocks, and the next pause writes a snapshot on
// top of the last one.
func TestPauseResumeTenTimes(t *testing.T) {
	s := newStore(t)
	rng := rand.New(rand.NewPCG(9, 10))
	type gen struct {
		name string
		sums map[string][32]byte
	}
	content := map[string][]byte{
		"memory":  randDevice(rng, 2048, 50),
		"rootfs":  randDevice(rng, 512, 80),
		"vmstate": randDevice(rng, 4, 0)[:3*bs+100],
	}
	sums := func() map[string][32]byte {
		m := map[string][32]byte{}
		for d, b := range content {
			m[d] = sha256.Sum256(b)
		}
		return m
	}
	work := t.TempDir()
	var history []gen
	for g := 0; g <= 10; g++ {
		name := fmt.Sprintf("gen%02d", g)
		devs := map[string]DeviceSource{}
		var expectOwn int64
		for d, b := range content {
			src := mem(b)
			if g > 0 {
				// Resume: the VM runs on the materialized files, which
				// must be exactly the last generation.
				prev := history[g-1]
				path := filepath.Join(work, fmt.Sprintf("%s.%s", prev.name, d))
				if err := s.Materialize(context.Background(), prev.name, d, path); err != nil {
					t.Fatalf("Materialize(%s, %s) = %v", prev.name, d, err)
				}
				b, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				if sha256.Sum256(b) != prev.sums[d] {
					t.Fatalf("generation %d: materialized %s differs from what was paused", g-1, d)
				}
				// The guest runs: a few blocks change.
				old := bytes.Clone(b)
				var dirty Bitmap
				if d == "vmstate" {
					fillRandom(rng, b) // rewritten on every pause
					dirty = NewBitmap(4)
					for i := range int64(4) {
						dirty.Set(i)
					}
				} else {
					dirty = changeBlocks(rng, b, 1+rng.IntN(40))
				}
				expectOwn += int64(diffBlocks(old, b) * bs)
				if err := os.WriteFile(path, b, 0o600); err != nil {
					t.Fatal(err)
				}
				content[d] = b
				f, err := os.Open(path)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				src = DeviceSource{Content: f, Size: int64(len(b))}
				if g%2 == 0 {
					src.Dirty = dirty // alternate: trust the hint, or compare all
				}
			}
			devs[d] = src
		}
		parent := ""
		if g > 0 {
			parent = history[g-1].name
		}
		info, err := s.Write(context.Background(), name, parent, devs)
		if err != nil {
			t.Fatalf("Write(%s, parent %q) = %v", name, parent, err)
		}
		if g > 0 && info.OwnBytes != expectOwn {
			t.Errorf("Write(%s): stored %d new bytes, want %d", name, info.OwnBytes, expectOwn)
		}
		history = append(history, gen{name: name, sums: sums()})
	}
	// Every generation still reads back exactly, through a view and
	// materialized.
	for _, h := range history {
		for d, want := range h.sums {
			if got := sha256.Sum256(readView(t, s, h.name, d)); got != want {
				t.Errorf("%s/%s: view sha256 %x, want %x", h.name, d, got, want)
			}
			path := filepath.Join(t.TempDir(), d)
			if err := s.Materialize(context.Background(), h.name, d, path); err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(path)
			if got := sha256.Sum256(b); got != want {
				t.Errorf("%s/%s: materialized sha256 %x, want %x", h.name, d, got, want)
			}
		}
	}
	in, err := s.Stat("gen10")
	if err != nil {
		t.Fatal(err)
	}
	if in.Generation != 11 || in.Parent != "gen09" {
		t.Errorf("Stat(gen10) = generation %d, parent %q; want 11, gen09", in.Generation, in.Parent)
	}
}

func TestDeleteCollectsUnreferencedLayers(t *testing.T) {
	s := newStore(t)
	rng := rand.New(rand.NewPCG(11, 12))
	dev := randDevice(rng, 256, 20)
	contents := map[string][]byte{}
	write := func(name, parent string) {
		t.Helper()
		if parent != "" {
			dev = bytes.Clone(contents[parent])
			changeBlocks(rng, dev, 20)
		}
		if _, err := s.Write(context.Background(), name, parent, map[string]DeviceSource{"memory": mem(dev), "other": mem(dev[:bs*3])}); err != nil {
			t.Fatalf("Write(%s) = %v", name, err)
		}
		contents[name] = dev
	}
	write("a", "")
	write("b", "a")
	write("c", "b")
	write("d", "a") // sibling of b
	own := func(name string) []string {
		in, err := s.Stat(name)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, l := range in.Layers {
			if l.Own {
				ids = append(ids, l.ID)
			}
		}
		return ids
	}
	bOwn := own("b")
	if len(bOwn) == 0 {
		t.Fatal("b stored no layer of its own")
	}

	for _, step := range []struct {
		del  string
		left []string
	}{
		{"b", []string{"a", "c", "d"}}, // c still needs b's changes
		{"a", []string{"c", "d"}},
		{"c", []string{"d"}},
		{"d", nil},
	} {
		if err := s.Delete(step.del); err != nil {
			t.Fatalf("Delete(%s) = %v", step.del, err)
		}
		if err := s.Delete(step.del); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("second Delete(%s) = %v, want ErrNotFound", step.del, err)
		}
		onDisk, refd := layerFiles(t, s), referencedLayers(t, s)
		if !slices.Equal(onDisk, refd) {
			t.Errorf("after Delete(%s): layer files %v, referenced %v", step.del, onDisk, refd)
		}
		for _, name := range step.left {
			if !bytes.Equal(readView(t, s, name, "memory"), contents[name]) {
				t.Errorf("after Delete(%s): %s reads differently", step.del, name)
			}
		}
		if step.del == "b" {
			kept := 0
			for _, id := range bOwn {
				if slices.Contains(onDisk, id) {
					kept++
				}
			}
			if kept == 0 {
				t.Errorf("after Delete(b): none of b's layers %v kept, though c reads from them", bOwn)
			}
		}
	}
	if left := files(t, s.Dir()); len(left) != 0 {
		t.Errorf("after deleting everything the store holds files: %v", left)
	}
}

func TestOpenSnapshotSurvivesDelete(t *testing.T) {
	s := newStore(t)
	dev := randDevice(rand.New(rand.NewPCG(13, 14)), 64, 0)
	if _, err := s.Write(context.Background(), "x", "", map[string]DeviceSource{"memory": mem(dev)}); err != nil {
		t.Fatal(err)
	}
	snap, err := s.Open("x")
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	if err := s.Delete("x"); err != nil {
		t.Fatal(err)
	}
	if n := len(files(t, s.Dir())); n != 0 {
		t.Errorf("after Delete(x) the store holds %d files", n)
	}
	v, _ := snap.Device("memory")
	got := make([]byte, len(dev))
	if _, err := v.ReadAt(got, 0); err != nil || !bytes.Equal(got, dev) {
		t.Errorf("ReadAt on a snapshot opened before Delete = %v (equal %v)", err, bytes.Equal(got, dev))
	}
}

// failingReader fails every read after the first n.
type failingReader struct {
	r     io.ReaderAt
	n     int
	hook  func()
	calls int
}

func (f *failingReader) ReadAt(p []byte, off int64) (int, error) {
	f.calls++
	if f.calls > f.n {
		if f.hook != nil {
			f.hook()
			return f.r.ReadAt(p, off)
		}
		return 0, errors.New("disk on fire")
	}
	return f.r.ReadAt(p, off)
}

func TestFailedWriteLeavesNothing(t *testing.T) {
	rng := rand.New(rand.NewPCG(15, 16))
	base := randDevice(rng, 1024, 10)
	next := bytes.Clone(base)
	changeBlocks(rng, next, 100)
	for _, tc := range []struct {
		name    string
		failAt  string // failpoint stage, or "" to fail the read
		cancel  bool   // cancel ctx instead of failing the read
		wantErr error
	}{
		{name: "read fails midway"},
		{name: "context canceled midway", cancel: true, wantErr: context.Canceled},
		{name: "fail after the layer is written", failAt: "layer-written"},
		{name: "fail after layers are renamed", failAt: "layers-renamed"},
		{name: "fail after the header is written", failAt: "header-written"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			if _, err := s.Write(context.Background(), "base", "", map[string]DeviceSource{"memory": mem(base)}); err != nil {
				t.Fatal(err)
			}
			before := files(t, s.Dir())
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			injected := errors.New("injected failure")
			r := &failingReader{r: bytes.NewReader(next), n: 1 << 30}
			switch {
			case tc.failAt != "":
				s.failAt = func(stage string) error {
					if stage == tc.failAt {
						return injected
					}
					return nil
				}
			case tc.cancel:
				r.n, r.hook = 2, cancel
			default:
				r.n = 2
			}
			devs := map[string]DeviceSource{
				"a-first": mem(next[:64*bs]), // written whole before the failing device
				"memory":  {Content: r, Size: int64(len(next))},
			}
			_, err := s.Write(ctx, "next", "base", devs)
			if err == nil {
				t.Fatalf("Write(next) succeeded despite the failure")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("Write(next) = %v, want %v", err, tc.wantErr)
			}
			if tc.failAt != "" && !errors.Is(err, injected) {
				t.Errorf("Write(next) = %v, want the injected failure", err)
			}
			if after := files(t, s.Dir()); !mapsEqual(before, after) {
				t.Errorf("Write(next) failed but the store changed:\nbefore %v\nafter  %v", before, after)
			}
			if _, err := s.Stat("next"); !errors.Is(err, errdefs.ErrNotFound) {
				t.Errorf("Stat(next) after a failed Write = %v, want ErrNotFound", err)
			}
			s.failAt = nil
			if _, err := s.Write(context.Background(), "next", "base", map[string]DeviceSource{"memory": mem(next)}); err != nil {
				t.Fatalf("Write(next) retried = %v", err)
			}
			if !bytes.Equal(readView(t, s, "next", "memory"), next) {
				t.Error("retried next reads differently")
			}
		})
	}
}

func mapsEqual(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestReopenCleansUpAfterACrash(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir, testlog.New(t))
	if err != nil {
		t.Fatal(err)
	}
	dev := randDevice(rand.New(rand.NewPCG(17, 18)), 64, 10)
	if _, err := s.Write(context.Background(), "kept", "", map[string]DeviceSource{"memory": mem(dev)}); err != nil {
		t.Fatal(err)
	}
	want := files(t, dir)
	// What a crash mid-Write leaves: temporary layers and headers, and a
	// layer renamed into place whose header never was.
	for _, p := range []string{
		"layers/.tmp-00112233445566778899aabbccddeeff.data",
		"layers/ffeeddccbbaa99887766554433221100.data",
		"snapshots/.tmp-lost-12345",
	} {
		if err := os.WriteFile(filepath.Join(dir, p), make([]byte, bs), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s2, err := OpenStore(dir, testlog.New(t))
	if err != nil {
		t.Fatalf("OpenStore(%s) again = %v", dir, err)
	}
	if got := files(t, dir); !mapsEqual(got, want) {
		t.Errorf("OpenStore left %v, want %v", got, want)
	}
	if !bytes.Equal(readView(t, s2, "kept", "memory"), dev) {
		t.Error("kept reads differently after reopening")
	}
}

func TestNamesAndErrors(t *testing.T) {
	s := newStore(t)
	dev := mem(randDevice(rand.New(rand.NewPCG(19, 20)), 8, 0))
	ctx := context.Background()
	if _, err := s.Write(ctx, "exists", "", map[string]DeviceSource{"memory": dev}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", ".", "..", "../x", "a/b", ".hidden", "-x", "x y", "é", strings.Repeat("a", 129)} {
		if _, err := s.Write(ctx, bad, "", map[string]DeviceSource{"memory": dev}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Write(%q) = %v, want ErrInvalidArgument", bad, err)
		}
		if _, err := s.Open(bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Open(%q) = %v, want ErrInvalidArgument", bad, err)
		}
		if err := s.Delete(bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Delete(%q) = %v, want ErrInvalidArgument", bad, err)
		}
		if _, err := s.Stat(bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Stat(%q) = %v, want ErrInvalidArgument", bad, err)
		}
		if _, err := s.Write(ctx, "ok", "", map[string]DeviceSource{bad: dev}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Write(ok, device %q) = %v, want ErrInvalidArgument", bad, err)
		}
	}
	for _, tc := range []struct {
		call string
		err  error
		want error
	}{
		{"Open(missing)", func() error { _, err := s.Open("missing"); return err }(), errdefs.ErrNotFound},
		{"Stat(missing)", func() error { _, err := s.Stat("missing"); return err }(), errdefs.ErrNotFound},
		{"Delete(missing)", s.Delete("missing"), errdefs.ErrNotFound},
		{"Materialize(missing)", s.Materialize(ctx, "missing", "memory", filepath.Join(t.TempDir(), "m")), errdefs.ErrNotFound},
		{"Write(exists)", func() error {
			_, err := s.Write(ctx, "exists", "", map[string]DeviceSource{"memory": dev})
			return err
		}(), errdefs.ErrAlreadyExists},
		{"Write(x, parent missing)", func() error {
			_, err := s.Write(ctx, "x", "missing", map[string]DeviceSource{"memory": dev})
			return err
		}(), errdefs.ErrNotFound},
		{"Write(x, parent x)", func() error {
			_, err := s.Write(ctx, "x", "x", map[string]DeviceSource{"memory": dev})
			return err
		}(), errdefs.ErrInvalidArgument},
		{"Write(x, no devices)", func() error { _, err := s.Write(ctx, "x", "", nil); return err }(), errdefs.ErrInvalidArgument},
		{"Write(x, block size 1000)", func() error {
			d := dev
			d.BlockSize = 1000
			_, err := s.Write(ctx, "x", "", map[string]DeviceSource{"memory": d})
			return err
		}(), errdefs.ErrInvalidArgument},
		{"Write(x, block size differs from parent)", func() error {
			d := dev
			d.BlockSize = 8192
			_, err := s.Write(ctx, "x", "exists", map[string]DeviceSource{"memory": d})
			return err
		}(), errdefs.ErrInvalidArgument},
		{"Write(x, nil content)", func() error {
			_, err := s.Write(ctx, "x", "", map[string]DeviceSource{"memory": {Size: 10}})
			return err
		}(), errdefs.ErrInvalidArgument},
	} {
		if !errors.Is(tc.err, tc.want) {
			t.Errorf("%s = %v, want %v", tc.call, tc.err, tc.want)
		}
	}
	list, err := s.List()
	if err != nil || len(list) != 1 || list[0].Name != "exists" {
		t.Errorf("List() = %+v, %v; want just exists", list, err)
	}
}

func TestCorruptHeader(t *testing.T) {
	s := newStore(t)
	rng := rand.New(rand.NewPCG(21, 22))
	for _, n := range []string{"victim", "other"} {
		if _, err := s.Write(context.Background(), n, "", map[string]DeviceSource{"memory": mem(randDevice(rng, 16, 0))}); err != nil {
			t.Fatal(err)
		}
	}
	path := s.headerPath("victim")
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		mangle  func([]byte) []byte
		message string
	}{
		{"flipped bit", func(b []byte) []byte { b[len(b)/2] ^= 0x10; return b }, "checksum mismatch"},
		{"bad magic", func(b []byte) []byte { b[0] = 'X'; return b }, "bad magic"},
		{"future version", func(b []byte) []byte { b[8] = 9; return b }, "version 9"},
		{"truncated", func(b []byte) []byte { return b[:len(b)-10] }, "checksum mismatch"},
		{"empty", func(b []byte) []byte { return nil }, "too short"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(path, tc.mangle(bytes.Clone(good)), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := s.Open("victim")
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.message) {
				t.Errorf("Open(victim) = %v; want ErrCorrupt mentioning %q", err, tc.message)
			}
			if _, err := s.Stat("victim"); !errors.Is(err, ErrCorrupt) {
				t.Errorf("Stat(victim) = %v; want ErrCorrupt", err)
			}
			layersBefore := layerFiles(t, s)
			// Collection must not guess: with a header unreadable it
			// removes nothing.
			if _, err := s.Write(context.Background(), "tmp", "", map[string]DeviceSource{"memory": mem(randDevice(rng, 4, 0))}); err != nil {
				t.Fatal(err)
			}
			if err := s.Delete("tmp"); !errors.Is(err, ErrCorrupt) {
				t.Errorf("Delete(tmp) with victim corrupt = %v; want an ErrCorrupt collection error", err)
			}
			if got := layerFiles(t, s); len(got) != len(layersBefore)+1 {
				t.Errorf("layers after Delete(tmp) = %d, want %d (nothing collected)", len(got), len(layersBefore)+1)
			}
		})
	}
	if err := os.WriteFile(path, good, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("other"); err != nil { // collects tmp's leftover layer too
		t.Fatal(err)
	}
	if got, want := layerFiles(t, s), referencedLayers(t, s); !slices.Equal(got, want) {
		t.Errorf("layers %v, referenced %v", got, want)
	}
}

func TestConcurrentUse(t *testing.T) {
	s := newStore(t)
	rng := rand.New(rand.NewPCG(23, 24))
	base := randDevice(rng, 256, 20)
	if _, err := s.Write(context.Background(), "base", "", map[string]DeviceSource{"memory": mem(base)}); err != nil {
		t.Fatal(err)
	}
	const workers, rounds = 6, 8
	contents := make([][]byte, workers)
	for w := range workers {
		contents[w] = bytes.Clone(base)
		changeBlocks(rand.New(rand.NewPCG(uint64(w), 99)), contents[w], 30)
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers*rounds*4)
	for w := range workers {
		wg.Go(func() {
			for r := range rounds {
				name := fmt.Sprintf("w%d-r%d", w, r)
				parent := "base"
				if r > 0 {
					parent = fmt.Sprintf("w%d-r%d", w, r-1)
				}
				if _, err := s.Write(context.Background(), name, parent, map[string]DeviceSource{"memory": mem(contents[w])}); err != nil {
					errs <- fmt.Errorf("Write(%s) = %w", name, err)
					return
				}
				// Everyone races to read and delete someone's snapshots.
				victim := fmt.Sprintf("w%d-r%d", (w+1)%workers, r)
				if snap, err := s.Open(victim); err == nil {
					v, _ := snap.Device("memory")
					got := make([]byte, v.Size())
					if _, err := v.ReadAt(got, 0); err != nil {
						errs <- fmt.Errorf("ReadAt(%s) = %w", victim, err)
					} else if !bytes.Equal(got, contents[(w+1)%workers]) {
						errs <- fmt.Errorf("%s reads differently", victim)
					}
					snap.Close()
				} else if !errors.Is(err, errdefs.ErrNotFound) {
					errs <- fmt.Errorf("Open(%s) = %w", victim, err)
				}
				if r > 0 && r%2 == 0 {
					old := fmt.Sprintf("w%d-r%d", w, r-2)
					if err := s.Delete(old); err != nil {
						errs <- fmt.Errorf("Delete(%s) = %w", old, err)
					}
				}
				if _, err := s.List(); err != nil {
					errs <- fmt.Errorf("List() = %w", err)
				}
			}
		})
	}
	// Two writers for one name: exactly one wins.
	var won sync.WaitGroup
	results := make(chan error, 2)
	for range 2 {
		won.Go(func() {
			_, err := s.Write(context.Background(), "contested", "base", map[string]DeviceSource{"memory": mem(contents[0])})
			results <- err
		})
	}
	wg.Wait()
	won.Wait()
	close(errs)
	close(results)
	for err := range errs {
		t.Error(err)
	}
	var ok, exists int
	for err := range results {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, errdefs.ErrAlreadyExists):
			exists++
		default:
			t.Errorf("Write(contested) = %v", err)
		}
	}
	if ok != 1 || exists != 1 {
		t.Errorf("two Write(contested): %d succeeded, %d already existed; want 1 and 1", ok, exists)
	}
	if got, want := layerFiles(t, s), referencedLayers(t, s); !slices.Equal(got, want) {
		t.Errorf("layer files %v, referenced %v", got, want)
	}
	list, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range list {
		w := 0
		if _, err := fmt.Sscanf(in.Name, "w%d-", &w); err != nil {
			continue
		}
		if !bytes.Equal(readView(t, s, in.Name, "memory"), contents[w]) {
			t.Errorf("%s reads differently", in.Name)
		}
	}
}
