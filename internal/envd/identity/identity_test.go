package identity

import (
	"encoding/base64"
	"errors"
	"net/http"
	"testing"

	"wrenn.dev/wrenn/internal/errdefs"
)

func TestUsernameFromHeader(t *testing.T) {
	tests := []struct {
		header  string
		want    string
		wantErr bool
	}{
		{"", "", false},
		{"Basic " + base64.StdEncoding.EncodeToString([]byte("user:")), "user", false},
		{"basic " + base64.StdEncoding.EncodeToString([]byte("root:ignored")), "root", false},
		{"Bearer abc", "", true},
		{"Basic !!!", "", true},
		{"Basic", "", true},
	}
	for _, tt := range tests {
		h := http.Header{}
		if tt.header != "" {
			h.Set("Authorization", tt.header)
		}
		got, err := UsernameFromHeader(h)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("UsernameFromHeader(%q) = %q, %v; want %q, err=%v", tt.header, got, err, tt.want, tt.wantErr)
		}
		if err != nil && !errors.Is(err, errdefs.ErrUnauthenticated) {
			t.Errorf("UsernameFromHeader(%q) error %v is not ErrUnauthenticated", tt.header, err)
		}
	}
}

func TestLookup(t *testing.T) {
	r := NewResolver("")
	u, err := r.Lookup("")
	if err != nil {
		t.Fatalf("Lookup(default) error: %v", err)
	}
	if u.Name != "root" || u.UID != 0 || u.GID != 0 || u.Home == "" {
		t.Errorf("Lookup(default) = %+v, want root with uid 0", u)
	}
	if _, err := r.Lookup("no-such-user-wrenn"); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Errorf("Lookup(unknown) error = %v, want ErrUnauthenticated", err)
	}
}

func TestResolvePath(t *testing.T) {
	r := NewResolver("")
	u := &User{Name: "user", Home: "/home/user"}
	tests := []struct {
		in, want string
		wantErr  bool
	}{
		{"", "/home/user", false},
		{"~", "/home/user", false},
		{"~/a/b", "/home/user/a/b", false},
		{"a/../b", "/home/user/b", false},
		{"../../etc/passwd", "/etc/passwd", false},
		{"/tmp//x/", "/tmp/x", false},
		{"~other/x", "", true},
		{"a\x00b", "", true},
	}
	for _, tt := range tests {
		got, err := r.ResolvePath(u, tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ResolvePath(%q) = %q, %v; want %q, err=%v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
	r.SetDefaults("", "/work")
	if got, _ := r.ResolvePath(u, ""); got != "/work" {
		t.Errorf("ResolvePath(\"\") with workdir = %q, want /work", got)
	}
}
