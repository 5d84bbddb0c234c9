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
	os.Exit(Wrap(tmpPrefix, envdBin, m.Run))
}

// Wrap is Main for a TestMain that also needs other setup around the
// tests: run is m.Run or a function calling it; Wrap returns the status to
// exit with.
func Wrap(tmpPrefix string, envdBin *string, run func() int) int {
	dir, err := os.MkdirTemp("", tmpPrefix)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	*envdBin, err = BuildEnvd(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines leaked:", err)
			code = 1
		}
	}
	return code
}
