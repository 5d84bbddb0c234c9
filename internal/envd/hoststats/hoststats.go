// Package hoststats samples the guest's CPU, memory and disk usage for
// envd's GET /metrics, in the JSON shape E2B's envd serves.
//
// Sources and choices:
//   - CPU: the aggregate "cpu" line of /proc/stat. Busy time is every
//     column except idle and iowait; guest and guest_nice are left out
//     because the kernel already counts them in user and nice.
//     cpu_used_pct is over the interval since the previous Sample on the
//     same Sampler; the first Sample reports the average since boot.
//     cpu_count is the number of "cpuN" lines (online CPUs).
//   - Memory: /proc/meminfo. mem_used = MemTotal - MemAvailable (what the
//     kernel thinks could not be freed without swapping); without
//     MemAvailable (kernels before 3.14) available is MemFree + Buffers +
//     Cached. mem_cache = Cached + Buffers: file-backed memory the kernel
//     may drop, which is part of neither "used" nor "free" for a user.
//   - Disk: statfs of one path (default "/"); used = total - free blocks,
//     like df.
package hoststats

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Metrics is one sample, in E2B's /metrics JSON shape. Byte counts are bytes.
type Metrics struct {
	Timestamp   int64   `json:"ts"` // unix seconds
	CPUCount    int     `json:"cpu_count"`
	CPUUsedPct  float64 `json:"cpu_used_pct"` // 0-100, two decimals
	MemTotal    uint64  `json:"mem_total"`
	MemUsed     uint64  `json:"mem_used"`
	MemCache    uint64  `json:"mem_cache"`
	MemTotalMiB uint64  `json:"mem_total_mib"`
	MemUsedMiB  uint64  `json:"mem_used_mib"`
	DiskUsed    uint64  `json:"disk_used"`
	DiskTotal   uint64  `json:"disk_total"`
}

// Sampler takes samples. It keeps the previous CPU counters so that each
// sample's cpu_used_pct covers the time since the one before. It is safe
// for concurrent use.
type Sampler struct {
	procRoot string
	diskPath string
	now      func() time.Time

	mu   sync.Mutex
	prev cpuTimes // zero before the first sample: since boot
}

// NewSampler returns a Sampler reading procRoot (default "/proc") and
// measuring the filesystem holding diskPath (default "/").
func NewSampler(procRoot, diskPath string) *Sampler {
	if procRoot == "" {
		procRoot = "/proc"
	}
	if diskPath == "" {
		diskPath = "/"
	}
	return &Sampler{procRoot: procRoot, diskPath: diskPath, now: time.Now}
}

// Sample reads the current counters and returns the metrics.
func (s *Sampler) Sample() (Metrics, error) {
	var m Metrics
	statText, err := os.ReadFile(filepath.Join(s.procRoot, "stat"))
	if err != nil {
		return m, fmt.Errorf("hoststats: %w", err)
	}
	cur, ncpu, err := parseStat(statText)
	if err != nil {
		return m, fmt.Errorf("hoststats: parse %s/stat: %w", s.procRoot, err)
	}
	memText, err := os.ReadFile(filepath.Join(s.procRoot, "meminfo"))
	if err != nil {
		return m, fmt.Errorf("hoststats: %w", err)
	}
	mem, err := parseMeminfo(memText)
	if err != nil {
		return m, fmt.Errorf("hoststats: parse %s/meminfo: %w", s.procRoot, err)
	}
	diskUsed, diskTotal, err := diskUsage(s.diskPath)
	if err != nil {
		return m, err
	}

	s.mu.Lock()
	pct := cpuUsedPct(s.prev, cur)
	s.prev = cur
	s.mu.Unlock()

	m = Metrics{
		Timestamp:   s.now().Unix(),
		CPUCount:    ncpu,
		CPUUsedPct:  pct,
		MemTotal:    mem.total,
		MemUsed:     mem.used,
		MemCache:    mem.cache,
		MemTotalMiB: mem.total >> 20,
		MemUsedMiB:  mem.used >> 20,
		DiskUsed:    diskUsed,
		DiskTotal:   diskTotal,
	}
	return m, nil
}

