//go:build !linux

package firecracker

import (
	"fmt"
	"os/exec"
	"syscall"

	"wrenn.dev/wrenn/internal/vmm"
)

// Firecracker runs on Linux only; elsewhere the driver builds (so packages
// importing it build on a developer's Mac) and every start fails.

type childProcess struct{ cmd *exec.Cmd }

func (p *childProcess) pid() int                    { return p.cmd.Process.Pid }
func (p *childProcess) signal(syscall.Signal) error { return vmm.ErrNotSupported }
func (p *childProcess) wait() error                 { return p.cmd.Wait() }
func (p *childProcess) release()                    {}

type adoptedProcess struct{ childProcess }

func (p *adoptedProcess) alive() bool { return false }

func setSession(*exec.Cmd) {}

func startProcess(*exec.Cmd, string) error {
	return fmt.Errorf("firecracker needs linux: %w", vmm.ErrNotSupported)
}

func adoptProcess(int) (*adoptedProcess, error) {
	return nil, fmt.Errorf("firecracker needs linux: %w", vmm.ErrNotSupported)
}

func readCmdline(int) ([]string, error) {
	return nil, fmt.Errorf("firecracker needs linux: %w", vmm.ErrNotSupported)
}
