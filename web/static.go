package web

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
)

// Static assets are served under content-hashed URLs,
// /ui/static/<hash>/<name>, so a browser may keep them for a year: a new
// build changes the hash of every file that changed, and pages name the
// new URL. The plain /ui/static/<name> still answers (for links from
// elsewhere), revalidated on every use.
const (
	immutableCache  = "public, max-age=31536000, immutable"
	revalidateCache = "no-cache"
	// hashLen is the number of hex digits of SHA-256 in an asset's URL.
	hashLen = 16
	// minGzipBytes: smaller bodies are sent as they are (gzip's header and
	// the CPU cost more than they save).
	minGzipBytes = 1024
)

// asset is one embedded static file, read and compressed once.
type asset struct {
	name  string // path under assets/static
	hash  string // first hashLen hex digits of SHA-256 of body
	ctype string
	body  []byte
	gz    []byte // nil: not worth compressing
}

// staticIndex is every embedded static file by name, built once per
// process from the embedded files.
var staticIndex = sync.OnceValue(func() map[string]*asset {
	sub, _ := fs.Sub(assets, "assets/static")
	idx := map[string]*asset{}
	_ = fs.WalkDir(sub, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := fs.ReadFile(sub, p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(body)
		a := &asset{name: p, hash: hex.EncodeToString(sum[:])[:hashLen], body: body,
			ctype: mime.TypeByExtension(path.Ext(p))}
		if a.ctype == "" {
			a.ctype = http.DetectContentType(body)
		}
		if compressible(a.ctype) && len(body) >= minGzipBytes {
			var b bytes.Buffer
			zw, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
			_, _ = zw.Write(body)
			_ = zw.Close()
			if b.Len() < len(body) {
				a.gz = b.Bytes()
			}
		}
		idx[p] = a
		return nil
	})
	return idx
})

// assetURL is the content-hashed URL of a static file (the templates'
// "asset" function); an unknown name gets its plain URL, which answers 404.
func assetURL(name string) string {
	if a, ok := staticIndex()[name]; ok {
		return "/ui/static/" + a.hash + "/" + a.name
	}
	return "/ui/static/" + name
}

// serveStatic answers GET /ui/static/...: a hashed URL whose hash is the
// file's with a year of caching, a plain one revalidated (ETag) each time,
// a wrong hash or unknown file 404.
func (s *Server) serveStatic(w http.ResponseWriter, r *http.Request) {
	rest := strings.TrimPrefix(r.URL.Path, "/ui/static/")
	idx := staticIndex()
	a, cache := idx[rest], revalidateCache
	if a == nil {
		h, name, ok := strings.Cut(rest, "/")
		if a = idx[name]; !ok || a == nil || h != a.hash {
			s.fail(w, r, http.StatusNotFound, "No such file.")
			return
		}
		cache = immutableCache
	}
	hd := w.Header()
	etag := `"` + a.hash + `"`
	hd.Set("Cache-Control", cache)
	hd.Set("ETag", etag)
	hd.Set("Content-Type", a.ctype)
	hd.Add("Vary", "Accept-Encoding")
	if etagMatch(r.Header.Get("If-None-Match"), etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	body := a.body
	if a.gz != nil && acceptsGzip(r) {
		hd.Set("Content-Encoding", "gzip")
		body = a.gz
	}
	hd.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}

// etagMatch reports whether an If-None-Match header names etag (or *).
// Weak and strong forms compare alike, as RFC 9110 asks for this header.
func etagMatch(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == etag || t == "*" {
			return true
		}
	}
	return false
}

// compressible tells the media types worth gzipping: HTML, CSV, JSON,
// JavaScript, CSS and SVG (text formats; images and archives are
// compressed already).
func compressible(ctype string) bool {
	mt, _, _ := strings.Cut(ctype, ";")
	switch strings.ToLower(strings.TrimSpace(mt)) {
	case "text/html", "text/csv", "application/json", "text/javascript", "application/javascript",
		"text/css", "image/svg+xml", "text/plain":
		return true
	}
	return false
}

