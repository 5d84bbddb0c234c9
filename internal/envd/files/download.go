package files

import (
	"io"
	"mime"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"

	"wrenn.dev/wrenn/internal/envd/filesystem"
	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/httpjson"
)

// download serves one regular file with http.ServeContent (so Range,
// If-Range and conditional requests work), gzip-encoded when the client
// accepts gzip and did not ask for a range. The gzip encoder (see
// adaptiveGzip) sends incompressible stretches stored, so a gzip download
// of binary data streams nearly as fast as a plain one.
func (h *Handler) download(w http.ResponseWriter, r *http.Request) {
	f, err := h.openDownload(r)
	if err != nil {
		httpjson.Error(w, r, h.log, err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		httpjson.Error(w, r, h.log, filesystem.ClassifyOSError(err))
		return
	}

	useGzip, identityOK := negotiateEncoding(r.Header.Get("Accept-Encoding"))
	ranged := r.Header.Get("Range") != ""
	if ranged {
		useGzip = false
	}
	if !useGzip && !identityOK && !ranged {
		httpjson.Write(w, http.StatusNotAcceptable, httpjson.ErrorBody{
			Message: "Accept-Encoding allows neither gzip nor identity",
			Code:    http.StatusNotAcceptable,
		})
		return
	}

	hdr := w.Header()
	hdr.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": fi.Name()}))
	hdr.Add("Vary", "Accept-Encoding")
	if !useGzip {
		http.ServeContent(w, r, fi.Name(), fi.ModTime(), f)
		return
	}
	gw := &gzipResponseWriter{ResponseWriter: w, head: r.Method == http.MethodHead}
	defer gw.finish()
	http.ServeContent(gw, r, fi.Name(), fi.ModTime(), f)
}

// openDownload authorizes a download and opens the file it names, which
// must be a regular file.
func (h *Handler) openDownload(r *http.Request) (*os.File, error) {
	signed, err := h.authorize(r, opRead)
	if err != nil {
		return nil, err
	}
	u, err := h.user(r, signed)
	if err != nil {
		return nil, err
	}
	path, err := h.users.ResolvePath(u, r.URL.Query().Get("path"))
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, filesystem.ClassifyOSError(err)
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		if fi.IsDir() {
			err = errdefs.InvalidArgument("%s is a directory; only files can be downloaded", path)
		} else {
			err = errdefs.InvalidArgument("%s is not a regular file", path)
		}
	}
	if err != nil {
		f.Close()
		return nil, filesystem.ClassifyOSError(err)
	}
	return f, nil
}

// negotiateEncoding reads an Accept-Encoding header: whether gzip is
// acceptable (q > 0, named or through "*") and whether the identity
// encoding still is (not refused with q=0, by name or through "*").
func negotiateEncoding(header string) (useGzip, identityOK bool) {
	gzipQ, identityQ, anyQ := -1.0, -1.0, -1.0 // -1: not mentioned
	for part := range strings.SplitSeq(header, ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		q := 1.0
		for p := range strings.SplitSeq(params, ";") {
			k, v, ok := strings.Cut(strings.TrimSpace(p), "=")
			if ok && strings.EqualFold(strings.TrimSpace(k), "q") {
				if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
					q = f
				}
			}
		}
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "gzip", "x-gzip":
			gzipQ = max(gzipQ, q)
		case "identity":
			identityQ = max(identityQ, q)
		case "*":
			anyQ = max(anyQ, q)
		}
	}
	useGzip = gzipQ > 0 || (gzipQ < 0 && anyQ > 0)
	identityOK = identityQ != 0 && !(identityQ < 0 && anyQ == 0)
	return useGzip, identityOK
}

var gzipWriters = sync.Pool{New: func() any { return newAdaptiveGzip(io.Discard) }}

// gzipResponseWriter gzips a 200 response body; any other status (304,
// errors) and HEAD responses pass through unencoded.
type gzipResponseWriter struct {
	http.ResponseWriter
	head        bool
	wroteHeader bool
	gz          *adaptiveGzip // set once the body is being gzipped
}

func (g *gzipResponseWriter) WriteHeader(status int) {
	if g.wroteHeader {
		return
	}
	g.wroteHeader = true
	if status == http.StatusOK {
		h := g.Header()
		h.Del("Content-Length") // of the decoded body
		h.Set("Content-Encoding", "gzip")
		if !g.head {
			g.gz = gzipWriters.Get().(*adaptiveGzip)
			g.gz.Reset(g.ResponseWriter)
		}
	}
	g.ResponseWriter.WriteHeader(status)
}

func (g *gzipResponseWriter) Write(p []byte) (int, error) {
	if !g.wroteHeader {
		g.WriteHeader(http.StatusOK)
	}
	if g.gz != nil {
		return g.gz.Write(p)
	}
	return g.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (g *gzipResponseWriter) Unwrap() http.ResponseWriter { return g.ResponseWriter }

// finish writes the gzip trailer and returns the compressor to the pool.
func (g *gzipResponseWriter) finish() {
	if g.gz == nil {
		return
	}
	_ = g.gz.Close()
	g.gz.Reset(io.Discard)
	gzipWriters.Put(g.gz)
	g.gz = nil
}
