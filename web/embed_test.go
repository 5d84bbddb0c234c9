package web

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/fstest"
)

// fakeDist is a build as Vite and scripts/finish-build.mjs lay it out.
func fakeDist() fstest.MapFS {
	return fstest.MapFS{
		".gitkeep":                                {Data: nil},
		"index.html":                              {Data: []byte("<!doctype html><title>app</title>")},
		"assets/index-Ab12Cd34.js":                {Data: []byte("console.log(1)")},
		"assets/index-Ef56Gh78.css":               {Data: []byte("body{}")},
		"favicon.svg":                             {Data: []byte("<svg/>")},
		"swagger/index.html":                      {Data: []byte("<!doctype html><title>docs</title>")},
		"swagger/swagger-ui.css":                  {Data: []byte(".swagger{}")},
		"swagger/swagger-ui-bundle.js":            {Data: []byte("var SwaggerUIBundle")},
		"swagger/swagger-ui-standalone-preset.js": {Data: []byte("var preset")},
	}
}

func get(t *testing.T, h http.Handler, method, target string, hdr ...string) *http.Response {
	t.Helper()
	req := httptest.NewRequest(method, target, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Result()
}

func body(t *testing.T, res *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestAppServesFilesAndFallsBackToIndex(t *testing.T) {
	h := newAppHandler(fakeDist())
	cases := []struct {
		target, wantBody, wantCache, wantType string
		wantStatus                            int
	}{
		{"/", "<title>app</title>", cacheRevalidate, "text/html", 200},
		{"/index.html", "<title>app</title>", cacheRevalidate, "text/html", 200},
		{"/sandboxes", "<title>app</title>", cacheRevalidate, "text/html", 200},
		{"/sandboxes/sb-1?tab=terminal", "<title>app</title>", cacheRevalidate, "text/html", 200},
		{"/keys/", "<title>app</title>", cacheRevalidate, "text/html", 200},
		{"/../../etc/passwd", "<title>app</title>", cacheRevalidate, "text/html", 200},
		{"/assets/index-Ab12Cd34.js", "console.log(1)", cacheImmutable, "javascript", 200},
		{"/assets/index-Ef56Gh78.css", "body{}", cacheImmutable, "text/css", 200},
		{"/favicon.svg", "<svg/>", cacheRevalidate, "image/svg+xml", 200},
		{"/assets/index-gone.js", "", "", "", 404},
		{"/assets", "", "", "", 404},
	}
	for _, c := range cases {
		res := get(t, h, http.MethodGet, c.target)
		b := body(t, res)
		if res.StatusCode != c.wantStatus {
			t.Errorf("GET %s: status %d, want %d", c.target, res.StatusCode, c.wantStatus)
			continue
		}
		if c.wantStatus != 200 {
			continue
		}
		if !strings.Contains(b, c.wantBody) {
			t.Errorf("GET %s: body %q, want it to contain %q", c.target, b, c.wantBody)
		}
		if got := res.Header.Get("Cache-Control"); got != c.wantCache {
			t.Errorf("GET %s: Cache-Control %q, want %q", c.target, got, c.wantCache)
		}
		if got := res.Header.Get("Content-Type"); !strings.Contains(got, c.wantType) {
			t.Errorf("GET %s: Content-Type %q, want %q", c.target, got, c.wantType)
		}
	}
}

func TestAppRevalidatesWithETag(t *testing.T) {
	h := newAppHandler(fakeDist())
	first := get(t, h, http.MethodGet, "/sandboxes")
	etag := first.Header.Get("ETag")
	if etag == "" {
		t.Fatal("index.html has no ETag")
	}
	again := get(t, h, http.MethodGet, "/templates", "If-None-Match", etag)
	if again.StatusCode != http.StatusNotModified {
		t.Fatalf("revalidation answered %d, want 304", again.StatusCode)
	}
}

func TestAppMethodsAndHiddenFiles(t *testing.T) {
	h := newAppHandler(fakeDist())
	if res := get(t, h, http.MethodHead, "/"); res.StatusCode != 200 || body(t, res) != "" {
		t.Errorf("HEAD /: status %d", res.StatusCode)
	}
	if res := get(t, h, http.MethodPost, "/"); res.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /: status %d, want 405", res.StatusCode)
	}
	// .gitkeep only keeps the directory in git; it is not served.
	if res := get(t, h, http.MethodGet, "/.gitkeep"); !strings.Contains(body(t, res), "<title>app</title>") {
		t.Errorf("GET /.gitkeep did not fall back to the app")
	}
}

func TestNotBuilt(t *testing.T) {
	empty := fstest.MapFS{".gitkeep": {Data: nil}}
	for name, h := range map[string]http.Handler{
		"app":  newAppHandler(empty),
		"docs": newDocsHandler(empty),
		// An app build without Swagger UI still leaves /docs unavailable.
		"docs without swagger": newDocsHandler(fstest.MapFS{"index.html": {Data: []byte("x")}}),
	} {
		for _, target := range []string{"/", "/docs/", "/sandboxes/sb-1"} {
			res := get(t, h, http.MethodGet, target)
			b := body(t, res)
			if res.StatusCode != http.StatusServiceUnavailable {
				t.Errorf("%s GET %s: status %d, want 503", name, target, res.StatusCode)
			}
			if !strings.Contains(b, "the dashboard is not built: run `make web`") {
				t.Errorf("%s GET %s: body %q", name, target, b)
			}
			if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
				t.Errorf("%s GET %s: Content-Type %q", name, target, ct)
			}
		}
	}
}

func TestDocsUnderPrefix(t *testing.T) {
	h := newDocsHandler(fakeDist())
	mux := http.NewServeMux()
	mux.Handle("/docs", h)
	mux.Handle("/docs/", h)
	stripped := http.StripPrefix("/docs", h)
	for _, hh := range []struct {
		name string
		h    http.Handler
	}{{"mounted", mux}, {"stripped", stripped}} {
		for target, want := range map[string]string{
			"/docs":                                 "<title>docs</title>",
			"/docs/":                                "<title>docs</title>",
			"/docs/index.html":                      "<title>docs</title>",
			"/docs/swagger-ui.css":                  ".swagger{}",
			"/docs/swagger-ui-bundle.js":            "var SwaggerUIBundle",
			"/docs/swagger-ui-standalone-preset.js": "var preset",
		} {
			res := get(t, hh.h, http.MethodGet, target)
			if b := body(t, res); res.StatusCode != 200 || !strings.Contains(b, want) {
				t.Errorf("%s GET %s: %d %q, want 200 with %q", hh.name, target, res.StatusCode, b, want)
			}
		}
		if res := get(t, hh.h, http.MethodGet, "/docs/nope.js"); res.StatusCode != 404 {
			t.Errorf("%s GET /docs/nope.js: status %d, want 404", hh.name, res.StatusCode)
		}
	}
	res := get(t, h, http.MethodGet, "/docs/swagger-ui.css")
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/css") {
		t.Errorf("swagger-ui.css Content-Type %q", ct)
	}
}

// The embedded build is either there (make web ran) or not: both answer.
func TestEmbeddedHandlersAnswer(t *testing.T) {
	for name, h := range map[string]http.Handler{"app": Handler(), "docs": DocsHandler()} {
		res := get(t, h, http.MethodGet, "/docs/")
		if res.StatusCode != 200 && res.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("%s: status %d, want 200 or 503", name, res.StatusCode)
		}
	}
}
