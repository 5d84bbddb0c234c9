package qemu

import (
	"errors"
	"runtime"
	"time"
)

// TCG guests need to be told the TSC frequency.
//
// Under TCG a guest's RDTSC returns the host's TSC. The Debian kernel
// calibrates the TSC (and then the delay loop and the local APIC timer)
// against the emulated PIT; on a busy host the vCPU thread is descheduled
// during that calibration, it fails ("tsc: Unable to calibrate against
// PIT"), and the boot hangs before init. Measured here: with three busy
// loops on the two cores every plain boot hung, while every boot given
// tsc_early_khz (and tsc=reliable, which keeps the clocksource watchdog
// from discarding the TSC later) reached envd. So the driver measures the
// host TSC frequency once and passes it to TCG guests.

// tscSample is one reading of the TSC and the monotonic clock, taken so
// that the two are at most a few microseconds apart.
type tscSample struct {
	tsc uint64
	at  time.Time
}

func sampleTSC() (tscSample, bool) {
	for range 100 {
		a := rdtsc()
		now := time.Now()
		b := rdtsc()
		if b-a < 20000 { // not preempted between the reads
			return tscSample{tsc: a + (b-a)/2, at: now}, true
		}
	}
	return tscSample{}, false
}

// measureTSCKHz measures the host TSC frequency over interval.
func measureTSCKHz(interval time.Duration) (int64, error) {
	if runtime.GOARCH != "amd64" {
		return 0, errors.New("TSC measurement is for amd64 hosts")
	}
	runtime.LockOSThread() // one CPU's TSC; hosts with usable TSCs keep them in sync anyway
	defer runtime.UnlockOSThread()
	s0, ok := sampleTSC()
	if !ok {
		return 0, errors.New("could not read the TSC undisturbed")
	}
	timer := time.NewTimer(interval) // the measurement interval, not a synchronisation
	<-timer.C
	s1, ok := sampleTSC()
	if !ok {
		return 0, errors.New("could not read the TSC undisturbed")
	}
	ns := s1.at.Sub(s0.at).Nanoseconds()
	if ns <= 0 || s1.tsc <= s0.tsc {
		return 0, errors.New("the TSC or the clock did not advance")
	}
	khz := int64(float64(s1.tsc-s0.tsc) / float64(ns) * 1e6)
	if khz < 100_000 || khz > 20_000_000 {
		return 0, errors.New("implausible TSC frequency")
	}
	return khz, nil
}
