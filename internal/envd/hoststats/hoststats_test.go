package hoststats

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const meminfoFixture = `MemTotal:        2048000 kB
MemFree:          500000 kB
MemAvailable:    1024000 kB
Buffers:            1000 kB
Cached:             9000 kB
SwapCached:            0 kB
Active:           123456 kB
`

const statFixture1 = `cpu  100 10 50 800 40 5 5 0 20 0
cpu0 50 5 25 400 20 3 2 0 10 0
cpu1 50 5 25 400 20 2 3 0 10 0
intr 1234 0 0 0
ctxt 5678
btime 1700000000
processes 42
`

const statFixture2 = `cpu  200 10 100 1000 60 10 10 10 30 0
cpu0 100 5 50 500 30 5 5 5 15 0
cpu1 100 5 50 500 30 5 5 5 15 0
intr 2345 0 0 0
`

func writeFixture(t *testing.T, dir, name, text string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestSampleFixture(t *testing.T) {
	proc := t.TempDir()
	writeFixture(t, proc, "stat", statFixture1)
	writeFixture(t, proc, "meminfo", meminfoFixture)
	s := NewSampler(proc, t.TempDir())
	s.now = func() time.Time { return time.Unix(1700000123, 0) }

	m, err := s.Sample()
	if err != nil {
		t.Fatalf("Sample() #1: %v", err)
	}
	// First sample: since boot. total = 100+10+50+800+40+5+5+0 = 1010,
	// idle = 800+40, busy = 170: 16.83%.
	want := Metrics{
		Timestamp:   1700000123,
		CPUCount:    2,
		CPUUsedPct:  16.83,
		MemTotal:    2048000 * 1024,
		MemUsed:     1024000 * 1024,
		MemCache:    10000 * 1024,
		MemTotalMiB: 2000,
		MemUsedMiB:  1000,
	}
	m.DiskUsed, m.DiskTotal = 0, 0 // checked in TestSampleReal
	if m != want {
		t.Errorf("Sample() #1 = %+v\nwant %+v", m, want)
	}

	// Second sample: total 1400 (+390), idle 1060 (+220), busy 170: 43.59%.
	writeFixture(t, proc, "stat", statFixture2)
	m, err = s.Sample()
	if err != nil {
		t.Fatalf("Sample() #2: %v", err)
	}
	if m.CPUUsedPct != 43.59 {
		t.Errorf("Sample() #2 cpu_used_pct = %v, want 43.59", m.CPUUsedPct)
	}
	// Same counters again: no time passed, 0%.
	m, err = s.Sample()
	if err != nil {
		t.Fatalf("Sample() #3: %v", err)
	}
	if m.CPUUsedPct != 0 {
		t.Errorf("Sample() #3 with unchanged counters cpu_used_pct = %v, want 0", m.CPUUsedPct)
	}
}

func TestParseMeminfo(t *testing.T) {
	tests := []struct {
		name    string
		text    string
		want    memInfo
		wantErr string
	}{
		{
			name: "with MemAvailable",
			text: meminfoFixture,
			want: memInfo{total: 2048000 * 1024, used: 1024000 * 1024, cache: 10000 * 1024},
		},
		{
			name: "without MemAvailable falls back to free+buffers+cached",
			text: "MemTotal: 2048000 kB\nMemFree: 500000 kB\nBuffers: 1000 kB\nCached: 9000 kB\n",
			want: memInfo{total: 2048000 * 1024, used: (2048000 - 510000) * 1024, cache: 10000 * 1024},
		},
		{
			name:    "no MemTotal",
			text:    "MemFree: 1 kB\n",
			wantErr: "no MemTotal",
		},
		{
			name:    "bad number",
			text:    "MemTotal: x kB\n",
			wantErr: "MemTotal",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseMeminfo([]byte(tt.text))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseMeminfo(%q) error = %v, want containing %q", tt.text, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("parseMeminfo(%q) = %+v, %v; want %+v", tt.text, got, err, tt.want)
			}
		})
	}
}

