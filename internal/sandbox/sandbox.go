// Package sandbox holds the host agent's domain types: a Sandbox, its
// lifecycle State, and the Events that move it from state to state.
//
// The lifecycle is a pure state machine ([Transition]); it does no I/O and
// knows nothing of VMs, networks or files. Whoever drives a sandbox (the
// agent's manager) applies an event once the thing it names has happened,
// and persists the result. The whole machine:
//
//	from        event         to
//	Starting    Started       Running
//	Running     Pause         Pausing
//	Pausing     Paused        Paused
//	Pausing     PauseFailed   Running
//	Paused      Resume        Resuming
//	Resuming    Resumed       Running
//	Resuming    ResumeFailed  Paused
//	live        Stop          Stopping   (destroy or timeout: asked for)
//	Stopping    Stopped       Stopped
//	live        Died          Dead       (the VM exited: not asked for)
//
// where live is Starting, Running, Pausing, Paused or Resuming: a sandbox
// that is already stopping is not stopped again, and its VM exiting then
// is expected, not a death.
//
// Stopped and Dead are terminal: the sandbox holds no resources any more
// and its record is kept only so callers can see what became of it.
package sandbox

import (
	"fmt"
	"maps"
	"regexp"
	"time"

	"wrenn.dev/wrenn/internal/errdefs"
)

// State is where a sandbox is in its lifecycle.
type State int

// The states. Their numbers equal the host agent protocol's SandboxState
// values, but conversions never rely on that.
const (
	StateUnknown State = iota
	// StateStarting: resources are being set up and the VM booted; envd
	// has not answered yet.
	StateStarting
	// StateRunning: envd answers; commands, files and terminals work.
	StateRunning
	// StatePausing: the VM's vCPUs are being stopped.
	StatePausing
	// StatePaused: the vCPUs are stopped; the VM keeps its memory.
	StatePaused
	// StateResuming: the vCPUs are being restarted.
	StateResuming
	// StateStopping: the VM is being shut down and resources released.
	StateStopping
	// StateStopped: destroyed on request (or on timeout). Terminal.
	StateStopped
	// StateDead: the VM exited without being asked to. Terminal.
	StateDead
)

var stateNames = [...]string{
	StateUnknown:  "unknown",
	StateStarting: "starting",
	StateRunning:  "running",
	StatePausing:  "pausing",
	StatePaused:   "paused",
	StateResuming: "resuming",
	StateStopping: "stopping",
	StateStopped:  "stopped",
	StateDead:     "dead",
}

