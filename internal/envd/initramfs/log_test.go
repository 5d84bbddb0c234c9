package initramfs

import (
	"log/slog"
	"testing"

	"wrenn.dev/wrenn/internal/testlog"
)

func testLogger(t *testing.T) *slog.Logger { return testlog.New(t) }
