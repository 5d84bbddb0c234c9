// Package firecracker is Wrenn's Firecracker driver: a vmm.Driver that runs
// each VM as a firecracker process (optionally through the jailer) and
// drives it with Client, a small typed client for Firecracker's HTTP API on
// its Unix socket.
//
// Boot starts the process on a background context in its own session (and,
// when the spec has one, inside the VM's network namespace), waits for the
// API socket, configures machine, kernel, root drive, network interface,
// MMDS (V2, with Spec.Metadata) and an entropy device, then InstanceStart.
// Restore loads a snapshot into a fresh process (memory from the file, or
// from a userfaultfd page server when Config.UFFDSocket names one),
// re-sends the MMDS data, which snapshots do not keep, and resumes.
// Reattach adopts a process left by an earlier agent after checking, via a
// pidfd and /proc/<pid>/cmdline, that it is the firecracker of that spec.
//
// Paths Firecracker keeps in a snapshot are relative to its working
// directory (Spec.Dir, or the jail's root): the root drive is always
// "fc-rootfs", linked to Spec.RootFS. A snapshot therefore restores into
// another Spec.Dir with another root disk without renaming anything.
//
// Files the driver keeps in Spec.Dir: firecracker.sock (the API socket,
// removed when the process is gone), firecracker.log (the process's
// output), firecracker.pid, and the fc-* links. A snapshot directory holds
// state, memory and firecracker.json.
package firecracker
