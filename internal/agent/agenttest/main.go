package agenttest

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// Main is a TestMain for packages that run the fake driver: it builds envd
// once into a temporary directory (or takes $WRENN_ENVD_BIN), stores its
// path in *envdBin, runs the tests, fails the run when goroutines leaked,
// and exits. tmpPrefix names the temporary directory.
func Main(m *testing.M, tmpPrefix string, envdBin *string) {
	dir, err := os.MkdirTemp("", tmpPrefix)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	*envdBin, err = BuildEnvd(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines leaked:", err)
			code = 1
		}
	}
	os.RemoveAll(dir)
	os.Exit(code)
}
