// Package web embeds the dashboard's built files (web/dist, made by
// `npm run build` in web/, or `make web`) and serves them: the single-page
// app from Handler and the API reference (Swagger UI, dist/swagger) from
// DocsHandler. A binary built before the dashboard was answers 503 with a
// note on how to build it.
package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"
)

//go:embed all:dist
var dist embed.FS

// notBuilt is what a binary without a built dashboard answers.
const notBuilt = "the dashboard is not built: run `make web`\n"

// Caching: Vite names the files under assets/ by their content hash, so they
// never change; everything else (index.html above all) is revalidated on each
// use through its ETag.
const (
	cacheImmutable  = "public, max-age=31536000, immutable"
	cacheRevalidate = "no-cache"
)

// Handler serves the dashboard: files from the build as they are, and
// index.html for any other GET path, which the app routes itself
// (/sandboxes/sb-…?tab=terminal). A path under /assets/ that is not a file
// is a 404, not the app, so a stale page does not load HTML as a script.
func Handler() http.Handler { return newAppHandler(distFS()) }

// DocsHandler serves Swagger UI from the build's swagger/ directory. It is
// meant to be mounted at /docs: /docs and /docs/ are its index page and
// /docs/swagger-ui.css and the like its files. It also works behind
// http.StripPrefix("/docs", …).
func DocsHandler() http.Handler { return newDocsHandler(distFS()) }

func distFS() fs.FS {
	sub, err := fs.Sub(dist, "dist")
	if err != nil {
		panic(err) // "dist" is a valid path; fs.Sub fails only on invalid ones
	}
	return sub
}

// file is one built file held in memory with its ETag.
type file struct {
	data []byte
	etag string
}

// files reads every regular file under root in fsys (root "." for all);
// the build is a few megabytes and is embedded anyway.
func files(fsys fs.FS, root string) (map[string]*file, error) {
	out := map[string]*file{}
	err := fs.WalkDir(fsys, root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		data, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		rel := p
		if root != "." {
			rel = strings.TrimPrefix(p, root+"/")
		}
		out[rel] = &file{data: data, etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func unavailable(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = w.Write([]byte(notBuilt))
}

func serve(w http.ResponseWriter, r *http.Request, name string, f *file, cache string) {
	h := w.Header()
	h.Set("Cache-Control", cache)
	h.Set("ETag", f.etag)
	h.Set("X-Content-Type-Options", "nosniff")
	// ServeContent sets Content-Type from the name's extension and answers
	// If-None-Match (304), ranges and HEAD.
	http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(f.data))
}

func onlyGet(w http.ResponseWriter, r *http.Request) bool {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return true
	}
	w.Header().Set("Allow", "GET, HEAD")
	http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	return false
}

type appHandler struct {
	files map[string]*file
	index *file
}

func newAppHandler(fsys fs.FS) http.Handler {
	all, err := files(fsys, ".")
	if err != nil || all["index.html"] == nil {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { unavailable(w) })
	}
	return &appHandler{files: all, index: all["index.html"]}
}

func (h *appHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !onlyGet(w, r) {
		return
	}
	name := strings.TrimPrefix(path.Clean("/"+r.URL.Path), "/")
	if f := h.files[name]; f != nil && name != "index.html" && name != ".gitkeep" {
		cache := cacheRevalidate
		if strings.HasPrefix(name, "assets/") {
			cache = cacheImmutable
		}
		serve(w, r, name, f, cache)
		return
	}
	if name == "assets" || strings.HasPrefix(name, "assets/") {
		http.NotFound(w, r)
		return
	}
	serve(w, r, "index.html", h.index, cacheRevalidate)
}

type docsHandler struct {
	files map[string]*file
}

func newDocsHandler(fsys fs.FS) http.Handler {
	all, err := files(fsys, "swagger")
	if err != nil || all["index.html"] == nil {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { unavailable(w) })
	}
	return &docsHandler{files: all}
}

func (h *docsHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !onlyGet(w, r) {
		return
	}
	p := path.Clean("/" + r.URL.Path)
	if p == "/docs" || strings.HasPrefix(p, "/docs/") {
		p = strings.TrimPrefix(p, "/docs")
	}
	name := strings.TrimPrefix(p, "/")
	if name == "" {
		name = "index.html"
	}
	f := h.files[name]
	if f == nil {
		http.NotFound(w, r)
		return
	}
	serve(w, r, name, f, cacheRevalidate)
}
