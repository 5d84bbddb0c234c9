package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencyBudget keeps envd small and free of server code: it must
// not link the control plane, the host agent, databases, routers or cgo.
func TestDependencyBudget(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}} {{.CgoFiles}}", ".")
	cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	banned := []string{
		"github.com/jackc/",
		"github.com/go-chi/",
		"github.com/pressly/goose",
		"github.com/coder/websocket",
		"github.com/gorilla/",
		"wrenn.dev/wrenn/internal/control",
		"wrenn.dev/wrenn/internal/agent",
		"wrenn.dev/wrenn/internal/vmm",
		"wrenn.dev/wrenn/internal/hostnet",
		"wrenn.dev/wrenn/internal/snapshot",
		"wrenn.dev/wrenn/internal/image",
		"wrenn.dev/wrenn/internal/cli",
		"wrenn.dev/wrenn/internal/gen/hostagent",
		"database/sql",
	}
	allowedThirdParty := []string{
		"connectrpc.com/connect",
		"google.golang.org/protobuf",
		"golang.org/x/sys",
		"golang.org/x/net",
		"golang.org/x/text",
		"github.com/creack/pty",
		"github.com/fsnotify/fsnotify",
		"wrenn.dev/wrenn/",
	}
	var n int
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, _, _ := strings.Cut(line, " ")
		n++
		for _, b := range banned {
			if strings.HasPrefix(pkg, b) {
				t.Errorf("envd links %s (banned prefix %s)", pkg, b)
			}
		}
		first, _, _ := strings.Cut(pkg, "/")
		if !strings.Contains(first, ".") {
			continue // standard library
		}
		ok := false
		for _, a := range allowedThirdParty {
			if strings.HasPrefix(pkg, a) {
				ok = true
				break
			}
		}
		if !ok {
			t.Errorf("envd links %s, which is not in its dependency budget; add it here only after review", pkg)
		}
	}
	if n < 10 {
		t.Fatalf("go list -deps listed only %d packages; the check is not seeing envd", n)
	}
}