// acceptsGzip reads Accept-Encoding: gzip (or *) with a q above zero.
func acceptsGzip(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept-Encoding"), ",") {
		coding, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		coding = strings.ToLower(strings.TrimSpace(coding))
		if coding != "gzip" && coding != "*" {
			continue
		}
		q := 1.0
		if k, v, ok := strings.Cut(strings.TrimSpace(params), "="); ok && strings.TrimSpace(k) == "q" {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return false
			}
			q = f
		}
		return q > 0
	}
	return false
}

var gzipPool = sync.Pool{New: func() any { zw, _ := gzip.NewWriterLevel(io.Discard, gzip.DefaultCompression); return zw }}

// compress gzips the responses of next (pages, CSV, JSON) when the client
// accepts it, the type is compressible and the body reaches minGzipBytes;
// bodies that set their own Content-Encoding (the static files) pass as
// they are.
func compress(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Vary", "Accept-Encoding")
		if !acceptsGzip(r) || r.Method == http.MethodHead {
			next.ServeHTTP(w, r)
			return
		}
		gw := &gzipWriter{w: w, code: http.StatusOK}
		defer gw.finish()
		next.ServeHTTP(gw, r)
	})
}

// gzipWriter holds back the first minGzipBytes of a body to decide whether
// to compress it.
type gzipWriter struct {
	w       http.ResponseWriter
	code    int
	headed  bool // WriteHeader was called
	decided bool
	buf     []byte
	zw      *gzip.Writer
}

func (g *gzipWriter) Header() http.Header { return g.w.Header() }

func (g *gzipWriter) WriteHeader(code int) {
	if g.headed || g.decided {
		return
	}
	g.headed, g.code = true, code
	if code < 200 || code == http.StatusNoContent || code == http.StatusNotModified {
		g.decide(false)
	}
}

func (g *gzipWriter) Write(p []byte) (int, error) {
	if !g.decided {
		g.buf = append(g.buf, p...)
		if len(g.buf) < minGzipBytes {
			return len(p), nil
		}
		if err := g.decide(true); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	if g.zw != nil {
		return g.zw.Write(p)
	}
	return g.w.Write(p)
}

// decide sends the header, compressed when big is true and the answer
// suits it, then what was held back.
func (g *gzipWriter) decide(big bool) error {
	g.decided = true
	h := g.w.Header()
	if h.Get("Content-Type") == "" && len(g.buf) > 0 {
		h.Set("Content-Type", http.DetectContentType(g.buf))
	}
	if big && h.Get("Content-Encoding") == "" && compressible(h.Get("Content-Type")) {
		h.Del("Content-Length")
		h.Set("Content-Encoding", "gzip")
		zw := gzipPool.Get().(*gzip.Writer)
		zw.Reset(g.w)
		g.zw = zw
	}
	g.w.WriteHeader(g.code)
	buf := g.buf
	g.buf = nil
	if len(buf) == 0 {
		return nil
	}
	var err error
	if g.zw != nil {
		_, err = g.zw.Write(buf)
	} else {
		_, err = g.w.Write(buf)
	}
	return err
}

// Flush sends what is held back (compressed as decided so far).
func (g *gzipWriter) Flush() {
	if !g.decided {
		_ = g.decide(len(g.buf) >= minGzipBytes)
	}
	if g.zw != nil {
		_ = g.zw.Flush()
	}
	if f, ok := g.w.(http.Flusher); ok {
		f.Flush()
	}
}

func (g *gzipWriter) finish() {
	if !g.decided {
		_ = g.decide(false)
	}
	if g.zw != nil {
		_ = g.zw.Close()
		g.zw.Reset(io.Discard)
		gzipPool.Put(g.zw)
		g.zw = nil
	}
}
