package httpapi_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"

	"wrenn.dev/wrenn/internal/control/auth"
	"wrenn.dev/wrenn/internal/control/controltest"
	"wrenn.dev/wrenn/internal/control/httpapi"
)

// public routes need no credential.
var public = map[string]bool{
	"GET /healthz":        true,
	"POST /v1/auth/login": true,
}

// otherTeam is what team B's member key gets on each authenticated route,
// with team A's resources in the path: 404 where the path names team A's
// resource, 403 where the route needs admin, 200/201/204 where the route
// only ever shows (or makes) the caller's own team's things. Every route the router has must
// be listed: a new route fails this test until it is classified.
var otherTeam = map[string]struct {
	status int
	body   any
}{
	"GET /v1/me":                             {200, nil},
	"POST /v1/sandboxes":                     {201, map[string]string{"template": "minimal"}},
	"GET /v1/sandboxes":                      {200, nil},
	"GET /v1/sandboxes/{id}":                 {404, nil},
	"DELETE /v1/sandboxes/{id}":              {404, nil},
	"POST /v1/sandboxes/{id}/timeout":        {404, map[string]int{"timeout_seconds": 60}},
	"POST /v1/sandboxes/{id}/refresh":        {404, map[string]int{"duration_seconds": 60}},
	"POST /v1/sandboxes/{id}/pause":          {404, nil},
	"POST /v1/sandboxes/{id}/resume":         {404, nil},
	"POST /v1/sandboxes/{id}/exec":           {404, map[string]string{"cmd": "true"}},
	"POST /v1/sandboxes/{id}/exec/stream":    {404, map[string]string{"cmd": "true"}},
	"POST /v1/sandboxes/{id}/files":          {404, nil},
	"GET /v1/sandboxes/{id}/files":           {404, nil},
	"POST /v1/sandboxes/{id}/files/download": {404, map[string]string{"path": "/etc/hostname"}},
	"GET /v1/sandboxes/{id}/files/list":      {404, nil},
	"GET /v1/sandboxes/{id}/metrics":         {404, nil},
	"GET /v1/sandboxes/{id}/pty":             {404, nil},
	"GET /v1/admin/sandboxes/{id}/pty":       {403, nil},
	"GET /v1/templates":                      {200, nil},
	"POST /v1/snapshots":                     {404, map[string]string{"sandbox_id": "{id}", "name": "snap"}},
	"GET /v1/snapshots":                      {200, nil},
	"DELETE /v1/snapshots/{name}":            {404, nil},
	"GET /v1/api-keys":                       {200, nil},
	"POST /v1/api-keys":                      {201, map[string]string{"name": "k"}},
	"DELETE /v1/api-keys/{id}":               {404, nil},
	"GET /v1/users":                          {200, nil},
	"POST /v1/users":                         {403, map[string]string{"email": "z@example.com", "password": "long-enough"}},
	"GET /v1/teams":                          {403, nil},
	"POST /v1/teams":                         {403, map[string]string{"name": "t"}},
	"GET /v1/hosts":                          {403, nil},
	"POST /v1/hosts":                         {403, map[string]string{"address": "http://127.0.0.1:1"}},
	"DELETE /v1/hosts/{id}":                  {403, nil},
}

var wsRoutes = map[string]bool{
	"GET /v1/sandboxes/{id}/pty":       true,
	"GET /v1/admin/sandboxes/{id}/pty": true,
}

