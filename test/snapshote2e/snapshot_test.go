package snapshote2e

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "wrenn.dev/wrenn/internal/gen/hostagent/v1"
)

const memMiB = 256

// The background process keeps a random value only in a shell variable
// and writes it to /tmp/state every second; it prints its pid.
const statefulProc = `setsid sh -c 'x=$(head -c 64 /dev/urandom | sha256sum | cut -c1-64); while true; do echo "$x" > /tmp/state; sleep 1; done' </dev/null >/dev/null 2>&1 & echo $!`

// procState reads the process's start time (field 22 of /proc/pid/stat)
// and, after removing /tmp/state, the value it writes there next: the
// value comes from the process's memory only.
func procState(t *testing.T, id, pid string) (start, value string) {
	t.Helper()
	out := sh(t, id, `set -e; p=`+pid+`; kill -0 $p; cut -d' ' -f22 /proc/$p/stat; rm -f /tmp/state; `+
		`i=0; while [ ! -s /tmp/state ]; do i=$((i+1)); [ $i -lt 300 ] || exit 3; sleep 0.1; done; cat /tmp/state`)
	f := strings.Fields(out)
	if len(f) != 2 || len(f[1]) != 64 {
		t.Fatalf("process %s in %s: %q", pid, id, out)
	}
	return f[0], f[1]
}

func pause(t *testing.T, id string) time.Duration {
	t.Helper()
	start := time.Now()
	res, err := api.PauseSandbox(tctx(t, 5*time.Minute), connect.NewRequest(&pb.PauseSandboxRequest{Id: id}))
	if err != nil {
		t.Fatalf("PauseSandbox(%s) = %v", id, err)
	}
	if s := res.Msg.GetSandbox().GetState(); s != pb.SandboxState_SANDBOX_STATE_PAUSED {
		t.Fatalf("PauseSandbox(%s): state %s", id, s)
	}
	return time.Since(start)
}

func resume(t *testing.T, id string) (*pb.Sandbox, time.Duration) {
	t.Helper()
	start := time.Now()
	res, err := api.ResumeSandbox(tctx(t, 5*time.Minute), connect.NewRequest(&pb.ResumeSandboxRequest{Id: id}))
	if err != nil {
		t.Fatalf("ResumeSandbox(%s) = %v", id, err)
	}
	sb := res.Msg.GetSandbox()
	if sb.GetState() != pb.SandboxState_SANDBOX_STATE_RUNNING {
		t.Fatalf("ResumeSandbox(%s): state %s", id, sb.GetState())
	}
	return sb, time.Since(start)
}

