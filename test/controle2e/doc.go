// Package controle2e tests the control plane end to end with real VMs: two
// host agents (separate data directories, ports, network slot ranges) boot
// QEMU guests from the minimal image, and a control plane over a real
// PostgreSQL places sandboxes on them, drives them through the REST API,
// notices a lost host, and reconciles what runs with what it recorded.
// It needs root, QEMU and the packages scripts/setup.sh installs.
package controle2e
