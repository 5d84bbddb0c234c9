package agentapi_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"wrenn.dev/wrenn/internal/agent"
	"wrenn.dev/wrenn/internal/agent/agentapi"
	"wrenn.dev/wrenn/internal/agent/agenttest"
	pb "wrenn.dev/wrenn/internal/gen/hostagent/v1"
	"wrenn.dev/wrenn/internal/gen/hostagent/v1/hostagentv1connect"
)

var envdBin string

func TestMain(m *testing.M) { agenttest.Main(m, "agentapi-test-", &envdBin) }

const secret = "s3cret-shared-with-the-control-plane"

type api struct {
	client hostagentv1connect.HostAgentClient
	url    string
	hc     *http.Client
	m      *agent.Manager
}

// setup serves the API of a manager on a fake host over h2c.
func setup(t *testing.T) *api {
	t.Helper()
	host, err := agenttest.NewHost(16)
	if err != nil {
		t.Fatal(err)
	}
	images, err := agenttest.NewImages(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	m, err := agent.New(agent.Config{
		DataDir:      t.TempDir(),
		HostID:       "api-test",
		Driver:       &agenttest.Driver{Envd: envdBin, Host: host},
		Images:       images,
		Network:      host.Network(),
		EnvdPort:     host.EnvdPort,
		MaxVCPUs:     4,
		MaxMemoryMiB: 2048,
		ReapInterval: -1,
		StopGrace:    5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	h, err := agentapi.NewHandler(m, agentapi.Options{Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Config.Protocols = agentapi.Protocols()
	srv.Start()
	hc := agentapi.NewHTTPClient()
	t.Cleanup(func() {
		hc.CloseIdleConnections()
		srv.Close()
		if err := m.DestroyAll(context.Background()); err != nil {
			t.Errorf("DestroyAll() = %v", err)
		}
		m.Stop(context.Background())
		host.Close()
	})
	return &api{client: agentapi.NewClient(hc, srv.URL, secret), url: srv.URL, hc: hc, m: m}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

func TestNewHandlerNeedsSecret(t *testing.T) {
	if _, err := agentapi.NewHandler(nil, agentapi.Options{}); err == nil {
		t.Fatal("NewHandler() without a secret = nil error, want one")
	}
}

// TestAuth checks every kind of call is refused without the secret.
func TestAuth(t *testing.T) {
	a := setup(t)
	tests := []struct {
		name   string
		header string
		want   connect.Code // 0: success
	}{
		{"no header", "", connect.CodeUnauthenticated},
		{"wrong secret", "Bearer nope", connect.CodeUnauthenticated},
		{"secret with a suffix", "Bearer " + secret + "x", connect.CodeUnauthenticated},
		{"wrong scheme", "Basic " + secret, connect.CodeUnauthenticated},
		{"no scheme", secret, connect.CodeUnauthenticated},
		{"right secret", "Bearer " + secret, 0},
		{"right secret, lowercase scheme", "bearer " + secret, 0},
	}
	for _, tt := range tests {
		c := hostagentv1connect.NewHostAgentClient(a.hc, a.url, connect.WithInterceptors(setHeader(tt.header)))
		code := func(err error) connect.Code {
			if err == nil {
				return 0
			}
			return connect.CodeOf(err)
		}
		_, err := c.GetHostInfo(ctx(t), connect.NewRequest(&pb.GetHostInfoRequest{}))
		if got := code(err); got != tt.want {
			t.Errorf("%s: GetHostInfo() = %v, want code %v", tt.name, err, tt.want)
		}
		// Server streaming: the error comes with the stream.
		es, err := c.Exec(ctx(t), connect.NewRequest(&pb.ExecRequest{SandboxId: "none", Cmd: "true"}))
		if err == nil {
			for es.Receive() {
			}
			err = es.Err()
			es.Close()
		}
		want := tt.want
		if want == 0 {
			want = connect.CodeNotFound
		}
		if got := code(err); got != want {
			t.Errorf("%s: Exec() = %v, want code %v", tt.name, err, want)
		}
		// Bidirectional streaming.
		ps := c.Pty(ctx(t))
		ps.Send(&pb.PtyRequest{Event: &pb.PtyRequest_Open_{Open: &pb.PtyRequest_Open{SandboxId: "none"}}})
		_, err = ps.Receive()
		ps.CloseRequest()
		ps.CloseResponse()
		if got := code(err); got != want {
			t.Errorf("%s: Pty() = %v, want code %v", tt.name, err, want)
		}
	}
}

// setHeader is a client interceptor that sets (or, for "", removes)
// Authorization.
type setHeader string

func (h setHeader) set(hd http.Header) {
	if h == "" {
		hd.Del("Authorization")
	} else {
		hd.Set("Authorization", string(h))
	}
}

func (h setHeader) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		h.set(req.Header())
		return next(ctx, req)
	}
}

func (h setHeader) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		h.set(conn.RequestHeader())
		return conn
	}
}

func (h setHeader) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// TestSandboxOverAPI drives a sandbox through every RPC with the
// generated client.
func TestSandboxOverAPI(t *testing.T) {
	a := setup(t)
	c := a.client
	created, err := c.CreateSandbox(ctx(t), connect.NewRequest(&pb.CreateSandboxRequest{
		Id: "api-1", Template: "minimal", Vcpus: 2, MemoryMib: 256, TimeoutSeconds: 600,
		EnvVars: map[string]string{"GREETING": "hi"}, Metadata: map[string]string{"team": "t1"},
	}))
	if err != nil {
		t.Fatalf("CreateSandbox() = %v", err)
	}
	sb := created.Msg.GetSandbox()
	if sb.GetState() != pb.SandboxState_SANDBOX_STATE_RUNNING || sb.GetVcpus() != 2 || sb.GetMemoryMib() != 256 ||
		sb.GetMetadata()["team"] != "t1" || sb.GetEnvdUrl() == "" || sb.GetEnvdAccessToken() == "" ||
		sb.GetDriver() != agenttest.DriverName || sb.GetCreatedAt() == nil || sb.GetExpiresAt() == nil {
		t.Fatalf("CreateSandbox() = %v", sb)
	}
	if d := sb.GetExpiresAt().AsTime().Sub(sb.GetCreatedAt().AsTime()); d < 590*time.Second || d > 610*time.Second {
		t.Errorf("expiry is %s after creation, want 600s", d)
	}

	got, err := c.GetSandbox(ctx(t), connect.NewRequest(&pb.GetSandboxRequest{Id: "api-1"}))
	if err != nil || got.Msg.GetSandbox().GetId() != "api-1" {
		t.Fatalf("GetSandbox() = %v, %v", got, err)
	}
	list, err := c.ListSandboxes(ctx(t), connect.NewRequest(&pb.ListSandboxesRequest{}))
	if err != nil || len(list.Msg.GetSandboxes()) != 1 {
		t.Fatalf("ListSandboxes() = %v, %v; want one", list, err)
	}

	// Exec, streaming.
	es, err := c.Exec(ctx(t), connect.NewRequest(&pb.ExecRequest{
		SandboxId: "api-1", Cmd: "/bin/sh", Args: []string{"-c", `echo "$GREETING $X"; cat; echo oops >&2; exit 4`},
		Envs: map[string]string{"X": "there"}, Stdin: []byte("from stdin\n"),
	}))
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr strings.Builder
	var pid uint32
	var exited *pb.ExecResponse_Exited
	for es.Receive() {
		switch ev := es.Msg(); {
		case ev.GetStarted() != nil:
			pid = ev.GetStarted().GetPid()
		case ev.GetStdout() != nil:
			stdout.Write(ev.GetStdout())
		case ev.GetStderr() != nil:
			stderr.Write(ev.GetStderr())
		case ev.GetExited() != nil:
			exited = ev.GetExited()
		}
	}
	if err := es.Err(); err != nil {
		t.Fatalf("Exec() stream = %v", err)
	}
	es.Close()
	if pid == 0 || stdout.String() != "hi there\nfrom stdin\n" || stderr.String() != "oops\n" || exited.GetExitCode() != 4 {
		t.Fatalf("Exec() = pid %d, stdout %q, stderr %q, exit %v", pid, stdout.String(), stderr.String(), exited)
	}

	// WriteFile, then ReadFile.
	path := filepath.Join(t.TempDir(), "f.bin")
	data := bytes.Repeat([]byte("wrenn!"), 100000)
	ws := c.WriteFile(ctx(t))
	ws.Send(&pb.WriteFileRequest{Part: &pb.WriteFileRequest_Header_{Header: &pb.WriteFileRequest_Header{SandboxId: "api-1", Path: path}}})
	for rest := data; len(rest) > 0; {
		n := min(len(rest), 100000)
		if err := ws.Send(&pb.WriteFileRequest{Part: &pb.WriteFileRequest_Data{Data: rest[:n]}}); err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
	}
	wr, err := ws.CloseAndReceive()
	if err != nil || wr.Msg.GetPath() != path || wr.Msg.GetSize() != uint64(len(data)) {
		t.Fatalf("WriteFile() = %v, %v; want %s and %d bytes", wr, err, path, len(data))
	}
	rs, err := c.ReadFile(ctx(t), connect.NewRequest(&pb.ReadFileRequest{SandboxId: "api-1", Path: path}))
	if err != nil {
		t.Fatal(err)
	}
	var back bytes.Buffer
	for rs.Receive() {
		back.Write(rs.Msg().GetData())
	}
	if err := rs.Err(); err != nil || !bytes.Equal(back.Bytes(), data) {
		t.Fatalf("ReadFile() = %d bytes, %v; want what was written", back.Len(), err)
	}
	rs.Close()

	// ListDir: the file just written, with its size; a missing directory
	// is NotFound.
	os.Mkdir(filepath.Join(filepath.Dir(path), "sub"), 0o755)
	ld, err := c.ListDir(ctx(t), connect.NewRequest(&pb.ListDirRequest{SandboxId: "api-1", Path: filepath.Dir(path)}))
	if err != nil {
		t.Fatalf("ListDir() = %v", err)
	}
	if e := ld.Msg.GetEntries(); len(e) != 2 || e[0].GetName() != "sub" || e[0].GetType() != "dir" ||
		e[1].GetName() != "f.bin" || e[1].GetType() != "file" || e[1].GetSize() != uint64(len(data)) || e[1].GetPath() != path {
		t.Fatalf("ListDir() = %v; want sub/ then f.bin of %d bytes", e, len(data))
	}
	if _, err := c.ListDir(ctx(t), connect.NewRequest(&pb.ListDirRequest{SandboxId: "api-1", Path: path + ".missing"})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("ListDir(missing) = %v, want not_found", err)
	}

	// Pause: exec is refused until resume, which also sets a new lifetime.
	pr, err := c.PauseSandbox(ctx(t), connect.NewRequest(&pb.PauseSandboxRequest{Id: "api-1"}))
	if err != nil || pr.Msg.GetSandbox().GetState() != pb.SandboxState_SANDBOX_STATE_PAUSED {
		t.Fatalf("PauseSandbox() = %v, %v; want paused", pr, err)
	}
	if _, err := c.ListDir(ctx(t), connect.NewRequest(&pb.ListDirRequest{SandboxId: "api-1", Path: "/"})); connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Errorf("ListDir() while paused = %v, want failed_precondition", err)
	}
	rr, err := c.ResumeSandbox(ctx(t), connect.NewRequest(&pb.ResumeSandboxRequest{Id: "api-1", TimeoutSeconds: 900}))
	if err != nil || rr.Msg.GetSandbox().GetState() != pb.SandboxState_SANDBOX_STATE_RUNNING {
		t.Fatalf("ResumeSandbox() = %v, %v; want running", rr, err)
	}
	if d := time.Until(rr.Msg.GetSandbox().GetExpiresAt().AsTime()); d < 890*time.Second || d > 901*time.Second {
		t.Errorf("after ResumeSandbox(timeout 900) the sandbox expires in %s", d)
	}

	// Pty: open, type, resize, exit.
	ps := c.Pty(ctx(t))
	send := func(r *pb.PtyRequest) {
		t.Helper()
		if err := ps.Send(r); err != nil {
			t.Fatalf("Pty Send() = %v", err)
		}
	}
	send(&pb.PtyRequest{Event: &pb.PtyRequest_Open_{Open: &pb.PtyRequest_Open{SandboxId: "api-1", Cmd: "/bin/sh", Cols: 80, Rows: 24}}})
	first, err := ps.Receive()
	if err != nil || first.GetStarted().GetPid() == 0 {
		t.Fatalf("Pty first response = %v, %v; want started with a pid", first, err)
	}
	send(&pb.PtyRequest{Event: &pb.PtyRequest_Resize_{Resize: &pb.PtyRequest_Resize{Cols: 120, Rows: 40}}})
	send(&pb.PtyRequest{Event: &pb.PtyRequest_Input{Input: []byte("stty size; exit 9\n")}})
	var out strings.Builder
	var ptyExit *pb.PtyResponse_Exited
	for ptyExit == nil {
		r, err := ps.Receive()
		if err != nil {
			t.Fatalf("Pty Receive() = %v; output so far %q", err, out.String())
		}
		out.Write(r.GetOutput())
		ptyExit = r.GetExited()
	}
	ps.CloseRequest()
	ps.CloseResponse()
	if !strings.Contains(out.String(), "40 120") || ptyExit.GetExitCode() != 9 {
		t.Fatalf("Pty output %q, exit %v; want the new size and exit 9", out.String(), ptyExit)
	}

	st, err := c.SetTimeout(ctx(t), connect.NewRequest(&pb.SetTimeoutRequest{Id: "api-1", TimeoutSeconds: 30}))
	if err != nil || time.Until(st.Msg.GetExpiresAt().AsTime()) > 31*time.Second {
		t.Fatalf("SetTimeout(30) = %v, %v", st, err)
	}
	info, err := c.GetHostInfo(ctx(t), connect.NewRequest(&pb.GetHostInfoRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if i := info.Msg; i.GetHostId() != "api-test" || i.GetVcpusTotal() != 4 || i.GetVcpusUsed() != 2 || i.GetMemoryMibUsed() != 256 ||
		i.GetSandboxes() != 1 || i.GetSlotsFree() != 15 || len(i.GetTemplates()) != 2 || i.GetDriver() != agenttest.DriverName {
		t.Errorf("GetHostInfo() = %v", i)
	}

	if _, err := c.DestroySandbox(ctx(t), connect.NewRequest(&pb.DestroySandboxRequest{Id: "api-1"})); err != nil {
		t.Fatalf("DestroySandbox() = %v", err)
	}
	if _, err := c.DestroySandbox(ctx(t), connect.NewRequest(&pb.DestroySandboxRequest{Id: "api-1"})); err != nil {
		t.Errorf("DestroySandbox() again = %v, want nil", err)
	}
	got, err = c.GetSandbox(ctx(t), connect.NewRequest(&pb.GetSandboxRequest{Id: "api-1"}))
	if err != nil || got.Msg.GetSandbox().GetState() != pb.SandboxState_SANDBOX_STATE_STOPPED || got.Msg.GetSandbox().GetReason() == "" {
		t.Errorf("GetSandbox() after destroy = %v, %v; want stopped with a reason", got, err)
	}
}

// TestErrorCodes checks agent errors arrive with the right Connect codes
// and their messages.
func TestErrorCodes(t *testing.T) {
	a := setup(t)
	c := a.client
	create := func(r *pb.CreateSandboxRequest) error {
		_, err := c.CreateSandbox(ctx(t), connect.NewRequest(r))
		return err
	}
	if err := create(&pb.CreateSandboxRequest{Id: "one", Template: "minimal", Vcpus: 3}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		call func() error
		code connect.Code
		msg  string
	}{
		{"unknown template", func() error { return create(&pb.CreateSandboxRequest{Template: "nope"}) },
			connect.CodeInvalidArgument, `unknown template "nope" (known: minimal, base)`},
		{"too many vcpus", func() error { return create(&pb.CreateSandboxRequest{Template: "minimal", Vcpus: 9}) },
			connect.CodeInvalidArgument, "vcpus 9 is outside 1-4"},
		{"too little memory", func() error { return create(&pb.CreateSandboxRequest{Template: "minimal", MemoryMib: 100}) },
			connect.CodeInvalidArgument, "memory_mib 100 is below the minimum of 128 MiB"},
		{"host full", func() error { return create(&pb.CreateSandboxRequest{Template: "minimal", Vcpus: 2}) },
			connect.CodeResourceExhausted, "host is full: 1 of 4 vCPUs"},
		{"duplicate id", func() error { return create(&pb.CreateSandboxRequest{Id: "one", Template: "minimal"}) },
			connect.CodeAlreadyExists, "sandbox one already exists"},
		{"get unknown", func() error {
			_, err := c.GetSandbox(ctx(t), connect.NewRequest(&pb.GetSandboxRequest{Id: "zzz"}))
			return err
		}, connect.CodeNotFound, "sandbox zzz not found"},
		{"get without id", func() error {
			_, err := c.GetSandbox(ctx(t), connect.NewRequest(&pb.GetSandboxRequest{}))
			return err
		}, connect.CodeInvalidArgument, "sandbox id is required"},
		{"destroy unknown", func() error {
			_, err := c.DestroySandbox(ctx(t), connect.NewRequest(&pb.DestroySandboxRequest{Id: "zzz"}))
			return err
		}, connect.CodeNotFound, "sandbox zzz not found"},
		{"write without header", func() error {
			ws := c.WriteFile(ctx(t))
			ws.Send(&pb.WriteFileRequest{Part: &pb.WriteFileRequest_Data{Data: []byte("x")}})
			_, err := ws.CloseAndReceive()
			return err
		}, connect.CodeInvalidArgument, "first message must be its header"},
		{"read missing file", func() error {
			rs, err := c.ReadFile(ctx(t), connect.NewRequest(&pb.ReadFileRequest{SandboxId: "one", Path: "/nonexistent/file"}))
			if err != nil {
				return err
			}
			defer rs.Close()
			for rs.Receive() {
			}
			return rs.Err()
		}, connect.CodeNotFound, ""},
		{"pty without open", func() error {
			ps := c.Pty(ctx(t))
			defer ps.CloseResponse()
			ps.Send(&pb.PtyRequest{Event: &pb.PtyRequest_Input{Input: []byte("x")}})
			ps.CloseRequest()
			_, err := ps.Receive()
			return err
		}, connect.CodeInvalidArgument, "first message must be open"},
	}
	for _, tt := range tests {
		err := tt.call()
		var ce *connect.Error
		if !errors.As(err, &ce) || ce.Code() != tt.code || !strings.Contains(ce.Message(), tt.msg) {
			t.Errorf("%s: got %v, want code %v with %q", tt.name, err, tt.code, tt.msg)
		}
	}
	// A command in a destroyed sandbox: failed precondition.
	if _, err := c.DestroySandbox(ctx(t), connect.NewRequest(&pb.DestroySandboxRequest{Id: "one"})); err != nil {
		t.Fatal(err)
	}
	es, err := c.Exec(ctx(t), connect.NewRequest(&pb.ExecRequest{SandboxId: "one", Cmd: "true"}))
	if err == nil {
		for es.Receive() {
		}
		err = es.Err()
		es.Close()
	}
	if connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Errorf("Exec() in a stopped sandbox = %v, want FailedPrecondition", err)
	}
}
