package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"

	"wrenn.dev/wrenn/internal/agent/agentapi"
	"wrenn.dev/wrenn/internal/control/controltest"
	"wrenn.dev/wrenn/internal/control/db"
	pb "wrenn.dev/wrenn/internal/gen/hostagent/v1"
	"wrenn.dev/wrenn/internal/pgembed"
	"wrenn.dev/wrenn/internal/sandbox"
)

// Control-plane benchmark sizes.
const (
	apiWorkers     = 32              // concurrent clients for the throughput figures
	apiRound       = 2 * time.Second // one throughput round; three per side
	apiListRecords = 50              // sandboxes in the team for the list figure
	pacedRate      = 500             // requests per second for the latency figure
	pacedFor       = 5 * time.Second
	createN        = 10 // creates per side for the overhead figure
)

// benchControl measures the control plane (package controltest's pieces:
// a private PostgreSQL server, the control.Service, the REST API on
// loopback, and one host agent on the fake driver, whose sandboxes are
// host-mode envds):
//
//   - api_get_rps, api_list_rps: GET /v1/sandboxes/{id} and
//     GET /v1/sandboxes?limit=50 from 32 clients as fast as they are
//     answered, against a bare chi router serving the same bytes;
//   - api_get_p99_at_500rps: the same GET paced at 500 requests a second,
//     against the bare router at the same pace;
//   - control_create_p50, control_create_overhead: POST /v1/sandboxes
//     against the agent's own CreateSandbox, called directly;
//   - pty_ws_output_100MiB: output through the terminal WebSocket, checked
//     byte for byte, against a local PTY running the same command.
func benchControl(ctx context.Context, envdBin string, ptyBytes int64, want func(string) bool) (err error) {
	h := &harness{}
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(harnessFatal)
			if !ok {
				panic(r)
			}
			err = f.err
		}
		err = errors.Join(err, h.close())
	}()
	envdAbs, err := filepath.Abs(envdBin)
	if err != nil {
		return err
	}
	store, err := startDatabase(ctx, h)
	if err != nil {
		return err
	}
	agent := controltest.StartAgent(h, envdAbs, "bench-host")
	// No host monitor runs, so the agent's registration is its last
	// heartbeat: it must stay live for the whole run.
	p := controltest.NewWithStore(h, store, controltest.Options{Agents: []string{agent.URL}, HeartbeatTTL: time.Hour})
	key := p.A.MemberKey
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2 * apiWorkers, DisableCompression: true}}
	defer hc.CloseIdleConnections()

	// One real sandbox (a VM on the fake driver) for the get and the
	// terminal.
	var id string
	if want("api_") || want("pty_ws") {
		r := p.Do(h, http.MethodPost, "/v1/sandboxes", key, map[string]any{"template": "minimal"})
		var sb struct {
			ID string `json:"id"`
		}
		r.JSON(h, &sb)
		if r.Status != http.StatusCreated || sb.ID == "" {
			return fmt.Errorf("create: %d %s", r.Status, r.Body)
		}
		id = sb.ID
	}
	if want("api_") {
		// The list's other entries are records only: reading them touches
		// nothing but the database.
		for i := range apiListRecords - 1 {
			if _, err := store.CreateSandbox(ctx, db.Sandbox{
				ID: fmt.Sprintf("sb-bench%08d", i), TeamID: p.A.ID, Template: "minimal",
				State: sandbox.StateRunning, VCPUs: 1, MemoryMiB: 256, Metadata: map[string]string{"bench": "list"},
			}); err != nil {
				return err
			}
		}
		if err := benchAPI(ctx, hc, p.URL, key, id); err != nil {
			return err
		}
	}
	if want("control_") {
		if err := benchCreate(ctx, hc, p.URL, key, agent.URL); err != nil {
			return fmt.Errorf("create: %w", err)
		}
	}
	if want("pty_ws") {
		if err := benchPTYWebSocket(ctx, p.URL, key, id, ptyBytes); err != nil {
			return fmt.Errorf("terminal: %w", err)
		}
	}
	return nil
}