func TestParseStat(t *testing.T) {
	tests := []struct {
		name     string
		text     string
		want     cpuTimes
		wantNCPU int
		wantErr  string
	}{
		{name: "full", text: statFixture1, want: cpuTimes{total: 1010, idle: 840}, wantNCPU: 2},
		{name: "old kernel four columns", text: "cpu 1 2 3 4\ncpu0 1 2 3 4\n", want: cpuTimes{total: 10, idle: 4}, wantNCPU: 1},
		{name: "no cpu line", text: "intr 1\n", wantErr: "no aggregate cpu line"},
		{name: "short cpu line", text: "cpu 1 2\n", wantErr: "columns"},
		{name: "bad number", text: "cpu 1 2 x 4\n", wantErr: "cpu column 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, n, err := parseStat([]byte(tt.text))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseStat(%q) error = %v, want containing %q", tt.text, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want || n != tt.wantNCPU {
				t.Fatalf("parseStat(%q) = %+v, %d, %v; want %+v, %d", tt.text, got, n, err, tt.want, tt.wantNCPU)
			}
		})
	}
}

func TestSampleErrors(t *testing.T) {
	proc := t.TempDir()
	tests := []struct {
		name     string
		setup    func()
		diskPath string
		wantErr  string
	}{
		{name: "no stat", setup: func() {}, wantErr: "stat"},
		{name: "no meminfo", setup: func() { writeFixture(t, proc, "stat", statFixture1) }, wantErr: "meminfo"},
		{name: "bad disk path", setup: func() { writeFixture(t, proc, "meminfo", meminfoFixture) }, diskPath: "/nonexistent/wrenn", wantErr: "statfs"},
	}
	for _, tt := range tests {
		tt.setup()
		disk := tt.diskPath
		if disk == "" {
			disk = proc
		}
		_, err := NewSampler(proc, disk).Sample()
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: NewSampler(%q, %q).Sample() error = %v, want containing %q", tt.name, proc, disk, err, tt.wantErr)
		}
	}
}

func TestSampleReal(t *testing.T) {
	s := NewSampler("", "")
	m, err := s.Sample()
	if err != nil {
		t.Fatalf("Sample() on the real /proc: %v", err)
	}
	if m.CPUCount < 1 || m.CPUUsedPct < 0 || m.CPUUsedPct > 100 {
		t.Errorf("Sample() cpu = %d cpus %v%%, want >=1 cpus, 0-100%%", m.CPUCount, m.CPUUsedPct)
	}
	if m.MemTotal == 0 || m.MemUsed == 0 || m.MemUsed > m.MemTotal || m.MemTotalMiB != m.MemTotal>>20 {
		t.Errorf("Sample() memory = %+v, want 0 < used <= total", m)
	}
	if m.DiskTotal == 0 || m.DiskUsed > m.DiskTotal {
		t.Errorf("Sample() disk used %d total %d, want 0 < used <= total", m.DiskUsed, m.DiskTotal)
	}
	if d := time.Since(time.Unix(m.Timestamp, 0)); d < -time.Second || d > time.Minute {
		t.Errorf("Sample() ts = %d, %v from now", m.Timestamp, d)
	}
	m2, err := s.Sample()
	if err != nil {
		t.Fatalf("second Sample(): %v", err)
	}
	if m2.CPUUsedPct < 0 || m2.CPUUsedPct > 100 {
		t.Errorf("second Sample() cpu_used_pct = %v", m2.CPUUsedPct)
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"ts", "cpu_count", "cpu_used_pct", "mem_total", "mem_used", "mem_cache", "mem_total_mib", "mem_used_mib", "disk_used", "disk_total"} {
		if !strings.Contains(string(b), `"`+key+`":`) {
			t.Errorf("json.Marshal(Metrics) = %s, missing key %q", b, key)
		}
	}
}
