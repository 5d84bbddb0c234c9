package firecracker

// Log attribute keys. Constant so that log queries keep working.
const (
	logKeyDriver  = "driver"
	logKeyVM      = "vm_id"
	logKeyPID     = "pid"
	logKeySocket  = "api_socket"
	logKeyErr     = "err"
	logKeyTook    = "took"
	logKeyState   = "state"
	logKeySignal  = "signal"
	logKeyDir     = "dir"
	logKeyBackend = "memory_backend"
	logKeyJailed  = "jailed"
	logKeyCause   = "cause"
)