// startDatabase starts a private PostgreSQL server in a temporary
// directory and opens the control plane's database on it; both end with
// h.
func startDatabase(ctx context.Context, h *harness) (*db.DB, error) {
	dir := h.TempDir()
	// As root the server runs as the postgres user, who must reach its
	// data directory.
	if err := os.Chmod(dir, 0o711); err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	srv, err := pgembed.Start(sctx, pgembed.Config{
		DataDir:  filepath.Join(dir, "data"),
		Database: "wrenn_bench",
		Logger:   slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return nil, err
	}
	h.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := srv.Stop(ctx); err != nil {
			h.Errorf("stop postgres: %v", err)
		}
	})
	store, err := db.Open(sctx, srv.URL(), nil)
	if err != nil {
		return nil, err
	}
	h.Cleanup(store.Close)
	return store, nil
}

// benchAPI: get and list under concurrent load, and the get's p99 at a
// fixed rate, each against a bare chi router on loopback that serves the
// bytes the API answered, with no authentication and no database.
func benchAPI(ctx context.Context, hc *http.Client, apiURL, key, id string) error {
	getPath := "/v1/sandboxes/" + id
	listPath := fmt.Sprintf("/v1/sandboxes?limit=%d", apiListRecords)
	getBody, err := fetch(ctx, hc, apiURL+getPath, key)
	if err != nil {
		return err
	}
	listBody, err := fetch(ctx, hc, apiURL+listPath, key)
	if err != nil {
		return err
	}
	var page struct {
		Sandboxes []json.RawMessage `json:"sandboxes"`
	}
	if err := json.Unmarshal(listBody, &page); err != nil || len(page.Sandboxes) != apiListRecords {
		return fmt.Errorf("the list has %d sandboxes, want %d (%v)", len(page.Sandboxes), apiListRecords, err)
	}
	bareURL, stop, err := bareChi(getBody, listBody)
	if err != nil {
		return err
	}
	defer stop()

	for _, f := range []struct {
		metric, base, path string
	}{
		{"api_get_rps", "bare_chi_get_rps", getPath},
		{"api_list_rps", "bare_chi_list_rps", listPath},
	} {
		// Warm both servers (connections, the database's caches) first;
		// then the best of three interleaved rounds each.
		if _, err := closedLoop(ctx, hc, apiURL+f.path, key, apiRound/4); err != nil {
			return err
		}
		if _, err := closedLoop(ctx, hc, bareURL+f.path, key, apiRound/4); err != nil {
			return err
		}
		var api, bare float64
		for range 3 {
			rps, err := closedLoop(ctx, hc, apiURL+f.path, key, apiRound)
			if err != nil {
				return err
			}
			api = max(api, rps)
			if rps, err = closedLoop(ctx, hc, bareURL+f.path, key, apiRound); err != nil {
				return err
			}
			bare = max(bare, rps)
		}
		line(f.metric, api, "req/s", f.base, bare)
	}

	apiLat, err := openLoop(ctx, hc, apiURL+getPath, key, pacedRate, pacedFor)
	if err != nil {
		return err
	}
	bareLat, err := openLoop(ctx, hc, bareURL+getPath, key, pacedRate, pacedFor)
	if err != nil {
		return err
	}
	line(fmt.Sprintf("api_get_p99_at_%drps", pacedRate), ms(percentile(apiLat, 0.99)), "ms",
		fmt.Sprintf("bare_chi_p99_at_%drps", pacedRate), ms(percentile(bareLat, 0.99)))
	return nil
}

// bareChi is the API baseline: a chi router on loopback answering the
// get and list routes with fixed bytes.
func bareChi(getBody, listBody []byte) (string, func(), error) {
	fixed := func(b []byte) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusOK)
			w.Write(b) //nolint:errcheck // the client went away
		}
	}
	r := chi.NewRouter()
	r.Get("/v1/sandboxes/{id}", fixed(getBody))
	r.Get("/v1/sandboxes", fixed(listBody))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: r}
	go srv.Serve(ln) //nolint:errcheck // ends with Close
	return "http://" + ln.Addr().String(), func() { srv.Close() }, nil
}

