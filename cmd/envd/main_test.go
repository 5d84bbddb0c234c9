package main

import "testing"

func TestHostModeNeverForwardsPorts(t *testing.T) {
	tests := []struct {
		args    []string
		forward bool
	}{
		{nil, true},
		{[]string{"-no-port-forward"}, false},
		{[]string{"-isnotfc"}, false},
	}
	for _, tt := range tests {
		cfg, _, err := parseFlags(tt.args)
		if err != nil {
			t.Fatalf("parseFlags(%q): %v", tt.args, err)
		}
		if cfg.PortForward != tt.forward {
			t.Errorf("parseFlags(%q).PortForward = %v, want %v", tt.args, cfg.PortForward, tt.forward)
		}
	}
	if _, _, err := parseFlags([]string{"-port", "70000"}); err == nil {
		t.Errorf("parseFlags(-port 70000) accepted an out-of-range port")
	}
}