// TestSnapshots runs on one sandbox: a process and its memory survive a
// pause that frees everything; ten pause/resume cycles keep files
// byte-identical; three sandboxes from one template are independent;
// destroying a paused sandbox and deleting the template leave no files.
func TestSnapshots(t *testing.T) {
	dumpLogOnFailure(t)
	store := filepath.Join(dataDir, "snapshots")
	filesBefore, _ := countFiles(t, store)
	sb := create(t, &pb.CreateSandboxRequest{MemoryMib: memMiB, EnvVars: map[string]string{"WHO": "source"}})
	id := sb.GetId()
	pid := strings.TrimSpace(sh(t, id, statefulProc))
	start, value := procState(t, id, pid)
	t.Logf("sandbox %s: process %s (start %s) holds %s", id, pid, start, value[:16])

	t.Run("ProcessAndMemorySurvive", func(t *testing.T) {
		oldToken := sb.GetEnvdAccessToken()
		took := pause(t, id)
		if q := qemuOf(filepath.Join(dataDir, "sandboxes", id)); len(q) != 0 {
			t.Errorf("qemu of the paused sandbox still runs: %v", q)
		}
		ns, _ := os.ReadDir("/run/netns")
		for _, e := range ns {
			if strings.HasPrefix(e.Name(), netPrefix+"-") {
				t.Errorf("network namespace %s exists while the only sandbox is paused", e.Name())
			}
		}
		if _, err := os.Stat(filepath.Join(dataDir, "sandboxes", id)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("sandbox directory of the paused sandbox: %v", err)
		}
		now, rtook := resume(t, id)
		t.Logf("pause %s, resume %s", took.Round(time.Millisecond), rtook.Round(time.Millisecond))
		s2, v2 := procState(t, id, pid)
		if s2 != start || v2 != value {
			t.Errorf("after resume process %s has start %s value %s; before %s %s", pid, s2, v2[:16], start, value[:16])
		}
		if now.GetEnvdAccessToken() == oldToken {
			t.Error("the envd token did not change")
		}
		if c := envdStatus(t, now, "/envs", oldToken); c != 401 {
			t.Errorf("old token after resume: GET /envs = %d, want 401", c)
		}
		if c := envdStatus(t, now, "/envs", now.GetEnvdAccessToken()); c != 200 {
			t.Errorf("new token after resume: GET /envs = %d, want 200", c)
		}
		guest, _ := strconv.ParseInt(strings.TrimSpace(sh(t, id, "date +%s")), 10, 64)
		if d := time.Now().Unix() - guest; d > 5 || d < -5 {
			t.Errorf("guest clock is %ds off after resume", d)
		}
		if out := sh(t, id, "echo $WHO"); out != "source\n" {
			t.Errorf("env var after resume = %q", out)
		}
		sb = now
	})

	t.Run("TenCyclesKeepFiles", func(t *testing.T) {
		want := sh(t, id, `set -e; mkdir -p $HOME/d; for i in 1 2 3; do head -c 2097152 /dev/urandom > $HOME/d/f$i; done; `+
			`dd if=/dev/urandom of=$HOME/d/sparse bs=4096 seek=1000 count=3 2>/dev/null; sync; sha256sum $HOME/d/*`)
		for i := 1; i <= 10; i++ {
			p := pause(t, id)
			_, r := resume(t, id)
			got := sh(t, id, `echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; sha256sum $HOME/d/*`)
			if got != want {
				t.Fatalf("cycle %d: checksums\n%s\nwant\n%s", i, got, want)
			}
			t.Logf("cycle %d: pause %s, resume %s", i, p.Round(time.Millisecond), r.Round(time.Millisecond))
		}
		if s2, v2 := procState(t, id, pid); s2 != start || v2 != value {
			t.Errorf("after ten cycles the process changed: %s %s", s2, v2[:16])
		}
	})

	t.Run("ThreeFromOneTemplate", func(t *testing.T) {
		const tmpl = "snpe2e-tpl"
		res, err := api.CreateSnapshot(tctx(t, 5*time.Minute), connect.NewRequest(&pb.CreateSnapshotRequest{SandboxId: id, TemplateId: tmpl}))
		if err != nil {
			t.Fatalf("CreateSnapshot = %v", err)
		}
		tp := res.Msg.GetTemplate()
		if tp.GetVcpus() != sb.GetVcpus() || tp.GetMemoryMib() != memMiB || tp.GetSourceSandboxId() != id {
			t.Errorf("template = %v", tp)
		}
		t.Cleanup(func() {
			_, _ = api.DeleteSnapshot(tctx(t, time.Minute), connect.NewRequest(&pb.DeleteSnapshotRequest{TemplateId: tmpl}))
		})
		sh(t, id, "echo source > $HOME/d/who") // the source runs on
		_, err = api.CreateSandbox(tctx(t, time.Minute), connect.NewRequest(&pb.CreateSandboxRequest{Template: tmpl, MemoryMib: 512}))
		if connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("CreateSandbox from the template with other memory = %v, want InvalidArgument", err)
		}
		var kids []*pb.Sandbox
		for i := range 3 {
			t0 := time.Now()
			k := create(t, &pb.CreateSandboxRequest{Template: tmpl, EnvVars: map[string]string{"KID": strconv.Itoa(i)}})
			t.Logf("sandbox %d from the template in %s", i, time.Since(t0).Round(time.Millisecond))
			if k.GetMemoryMib() != memMiB || k.GetEnvdAccessToken() == sb.GetEnvdAccessToken() {
				t.Errorf("kid %d: %v", i, k)
			}
			// The template's process, with its memory, runs in each.
			if s2, v2 := procState(t, k.GetId(), pid); s2 != start || v2 != value {
				t.Errorf("kid %d: template process %s: %s %s", i, pid, s2, v2)
			}
			if out := sh(t, k.GetId(), "echo $WHO$KID"); out != "source"+strconv.Itoa(i)+"\n" {
				t.Errorf("kid %d: env %q", i, out)
			}
			sh(t, k.GetId(), "echo kid"+strconv.Itoa(i)+" > $HOME/d/who; echo kid"+strconv.Itoa(i)+" > /tmp/who; sync")
			kids = append(kids, k)
		}
		for i, k := range kids {
			want := "kid" + strconv.Itoa(i) + "\nkid" + strconv.Itoa(i) + "\n"
			if got := sh(t, k.GetId(), "cat $HOME/d/who /tmp/who"); got != want {
				t.Errorf("kid %d sees %q, want %q", i, got, want)
			}
		}
		if got := sh(t, id, "cat $HOME/d/who; cat /tmp/who 2>/dev/null || true"); got != "source\n" {
			t.Errorf("the source sees %q", got)
		}
		for _, k := range kids {
			destroy(t, k.GetId())
		}
	})

	t.Run("NothingLeft", func(t *testing.T) {
		pause(t, id)
		n, _ := countFiles(t, store)
		if n <= filesBefore {
			t.Fatalf("no snapshot files while paused")
		}
		destroy(t, id)
		for _, tp := range []string{"snpe2e-tpl"} {
			_, _ = api.DeleteSnapshot(tctx(t, time.Minute), connect.NewRequest(&pb.DeleteSnapshotRequest{TemplateId: tp}))
		}
		if n, names := countFiles(t, store); n != filesBefore {
			t.Errorf("%d files in the snapshot store after destroying the paused sandbox and deleting the template, %d before: %v", n, filesBefore, names)
		}
		if n, names := countFiles(t, filepath.Join(dataDir, "templates")); n != 0 {
			t.Errorf("template records left: %v", names)
		}
		if n, names := countFiles(t, filepath.Join(dataDir, "sandboxes")); n != 0 {
			t.Errorf("sandbox files left: %v", names)
		}
		if n, names := countFiles(t, filepath.Join(dataDir, "snapshot-tmp")); n != 0 {
			t.Errorf("temporary snapshot files left: %v", names)
		}
	})
}