// get sends one GET with key and reads the answer, which must be 200.
func get(ctx context.Context, hc *http.Client, target, key string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return err
	}
	req.Header.Set("X-API-Key", key)
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = drain(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", target, resp.Status)
	}
	return err
}

// fetch is get returning the body.
func fetch(ctx context.Context, hc *http.Client, target, key string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-API-Key", key)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s %s", target, resp.Status, b)
	}
	return b, err
}

// closedLoop has apiWorkers clients GET target back to back for d and
// returns the answers per second.
func closedLoop(ctx context.Context, hc *http.Client, target, key string, d time.Duration) (float64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var done atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	t0 := time.Now()
	deadline := t0.Add(d)
	for range apiWorkers {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				if err := get(ctx, hc, target, key); err != nil {
					once.Do(func() { firstErr = err; cancel() })
					return
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return 0, firstErr
	}
	return float64(done.Load()) / time.Since(t0).Seconds(), nil
}

// openLoop sends GETs at rate per second for d, each on time whether or
// not the earlier ones have been answered, and returns each one's latency
// from the moment it was due (so that a stalled server is not excused by
// a sender that waited for it).
func openLoop(ctx context.Context, hc *http.Client, target, key string, rate int, d time.Duration) ([]time.Duration, error) {
	n := int(float64(rate) * d.Seconds())
	interval := time.Second / time.Duration(rate)
	lat := make([]time.Duration, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := range n {
		due := t0.Add(time.Duration(i) * interval)
		time.Sleep(time.Until(due))
		wg.Go(func() {
			errs[i] = get(ctx, hc, target, key)
			lat[i] = time.Since(due)
		})
	}
	wg.Wait()
	return lat, errors.Join(errs...)
}

// benchCreate: POST /v1/sandboxes against the same agent's CreateSandbox
// called directly with what the control plane sends it, alternated so
// that noise hits both alike.
//
// A fake VM's boot varies by tens of milliseconds from one create to the
// next (a process start, then envd's /health polled with backoff), far
// more than the control plane adds, so the difference of the two medians
// (control_create_p50's ratio) moves from run to run. The overhead figure
// takes each create's boot out first: the agent's record says when its
// create began (CreatedAt) and when the sandbox ran (ExpiresAt minus the
// timeout), and the figure is the median of the rest of the API's creates
// minus the median of the rest of the direct ones.
func benchCreate(ctx context.Context, hc *http.Client, apiURL, key, agentURL string) error {
	const timeout = 300 // seconds, the control plane's default
	agent := agentapi.NewClient(agentapi.NewHTTPClient(), agentURL, controltest.Secret)
	// boot is the part of a create the agent spent from reserving the
	// sandbox to its running.
	boot := func(sb *pb.Sandbox) (time.Duration, error) {
		if sb.GetCreatedAt() == nil || sb.GetExpiresAt() == nil {
			return 0, fmt.Errorf("sandbox %s has no created_at or expires_at", sb.GetId())
		}
		return sb.GetExpiresAt().AsTime().Add(-timeout * time.Second).Sub(sb.GetCreatedAt().AsTime()), nil
	}
	viaAPI := func() (total, rest time.Duration, err error) {
		t0 := time.Now()
		body := fmt.Sprintf(`{"template":"minimal","timeout_seconds":%d}`, timeout)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, apiURL+"/v1/sandboxes", strings.NewReader(body))
		req.Header.Set("X-API-Key", key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			return 0, 0, err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		total = time.Since(t0)
		var sb struct {
			ID string `json:"id"`
		}
		if err == nil && (resp.StatusCode != http.StatusCreated || json.Unmarshal(b, &sb) != nil || sb.ID == "") {
			err = fmt.Errorf("POST /v1/sandboxes: %s %s", resp.Status, b)
		}
		if err != nil {
			return 0, 0, err
		}
		got, err := agent.GetSandbox(ctx, connect.NewRequest(&pb.GetSandboxRequest{Id: sb.ID}))
		if err != nil {
			return 0, 0, err
		}
		vm, err := boot(got.Msg.GetSandbox())
		if err != nil {
			return 0, 0, err
		}
		req, _ = http.NewRequestWithContext(ctx, http.MethodDelete, apiURL+"/v1/sandboxes/"+sb.ID, nil)
		req.Header.Set("X-API-Key", key)
		if resp, err = hc.Do(req); err != nil {
			return 0, 0, err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			return 0, 0, fmt.Errorf("DELETE /v1/sandboxes/%s: %s", sb.ID, resp.Status)
		}
		return total, total - vm, nil
	}
	seq := 0
	direct := func() (total, rest time.Duration, err error) {
		seq++
		id := fmt.Sprintf("sb-direct%07d", seq)
		t0 := time.Now()
		resp, err := agent.CreateSandbox(ctx, connect.NewRequest(&pb.CreateSandboxRequest{
			Id: id, Template: "minimal", Vcpus: 1, MemoryMib: 256, TimeoutSeconds: timeout, Egress: true,
		}))
		total = time.Since(t0)
		if err != nil {
			return 0, 0, err
		}
		vm, err := boot(resp.Msg.GetSandbox())
		if err != nil {
			return 0, 0, err
		}
		if _, err := agent.DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{Id: id})); err != nil {
			return 0, 0, err
		}
		return total, total - vm, nil
	}
	// One of each to warm up (connections, page cache), then alternate.
	if _, _, err := viaAPI(); err != nil {
		return err
	}
	if _, _, err := direct(); err != nil {
		return err
	}
	var apiTotal, apiRest, dirTotal, dirRest []time.Duration
	for range createN {
		total, rest, err := viaAPI()
		if err != nil {
			return err
		}
		apiTotal, apiRest = append(apiTotal, total), append(apiRest, rest)
		if total, rest, err = direct(); err != nil {
			return err
		}
		dirTotal, dirRest = append(dirTotal, total), append(dirRest, rest)
	}
	a, b := ms(percentile(apiTotal, 0.5)), ms(percentile(dirTotal, 0.5))
	added := ms(percentile(apiRest, 0.5)) - ms(percentile(dirRest, 0.5))
	line("control_create_p50", a, "ms", "agent_create_direct_p50", b)
	// line's format, with the ratio of the whole create (the direct one
	// plus what the control plane adds) to the direct one.
	fmt.Printf("metric=%s value=%.4g unit=%s baseline=%s:%.4g ratio=%.3f\n", "control_create_overhead", added, "ms", "agent_create_direct_p50", b, (b+added)/b)
	return nil
}

