package agent

// Log attribute keys.
const (
	logKeySandbox  = "sandbox_id"
	logKeyHost     = "host_id"
	logKeyTemplate = "template"
	logKeyState    = "state"
	logKeyReason   = "reason"
	logKeyErr      = "err"
	logKeyPID      = "pid"
	logKeySlot     = "slot"
	logKeyTook     = "took"
	logKeyCount    = "count"
	logKeyDriver   = "driver"
	logKeyPath     = "path"
	logKeyMethod   = "method"
)