func (s State) String() string {
	if s >= 0 && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// MarshalText writes the state's name, so persisted records stay readable
// and do not depend on the numbering.
func (s State) MarshalText() ([]byte, error) {
	if s < 0 || int(s) >= len(stateNames) {
		return nil, fmt.Errorf("sandbox state %d has no name", int(s))
	}
	return []byte(stateNames[s]), nil
}

// UnmarshalText reads a state's name.
func (s *State) UnmarshalText(b []byte) error {
	for i, n := range stateNames {
		if n == string(b) {
			*s = State(i)
			return nil
		}
	}
	return fmt.Errorf("unknown sandbox state %q", b)
}

// Terminal reports whether the state is Stopped or Dead: the sandbox holds
// nothing any more.
func (s State) Terminal() bool { return s == StateStopped || s == StateDead }

// Live reports whether a sandbox in this state holds host resources (and
// counts against the host's capacity): every known state but the terminal
// ones.
func (s State) Live() bool { return s != StateUnknown && !s.Terminal() }

// Event is something that happened to a sandbox.
type Event int

// The events.
const (
	// EventStarted: envd answered after boot.
	EventStarted Event = iota + 1
	// EventPause: a pause was asked for and begins.
	EventPause
	// EventPaused: the vCPUs are stopped.
	EventPaused
	// EventPauseFailed: the pause did not happen; the VM still runs.
	EventPauseFailed
	// EventResume: a resume was asked for and begins.
	EventResume
	// EventResumed: the vCPUs run again.
	EventResumed
	// EventResumeFailed: the resume did not happen; the VM is still paused.
	EventResumeFailed
	// EventStop: a stop (destroy or timeout) begins.
	EventStop
	// EventStopped: the VM is gone and everything it had is released.
	EventStopped
	// EventDied: the VM exited without being asked to.
	EventDied
)

var eventNames = map[Event]string{
	EventStarted:      "started",
	EventPause:        "pause",
	EventPaused:       "paused",
	EventPauseFailed:  "pause-failed",
	EventResume:       "resume",
	EventResumed:      "resumed",
	EventResumeFailed: "resume-failed",
	EventStop:         "stop",
	EventStopped:      "stopped",
	EventDied:         "died",
}

func (e Event) String() string {
	if n, ok := eventNames[e]; ok {
		return n
	}
	return fmt.Sprintf("event(%d)", int(e))
}

// transitions is the whole state machine: for each event, the state it
// moves each accepting state to.
var transitions = map[Event]map[State]State{
	EventStarted:      {StateStarting: StateRunning},
	EventPause:        {StateRunning: StatePausing},
	EventPaused:       {StatePausing: StatePaused},
	EventPauseFailed:  {StatePausing: StateRunning},
	EventResume:       {StatePaused: StateResuming},
	EventResumed:      {StateResuming: StateRunning},
	EventResumeFailed: {StateResuming: StatePaused},
	EventStop:         liveTo(StateStopping),
	EventStopped:      {StateStopping: StateStopped},
	EventDied:         liveTo(StateDead),
}

// liveTo maps every live state except Stopping to to: a sandbox that is
// already stopping is not stopped again, and its VM exiting is expected.
func liveTo(to State) map[State]State {
	m := map[State]State{}
	for _, s := range []State{StateStarting, StateRunning, StatePausing, StatePaused, StateResuming} {
		m[s] = to
	}
	return m
}

// ErrInvalidTransition is the class-carrying cause of every refused
// transition; it is of class errdefs.ErrFailedPrecondition.
var ErrInvalidTransition = fmt.Errorf("invalid sandbox state transition: %w", errdefs.ErrFailedPrecondition)

// Transition returns the state an event moves from to, or an error
// wrapping ErrInvalidTransition when the event cannot happen in from.
func Transition(from State, e Event) (State, error) {
	to, ok := transitions[e][from]
	if !ok {
		return from, fmt.Errorf("%w: %s cannot happen to a %s sandbox", ErrInvalidTransition, e, from)
	}
	return to, nil
}

// Metrics is a sample of a sandbox's resource use, as envd reports it.
type Metrics struct {
	// Sampled is when the agent took the sample.
	Sampled     time.Time
	CPUCount    int
	CPUUsedPct  float64
	MemTotalMiB uint64
	MemUsedMiB  uint64
	DiskUsed    uint64
	DiskTotal   uint64
}

// Sandbox is one sandbox as the host agent knows it.
type Sandbox struct {
	ID string `json:"id"`
	// Template is the image or template it was made from.
	Template  string `json:"template"`
	State     State  `json:"state"`
	VCPUs     int    `json:"vcpus"`
	MemoryMiB int    `json:"memory_mib"`
	// CreatedAt is when creation began; ExpiresAt when the agent destroys
	// it (zero until it runs); EndedAt when it became Stopped or Dead.
	CreatedAt time.Time         `json:"created_at"`
	ExpiresAt time.Time         `json:"expires_at,omitzero"`
	EndedAt   time.Time         `json:"ended_at,omitzero"`
	Metadata  map[string]string `json:"metadata,omitempty"`
	// Egress tells whether the sandbox may reach the internet.
	Egress bool `json:"egress"`
	// HostIP is where the host reaches the sandbox; EnvdURL is envd's base
	// URL from the host and EnvdAccessToken its access token.
	HostIP          string `json:"host_ip,omitempty"`
	EnvdURL         string `json:"envd_url,omitempty"`
	EnvdAccessToken string `json:"envd_access_token,omitempty"`
	// Reason says why the sandbox is Stopped or Dead.
	Reason string `json:"reason,omitempty"`
	// Driver is the VMM driver running it.
	Driver string `json:"driver,omitempty"`
	// Metrics is the latest sample, nil when there is none. Not persisted.
	Metrics *Metrics `json:"-"`
}

// Apply moves the sandbox through event e at time now. Entering a terminal
// state records now as EndedAt and reason as Reason. It returns an error
// wrapping ErrInvalidTransition, and changes nothing, when e cannot happen
// in the current state.
func (s *Sandbox) Apply(e Event, now time.Time, reason string) error {
	to, err := Transition(s.State, e)
	if err != nil {
		return fmt.Errorf("sandbox %s: %w", s.ID, err)
	}
	s.State = to
	if to.Terminal() {
		s.EndedAt = now
		s.Reason = reason
		s.Metrics = nil
	}
	return nil
}

// Expired reports whether a live sandbox's expiry has come at now.
func (s *Sandbox) Expired(now time.Time) bool {
	return s.State.Live() && !s.ExpiresAt.IsZero() && !now.Before(s.ExpiresAt)
}

// Clone returns a deep copy.
func (s *Sandbox) Clone() *Sandbox {
	c := *s
	c.Metadata = maps.Clone(s.Metadata)
	if s.Metrics != nil {
		m := *s.Metrics
		c.Metrics = &m
	}
	return &c
}

// MaxIDLength bounds sandbox ids. They name files, VMs and log lines, and
// end up in Unix socket paths (at most 107 bytes) under the agent's data
// directory.
const MaxIDLength = 48

var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9-]*$`)

// ValidateID checks that id can name a sandbox: 1 to MaxIDLength ASCII
// letters, digits and hyphens, starting with a letter or digit. The error
// is of class errdefs.ErrInvalidArgument.
func ValidateID(id string) error {
	if len(id) == 0 || len(id) > MaxIDLength || !idPattern.MatchString(id) {
		return errdefs.InvalidArgument("sandbox id %q is invalid: use 1 to %d letters, digits and hyphens, starting with a letter or digit", id, MaxIDLength)
	}
	return nil
}