// benchPTYWebSocket: n bytes of `seq` output through the control plane's
// terminal WebSocket (API → agent → envd → PTY), each byte checked against
// the expected stream, against reading the same command's output from a
// local PTY.
func benchPTYWebSocket(ctx context.Context, apiURL, key, id string, n int64) error {
	// seq's output is a pattern any loss, duplication or reordering
	// breaks; in raw mode the PTY passes it through unchanged.
	want := make([]byte, 0, n+16)
	last := 0
	for int64(len(want)) < n {
		last++
		want = strconv.AppendInt(want, int64(last), 10)
		want = append(want, '\n')
	}
	want = want[:n]
	script := fmt.Sprintf("seq 1 %d | head -c %d", last, n)
	u := "ws" + strings.TrimPrefix(apiURL, "http") + "/v1/sandboxes/" + id + "/pty?" + url.Values{
		"token": {key}, "cols": {"200"}, "rows": {"50"}, "cmd": {"stty raw -echo; " + script},
	}.Encode()

	// viaWS returns the time to the exit frame and how many bytes arrived
	// as they should before the first that did not.
	viaWS := func() (time.Duration, int64, error) {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		t0 := time.Now()
		conn, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{CompressionMode: websocket.CompressionDisabled})
		if err != nil {
			return 0, 0, err
		}
		defer conn.CloseNow()
		conn.SetReadLimit(-1)
		buf := make([]byte, 64<<10)
		var got, intact int64
		started := false
		for {
			typ, r, err := conn.Reader(ctx)
			if err != nil {
				return 0, intact, fmt.Errorf("after %d bytes: %w", got, err)
			}
			if typ == websocket.MessageText {
				b, err := io.ReadAll(r)
				if err != nil {
					return 0, intact, err
				}
				var c struct {
					Type     string `json:"type"`
					PID      uint32 `json:"pid"`
					ExitCode *int   `json:"exit_code"`
				}
				if err := json.Unmarshal(b, &c); err != nil {
					return 0, intact, fmt.Errorf("control frame %q: %w", b, err)
				}
				switch {
				case c.Type == "started" && !started && c.PID != 0:
					started = true
				case c.Type == "exit" && started:
					d := time.Since(t0)
					conn.Close(websocket.StatusNormalClosure, "")
					if c.ExitCode == nil || *c.ExitCode != 0 {
						return 0, intact, fmt.Errorf("the command exited %s", b)
					}
					if got != n {
						return d, intact, fmt.Errorf("%d bytes arrived, want %d", got, n)
					}
					return d, intact, nil
				default:
					return 0, intact, fmt.Errorf("unexpected control frame %s", b)
				}
				continue
			}
			for {
				k, err := r.Read(buf)
				if intact == got && got+int64(k) <= n && bytes.Equal(buf[:k], want[got:got+int64(k)]) {
					intact += int64(k)
				}
				got += int64(k)
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					return 0, intact, err
				}
			}
		}
	}
	// Best of three interleaved rounds each, as for envd's PTY figure.
	var dWS, dRaw time.Duration
	for range 3 {
		d, intact, err := viaWS()
		if err != nil {
			line("pty_ws_output_delivered_fraction", float64(intact)/float64(n), "fraction", "raw_pty_read", 1)
			return err
		}
		if dWS == 0 || d < dWS {
			dWS = d
		}
		d, got, err := rawPTY(script)
		if err != nil {
			return err
		}
		if got != n {
			return fmt.Errorf("raw pty: %d bytes, want %d", got, n)
		}
		if dRaw == 0 || d < dRaw {
			dRaw = d
		}
	}
	mbps := func(d time.Duration) float64 { return float64(n) / (1 << 20) / d.Seconds() }
	line("pty_ws_output_100MiB", mbps(dWS), "MiB/s", "raw_pty_read", mbps(dRaw))
	line("pty_ws_output_delivered_fraction", 1, "fraction", "raw_pty_read", 1)
	return nil
}

