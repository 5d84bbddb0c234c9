package agent

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/errdefs/errconnect"
)

func TestStatusError(t *testing.T) {
	tests := []struct {
		status int
		body   string
		class  error // nil: internal
		msg    string
	}{
		{400, `{"message":"bad path","code":400}`, errdefs.ErrInvalidArgument, "envd: bad path"},
		{401, `{"message":"unknown user \"bob\"","code":401}`, errdefs.ErrPermissionDenied, `envd: unknown user "bob"`},
		{404, `{"message":"no such file","code":404}`, errdefs.ErrNotFound, "envd: no such file"},
		{507, `{"message":"disk full","code":507}`, errdefs.ErrResourceExhausted, "envd: disk full"},
		{500, `{"message":"boom","code":500}`, nil, "boom"},
		{502, `not json`, nil, "not json"},
	}
	for _, tt := range tests {
		resp := &http.Response{StatusCode: tt.status, Status: http.StatusText(tt.status), Body: io.NopCloser(strings.NewReader(tt.body))}
		err := statusError(resp)
		if got := errdefs.Class(err); got != tt.class {
			t.Errorf("statusError(%d, %s) class = %v, want %v", tt.status, tt.body, got, tt.class)
		}
		if !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("statusError(%d, %s) = %q, want it to contain %q", tt.status, tt.body, err, tt.msg)
		}
	}
}

// TestRPCError checks envd's Connect errors are reclassified and never
// forwarded as they are (errconnect.ToConnect passes a *connect.Error on
// unchanged, code and message).
func TestRPCError(t *testing.T) {
	tests := []struct {
		in   error
		code connect.Code
	}{
		{connect.NewError(connect.CodeNotFound, errors.New("process 7 not found")), connect.CodeNotFound},
		{connect.NewError(connect.CodeUnauthenticated, errors.New("unknown user")), connect.CodePermissionDenied},
		{connect.NewError(connect.CodeInternal, errors.New("/secret/host/path")), connect.CodeInternal},
		{connect.NewError(connect.CodeUnavailable, errors.New("dial refused")), connect.CodeUnavailable},
		{context.Canceled, connect.CodeCanceled},
	}
	for _, tt := range tests {
		out := errconnect.ToConnect(rpcError(tt.in))
		if got := connect.CodeOf(out); got != tt.code {
			t.Errorf("ToConnect(rpcError(%v)) code = %v, want %v", tt.in, got, tt.code)
		}
		if tt.code == connect.CodeInternal && strings.Contains(out.Error(), "secret") {
			t.Errorf("ToConnect(rpcError(%v)) = %v leaks the internal message", tt.in, out)
		}
	}
	if rpcError(nil) != nil {
		t.Error("rpcError(nil) != nil")
	}
}
