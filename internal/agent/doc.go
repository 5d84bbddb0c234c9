// Package agent is the host agent's sandbox manager: it turns "a sandbox
// from template T with N vCPUs" into a running VM with its own root disk
// clone and network slot, talks to envd inside it, and takes it all down
// again.
//
// A [Manager] owns every sandbox on the host. For each one it
//   - persists a record (DataDir/state/<id>.json, replaced atomically)
//     before it creates anything, and after every change, so that a
//     restarted agent finds every VM, slot and file a sandbox had;
//   - clones the template's root disk (package storage/cow) into
//     DataDir/sandboxes/<id>/, acquires a network slot (package hostnet)
//     and boots the VM with the configured vmm.Driver, on no context of
//     the request's: the VM outlives the call that made it;
//   - waits for envd at the slot's host IP, then POSTs /init with a fresh
//     random access token, the request's env vars and the wall clock;
//   - watches the VM process: when it exits without being asked to, the
//     sandbox becomes Dead (with the exit as its reason) and everything it
//     had is released;
//   - samples envd's /metrics while the sandbox runs; the sampler is
//     stopped whenever the sandbox stops running (pause, destroy, death);
//   - destroys it when its timeout passes (the reaper).
//
// Lifecycle operations on one sandbox are serialised; they never hold the
// manager-wide lock while doing I/O. Every failure path of Create releases
// what was made (VM, slot, files, record) before returning.
//
// Restart: Start reloads the records. A sandbox whose VM still runs is
// adopted (Network.Adopt, then Driver.Reattach) and carries on; one whose
// VM is gone becomes Dead and its files are removed; every slot nobody
// adopted is then reclaimed (Network.ReclaimLeftovers). Stop ends the
// manager's goroutines but leaves the VMs running for the next agent;
// DestroyAll destroys them.
//
// Stopped and Dead sandboxes stay visible as tombstones for
// Config.TombstoneLifetime, so callers can see what became of them.
//
// The API: New, then Start; Create, Get, List, WaitFor, Destroy,
// SetTimeout, Pause and Resume (vCPU pause; not on the wire yet); Exec,
// WriteFile, ReadFile and OpenPTY talk to envd; HostInfo; Reap runs one
// reaper pass; Stop, or DestroyAll then Stop. Errors are classified with
// package errdefs; package agentapi maps them to Connect codes.
//
// Consumer-side interfaces: [ImageSource] (templates), [Network] (network
// slots; *hostnet.Manager implements it). The VM driver is the vmm.Driver
// plugin contract. Package agenttest has stand-ins for all three that run
// a real envd process on the host instead of a VM.
package agent