// cpuTimes are the aggregate CPU counters, in clock ticks.
type cpuTimes struct {
	total uint64 // every accounted column except guest and guest_nice
	idle  uint64 // idle + iowait
}

// parseStat reads the aggregate cpu line and counts the per-CPU lines.
func parseStat(text []byte) (cpuTimes, int, error) {
	var (
		t     cpuTimes
		found bool
		ncpu  int
	)
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20) // the intr line is long
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || !strings.HasPrefix(fields[0], "cpu") {
			continue
		}
		if fields[0] != "cpu" {
			if _, err := strconv.Atoi(fields[0][3:]); err == nil {
				ncpu++
			}
			continue
		}
		// cpu user nice system idle [iowait irq softirq steal guest guest_nice]
		if len(fields) < 5 {
			return t, 0, fmt.Errorf("cpu line has %d columns, want at least 4", len(fields)-1)
		}
		for i, f := range fields[1:] {
			if i >= 8 { // guest, guest_nice: already in user, nice
				break
			}
			v, err := strconv.ParseUint(f, 10, 64)
			if err != nil {
				return t, 0, fmt.Errorf("cpu column %d: %w", i+1, err)
			}
			t.total += v
			if i == 3 || i == 4 { // idle, iowait
				t.idle += v
			}
		}
		found = true
	}
	if err := sc.Err(); err != nil {
		return t, 0, err
	}
	if !found {
		return t, 0, errors.New("no aggregate cpu line")
	}
	return t, ncpu, nil
}

// cpuUsedPct is the busy share of the ticks between prev and cur, in
// percent rounded to two decimals; 0 when no time passed.
func cpuUsedPct(prev, cur cpuTimes) float64 {
	if cur.total < prev.total || cur.idle < prev.idle { // counters reset: report since boot
		prev = cpuTimes{}
	}
	dt := cur.total - prev.total
	if dt == 0 {
		return 0
	}
	busy := dt - min(cur.idle-prev.idle, dt)
	return math.Round(float64(busy)/float64(dt)*10000) / 100
}

type memInfo struct {
	total, used, cache uint64 // bytes
}

// parseMeminfo reads the fields it needs from /proc/meminfo text.
func parseMeminfo(text []byte) (memInfo, error) {
	vals := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(text))
	for sc.Scan() {
		// "MemTotal:       24683620 kB"
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch name {
		case "MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached":
		default:
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			return memInfo{}, fmt.Errorf("%s has no value", name)
		}
		v, err := strconv.ParseUint(fields[0], 10, 64)
		if err != nil {
			return memInfo{}, fmt.Errorf("%s: %w", name, err)
		}
		if len(fields) > 1 && fields[1] == "kB" {
			v *= 1024
		}
		vals[name] = v
	}
	if err := sc.Err(); err != nil {
		return memInfo{}, err
	}
	total, ok := vals["MemTotal"]
	if !ok {
		return memInfo{}, errors.New("no MemTotal")
	}
	avail, ok := vals["MemAvailable"]
	if !ok {
		avail = vals["MemFree"] + vals["Buffers"] + vals["Cached"]
	}
	return memInfo{
		total: total,
		used:  total - min(avail, total),
		cache: vals["Cached"] + vals["Buffers"],
	}, nil
}

// diskUsage returns used and total bytes of the filesystem holding path.
func diskUsage(path string) (used, total uint64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, 0, fmt.Errorf("hoststats: statfs %s: %w", path, err)
	}
	bsize := uint64(st.Frsize)
	if bsize == 0 {
		bsize = uint64(st.Bsize)
	}
	total = st.Blocks * bsize
	used = (st.Blocks - min(st.Bfree, st.Blocks)) * bsize
	return used, total, nil
}
