package sandbox

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"wrenn.dev/wrenn/internal/errdefs"
)

var allStates = []State{
	StateUnknown, StateStarting, StateRunning, StatePausing, StatePaused,
	StateResuming, StateStopping, StateStopped, StateDead,
}

var allEvents = []Event{
	EventStarted, EventPause, EventPaused, EventPauseFailed, EventResume,
	EventResumed, EventResumeFailed, EventStop, EventStopped, EventDied,
}

// TestTransition checks every (state, event) pair against the table in the
// package documentation: the allowed ones move where it says, every other
// one is refused with ErrInvalidTransition (class FailedPrecondition).
func TestTransition(t *testing.T) {
	allowed := map[State]map[Event]State{
		StateStarting: {EventStarted: StateRunning, EventStop: StateStopping, EventDied: StateDead},
		StateRunning:  {EventPause: StatePausing, EventStop: StateStopping, EventDied: StateDead},
		StatePausing:  {EventPaused: StatePaused, EventPauseFailed: StateRunning, EventStop: StateStopping, EventDied: StateDead},
		StatePaused:   {EventResume: StateResuming, EventStop: StateStopping, EventDied: StateDead},
		StateResuming: {EventResumed: StateRunning, EventResumeFailed: StatePaused, EventStop: StateStopping, EventDied: StateDead},
		StateStopping: {EventStopped: StateStopped},
	}
	for _, from := range allStates {
		for _, e := range allEvents {
			got, err := Transition(from, e)
			want, ok := allowed[from][e]
			switch {
			case ok && err != nil:
				t.Errorf("Transition(%s, %s) = error %v, want %s", from, e, err, want)
			case ok && got != want:
				t.Errorf("Transition(%s, %s) = %s, want %s", from, e, got, want)
			case !ok && err == nil:
				t.Errorf("Transition(%s, %s) = %s, want an error", from, e, got)
			case !ok && (!errors.Is(err, ErrInvalidTransition) || !errors.Is(err, errdefs.ErrFailedPrecondition)):
				t.Errorf("Transition(%s, %s) error %v is not ErrInvalidTransition of class FailedPrecondition", from, e, err)
			case !ok && got != from:
				t.Errorf("Transition(%s, %s) refused but returned %s, want the unchanged %s", from, e, got, from)
			}
		}
	}
}

func TestStateClasses(t *testing.T) {
	tests := []struct {
		s              State
		live, terminal bool
	}{
		{StateUnknown, false, false},
		{StateStarting, true, false},
		{StateRunning, true, false},
		{StatePausing, true, false},
		{StatePaused, true, false},
		{StateResuming, true, false},
		{StateStopping, true, false},
		{StateStopped, false, true},
		{StateDead, false, true},
	}
	for _, tt := range tests {
		if got := tt.s.Live(); got != tt.live {
			t.Errorf("%s.Live() = %v, want %v", tt.s, got, tt.live)
		}
		if got := tt.s.Terminal(); got != tt.terminal {
			t.Errorf("%s.Terminal() = %v, want %v", tt.s, got, tt.terminal)
		}
	}
}

func TestStateText(t *testing.T) {
	for _, s := range allStates {
		b, err := s.MarshalText()
		if err != nil {
			t.Fatalf("%d.MarshalText() = %v", int(s), err)
		}
		var back State
		if err := back.UnmarshalText(b); err != nil || back != s {
			t.Errorf("UnmarshalText(%q) = %s, %v; want %s", b, back, err, s)
		}
	}
	var s State
	if err := s.UnmarshalText([]byte("sleepy")); err == nil {
		t.Errorf(`UnmarshalText("sleepy") = nil error, want one`)
	}
	if _, err := State(42).MarshalText(); err == nil {
		t.Errorf("State(42).MarshalText() = nil error, want one")
	}
}

