// Package process implements envd's process.Process Connect service: it
// starts commands inside the sandbox (optionally in a PTY) as the request's
// user, streams their output to any number of subscribers, takes input, and
// delivers signals and PTY resizes.
//
// The service is wire-compatible with E2B's envd, so the stock e2b SDKs can
// drive it. The contract, in short:
//
//   - Start and Connect stream a start event, then data and keepalive
//     events, then exactly one end event. Everything a subscriber was sent
//     arrives before its end event.
//   - The deadline of the Start call (the Connect-Timeout-Ms header) bounds
//     the process's lifetime; a client that merely disconnects does not kill
//     the process.
//   - Each subscriber has a bounded queue. A subscriber that falls too far
//     behind loses its stream with an explicit ResourceExhausted error; it
//     never blocks the process, other subscribers or cleanup.
//   - An exited process's end event stays available to Connect for
//     [Config.ExitRetention].
//
// Only Linux is supported.
package process