// harness is the controltest.TB of a benchmark run: its temporary
// directories and cleanups belong to the run, and a fatal error unwinds
// to benchControl as a panic it recovers, rather than exiting.
type harness struct {
	mu       sync.Mutex
	cleanups []func()
	errs     []error
}

type harnessFatal struct{ err error }

var _ controltest.TB = (*harness)(nil)

func (h *harness) Helper() {}

func (h *harness) TempDir() string {
	dir, err := os.MkdirTemp("", "wrenn-bench-control-")
	if err != nil {
		h.Fatal(err)
	}
	h.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func (h *harness) Cleanup(f func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cleanups = append(h.cleanups, f)
}

func (h *harness) Errorf(format string, args ...any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.errs = append(h.errs, fmt.Errorf(format, args...))
}

func (h *harness) Fatal(args ...any) { panic(harnessFatal{errors.New(fmt.Sprint(args...))}) }

func (h *harness) Fatalf(format string, args ...any) {
	panic(harnessFatal{fmt.Errorf(format, args...)})
}

// close runs the cleanups, last registered first, and returns the errors
// reported meanwhile.
func (h *harness) close() error {
	for {
		h.mu.Lock()
		if len(h.cleanups) == 0 {
			errs := h.errs
			h.mu.Unlock()
			return errors.Join(errs...)
		}
		f := h.cleanups[len(h.cleanups)-1]
		h.cleanups = h.cleanups[:len(h.cleanups)-1]
		h.mu.Unlock()
		f()
	}
}