func TestApply(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	sb := &Sandbox{ID: "sb1", State: StateStarting, Metrics: &Metrics{CPUCount: 1}}
	steps := []struct {
		e    Event
		want State
	}{
		{EventStarted, StateRunning},
		{EventPause, StatePausing},
		{EventPaused, StatePaused},
		{EventResume, StateResuming},
		{EventResumed, StateRunning},
	}
	for _, st := range steps {
		if err := sb.Apply(st.e, now, ""); err != nil || sb.State != st.want {
			t.Fatalf("Apply(%s) = %v, state %s; want nil, %s", st.e, err, sb.State, st.want)
		}
		if !sb.EndedAt.IsZero() {
			t.Fatalf("Apply(%s) set EndedAt on a live sandbox", st.e)
		}
	}
	if err := sb.Apply(EventStopped, now, "x"); err == nil || !strings.Contains(err.Error(), "sb1") {
		t.Fatalf("Apply(stopped) on a running sandbox = %v, want an error naming the sandbox", err)
	}
	if sb.State != StateRunning {
		t.Fatalf("a refused Apply changed the state to %s", sb.State)
	}
	if err := sb.Apply(EventDied, now, "vm killed"); err != nil {
		t.Fatalf("Apply(died) = %v", err)
	}
	if sb.State != StateDead || sb.Reason != "vm killed" || !sb.EndedAt.Equal(now) || sb.Metrics != nil {
		t.Fatalf("after Apply(died): %+v; want dead, reason, EndedAt set, no metrics", sb)
	}
}

func TestExpired(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name  string
		sb    Sandbox
		now   time.Time
		check bool
	}{
		{"running before expiry", Sandbox{State: StateRunning, ExpiresAt: t0}, t0.Add(-time.Nanosecond), false},
		{"running at expiry", Sandbox{State: StateRunning, ExpiresAt: t0}, t0, true},
		{"paused after expiry", Sandbox{State: StatePaused, ExpiresAt: t0}, t0.Add(time.Hour), true},
		{"no expiry", Sandbox{State: StateRunning}, t0, false},
		{"stopped after expiry", Sandbox{State: StateStopped, ExpiresAt: t0}, t0.Add(time.Hour), false},
		{"dead after expiry", Sandbox{State: StateDead, ExpiresAt: t0}, t0.Add(time.Hour), false},
	}
	for _, tt := range tests {
		if got := tt.sb.Expired(tt.now); got != tt.check {
			t.Errorf("%s: Expired(%s) = %v, want %v", tt.name, tt.now, got, tt.check)
		}
	}
}

func TestClone(t *testing.T) {
	sb := &Sandbox{ID: "a", Metadata: map[string]string{"k": "v"}, Metrics: &Metrics{CPUCount: 2}}
	c := sb.Clone()
	c.Metadata["k"] = "changed"
	c.Metrics.CPUCount = 9
	if sb.Metadata["k"] != "v" || sb.Metrics.CPUCount != 2 {
		t.Fatalf("Clone shares state with the original: %+v", sb)
	}
}

func TestValidateID(t *testing.T) {
	tests := []struct {
		id string
		ok bool
	}{
		{"a", true},
		{"sb-0123abc", true},
		{"ABC-def-9", true},
		{strings.Repeat("x", MaxIDLength), true},
		{"", false},
		{strings.Repeat("x", MaxIDLength+1), false},
		{"-lead", false},
		{"has space", false},
		{"dot.dot", false},
		{"../etc", false},
		{"slash/x", false},
		{"ünï", false},
	}
	for _, tt := range tests {
		err := ValidateID(tt.id)
		if (err == nil) != tt.ok {
			t.Errorf("ValidateID(%q) = %v, want ok=%v", tt.id, err, tt.ok)
		}
		if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ValidateID(%q) error %v is not InvalidArgument", tt.id, err)
		}
	}
}

func TestSandboxJSON(t *testing.T) {
	sb := Sandbox{ID: "a", State: StatePaused, CreatedAt: time.Unix(10, 0).UTC(), Metrics: &Metrics{CPUCount: 1}}
	b, err := json.Marshal(sb)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"state":"paused"`) || strings.Contains(string(b), "Metrics") || strings.Contains(string(b), "expires_at") {
		t.Fatalf("json.Marshal = %s; want the state by name, no metrics, no zero expiry", b)
	}
	var back Sandbox
	if err := json.Unmarshal(b, &back); err != nil || back.State != StatePaused || !back.CreatedAt.Equal(sb.CreatedAt) {
		t.Fatalf("json.Unmarshal(%s) = %+v, %v", b, back, err)
	}
}
