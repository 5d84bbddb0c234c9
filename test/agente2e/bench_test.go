package agente2e

import (
	"testing"
	"time"
)

// TestBootFigures runs MeasureBoot against the shared agent and logs its
// figures (go test -v shows them); it fails when the measurement cannot
// be taken or is implausible.
func TestBootFigures(t *testing.T) {
	dumpLogOnFailure(t)
	const runs = 3
	f, err := MeasureBoot(testCtx(t, 3*time.Minute), client(), MeasureOptions{Runs: runs})
	if err != nil {
		t.Fatalf("MeasureBoot() = %v", err)
	}
	t.Logf("boot figures:\n%s", f.Summary())
	for _, m := range f.Memory {
		t.Logf("pid %d: VmRSS %d KiB, Pss %d KiB, guest RAM resident %d KiB of %d MiB, VMM overhead %d KiB, RSS minus guest size %d KiB",
			m.PID, m.RSSKiB, m.PssKiB, m.GuestResidentKiB, m.GuestMiB, m.OverheadKiB(), m.RSSMinusGuestKiB())
	}
	if f.Driver != "qemu" || (f.Accelerator != "tcg" && f.Accelerator != "kvm") {
		t.Errorf("MeasureBoot() driver %q accelerator %q, want qemu with tcg or kvm", f.Driver, f.Accelerator)
	}
	if len(f.Creates) != runs || len(f.Memory) != runs {
		t.Fatalf("MeasureBoot() = %d creates and %d memory samples, want %d of each", len(f.Creates), len(f.Memory), runs)
	}
	for i, m := range f.Memory {
		if f.Creates[i] <= 0 || m.RSSKiB <= 0 || m.PssKiB <= 0 || m.GuestResidentKiB <= 0 || m.OverheadKiB() <= 0 ||
			m.GuestResidentKiB > m.GuestMiB*1024 || m.PssKiB > m.RSSKiB {
			t.Errorf("MeasureBoot() run %d = create %s, %+v: implausible", i, f.Creates[i], m)
		}
	}
}