// TestAuthMatrix tries every route with every way of not being allowed.
func TestAuthMatrix(t *testing.T) {
	p, _ := platform(t)
	sb := create(t, p, p.A.MemberKey, map[string]any{"template": "minimal"})
	var keys struct {
		APIKeys []struct{ ID string } `json:"api_keys"`
	}
	p.Do(t, "GET", "/v1/api-keys", p.A.MemberKey, nil).JSON(t, &keys)

	signer, err := auth.NewSigner([]byte(controltest.SessionKey))
	if err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-2 * time.Hour)
	expired, err := signer.Sign(auth.Claims{Subject: "u", Team: p.A.ID, Role: "admin", IssuedAt: past, ExpiresAt: past.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	other, _ := auth.NewSigner([]byte("a-different-session-key-0123456789abcdef"))
	forged, err := other.Sign(auth.Claims{Subject: "u", Team: p.A.ID, Role: "admin", ExpiresAt: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}

	router := httpapi.New(p.Svc, httpapi.Options{}).(chi.Routes)
	var routes []string
	if err := chi.Walk(router, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		routes = append(routes, method+" "+route)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	fill := strings.NewReplacer()
	for _, route := range routes {
		if public[route] {
			continue
		}
		want, ok := otherTeam[route]
		body := want.body
		if m, isMap := body.(map[string]string); isMap && m["sandbox_id"] == "{id}" {
			body = map[string]string{"sandbox_id": sb.ID, "name": m["name"]}
		}
		if !ok {
			t.Errorf("route %s is not in the auth matrix: classify it", route)
			continue
		}
		method, pattern, _ := strings.Cut(route, " ")
		fill = strings.NewReplacer("{id}", sb.ID, "{name}", "a-template")
		switch {
		case strings.HasPrefix(pattern, "/v1/api-keys/"):
			fill = strings.NewReplacer("{id}", keys.APIKeys[0].ID)
		case strings.HasPrefix(pattern, "/v1/hosts/"):
			fill = strings.NewReplacer("{id}", "host-1")
		}
		path := fill.Replace(pattern)
		query := "?"
		if strings.Contains(pattern, "/files") && !strings.HasSuffix(pattern, "/download") {
			query = "?path=/etc/hostname&"
		}
		ws := wsRoutes[route]

		denied := []struct {
			name string
			h    http.Header
			q    string
		}{
			{"no credential", http.Header{}, ""},
			{"unknown key", http.Header{"X-Api-Key": {"wrn_" + strings.Repeat("0", 40)}}, ""},
			{"malformed key", http.Header{"X-Api-Key": {"hunter2"}}, ""},
			{"expired JWT", http.Header{"Authorization": {"Bearer " + expired}}, ""},
			{"forged JWT", http.Header{"Authorization": {"Bearer " + forged}}, ""},
			{"not a bearer", http.Header{"Authorization": {"Basic " + b64("a:b")}}, ""},
			{"spoofed Upgrade", http.Header{"Upgrade": {"websocket"}, "Connection": {"Upgrade"}}, ""},
			{"spoofed Upgrade with a bad token", http.Header{"Upgrade": {"websocket"}, "Connection": {"Upgrade"}}, "token=wrn_" + strings.Repeat("0", 40)},
		}
		if !ws {
			denied = append(denied,
				struct {
					name string
					h    http.Header
					q    string
				}{"?token= on a REST route", http.Header{}, "token=" + p.A.AdminKey},
				struct {
					name string
					h    http.Header
					q    string
				}{"?token= and a spoofed Upgrade on a REST route", http.Header{"Upgrade": {"websocket"}, "Connection": {"Upgrade"}}, "token=" + p.A.AdminKey},
			)
		}
		for _, d := range denied {
			r := p.DoHeader(t, method, path+query+d.q, d.h, nil)
			if r.Status != http.StatusUnauthorized {
				t.Errorf("%s %s with %s = %d %s, want 401", method, path, d.name, r.Status, r.Body)
			}
		}
		// Another team's (member) key: never team A's data.
		h := http.Header{"X-Api-Key": {p.B.MemberKey}}
		if ws {
			h.Set("Upgrade", "websocket")
			h.Set("Connection", "Upgrade")
		}
		r := p.DoHeader(t, method, path+query, h, body)
		leaks := strings.Contains(string(r.Body), p.A.ID) || (r.Status < 300 && strings.Contains(string(r.Body), sb.ID))
		if r.Status != want.status || leaks {
			t.Errorf("%s %s with team B's key = %d %s, want %d without team A's data", method, path, r.Status, r.Body, want.status)
		}
		if ws {
			// ?token= is how browsers authenticate here: accepted (the
			// request then fails as a WebSocket handshake, not as auth).
			r := p.DoHeader(t, method, path+"?token="+p.A.AdminKey, http.Header{}, nil)
			if r.Status == http.StatusUnauthorized || r.Status == http.StatusForbidden {
				t.Errorf("%s %s?token=<team A admin key> = %d %s, want accepted", method, path, r.Status, r.Body)
			}
		}
	}
	for route := range otherTeam {
		found := false
		for _, r := range routes {
			found = found || r == route
		}
		if !found {
			t.Errorf("the matrix lists %s, which the router does not have", route)
		}
	}
	// The sandbox survived all of that.
	var got sandboxJSON
	p.Do(t, "GET", "/v1/sandboxes/"+sb.ID, p.A.MemberKey, nil).JSON(t, &got)
	if got.State != "running" {
		t.Errorf("after the matrix the sandbox is %+v", got)
	}
}
