package web

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

func gunzip(t *testing.T, body string) string {
	t.Helper()
	zr, err := gzip.NewReader(strings.NewReader(body))
	if err != nil {
		t.Fatalf("not gzip: %v", err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("gzip body: %v", err)
	}
	return string(out)
}

// TestStaticAssets: pages name content-hashed asset URLs, which are cached
// for a year, answer 304 to their ETag, and 404 with any other hash; the
// plain URLs revalidate.
func TestStaticAssets(t *testing.T) {
	f := newFixture(t, opts{})
	b := f.browser()
	page := b.get(t, "/ui/signin")
	js := assetURL("meterline.js")
	if !strings.HasPrefix(js, "/ui/static/") || len(strings.Split(js, "/")[3]) != hashLen {
		t.Fatalf("asset URL %q is not /ui/static/<hash>/meterline.js", js)
	}
	for _, name := range []string{"meterline.js", "meterline.css", "favicon.svg"} {
		if !strings.Contains(page.body, `"`+assetURL(name)+`"`) {
			t.Errorf("the page does not name %s by its hashed URL %s:\n%s", name, assetURL(name), page.body)
		}
	}
	a := b.get(t, js)
	if a.code != http.StatusOK || a.header.Get("Cache-Control") != immutableCache || a.header.Get("ETag") == "" ||
		!strings.Contains(a.header.Get("Content-Type"), "javascript") || !strings.Contains(a.body, "uPlot") {
		t.Fatalf("GET %s: %d Cache-Control %q ETag %q Content-Type %q", js, a.code, a.header.Get("Cache-Control"),
			a.header.Get("ETag"), a.header.Get("Content-Type"))
	}
	checkHeaders(t, "hashed asset", a, "'none'")
	etag := a.header.Get("ETag")
	for _, inm := range []string{etag, "W/" + etag, `"x", ` + etag, "*"} {
		nm := b.do(t, http.MethodGet, js, nil, "If-None-Match", inm)
		if nm.code != http.StatusNotModified || nm.body != "" || nm.header.Get("ETag") != etag {
			t.Errorf("If-None-Match %s: %d %q, want 304 without a body", inm, nm.code, nm.body)
		}
	}
	if nm := b.do(t, http.MethodGet, js, nil, "If-None-Match", `"0000"`); nm.code != http.StatusOK {
		t.Errorf("If-None-Match of another version: %d, want 200", nm.code)
	}
	plain := b.get(t, "/ui/static/meterline.js")
	if plain.code != http.StatusOK || plain.header.Get("Cache-Control") != revalidateCache || plain.header.Get("ETag") != etag {
		t.Errorf("plain URL: %d Cache-Control %q ETag %q, want 200, no-cache and the same ETag", plain.code,
			plain.header.Get("Cache-Control"), plain.header.Get("ETag"))
	}
	css := strings.Split(assetURL("meterline.css"), "/")[3]
	for _, bad := range []string{
		"/ui/static/0000000000000000/meterline.js", // a wrong hash
		"/ui/static/" + css + "/meterline.js",      // another file's hash
		"/ui/static/" + strings.ToUpper(js[11:27]) + "/meterline.js",
		"/ui/static/nope.js",
		"/ui/static/" + js[11:27] + "/nope.js",
		"/ui/static/" + js[11:27] + "/../../web.go",
		"/ui/static/" + js[11:27] + "/%2e%2e/web.go",
		"/ui/static/",
	} {
		a := b.get(t, bad)
		if a.code == http.StatusOK || strings.Contains(a.body, "package web") || a.header.Get("Cache-Control") == immutableCache {
			t.Errorf("GET %s: %d (Cache-Control %q), want a refusal", bad, a.code, a.header.Get("Cache-Control"))
		}
	}
	if a := b.get(t, "/ui/static/0000000000000000/meterline.js"); a.code != http.StatusNotFound {
		t.Errorf("wrong hash: %d, want 404", a.code)
	}
}

// TestCompression: pages, CSV and static text go out gzipped to a client
// that accepts it (Vary: Accept-Encoding), never tiny bodies, never to a
// client that refuses it; pages and CSV stay no-store.
func TestCompression(t *testing.T) {
	f := newFixture(t, opts{})
	b := f.browser()
	b.signIn(t, tokAdmin)
	page := "/ui/customers/" + f.acme
	csv := page + "/usage.csv?" + url.Values{"from": {f.start.Format(time.RFC3339)}, "window": {"minute"}}.Encode()

	for _, c := range []struct{ path, ctype, cache, contains string }{
		{page, "text/html", "no-store", `data-testid="total-requests"`},
		{csv, "text/csv", "no-store", "window_start"},
		{assetURL("meterline.js"), "javascript", immutableCache, "uPlot"},
		{assetURL("meterline.css"), "text/css", immutableCache, "--accent"},
	} {
		plain := b.do(t, http.MethodGet, c.path, nil, "Accept-Encoding", "identity")
		z := b.do(t, http.MethodGet, c.path, nil, "Accept-Encoding", "br, gzip;q=0.8")
		if z.code != http.StatusOK || z.header.Get("Content-Encoding") != "gzip" || !strings.Contains(z.header.Get("Vary"), "Accept-Encoding") {
			t.Errorf("%s: %d Content-Encoding %q Vary %q, want gzip", c.path, z.code, z.header.Get("Content-Encoding"), z.header.Get("Vary"))
			continue
		}
		if !strings.Contains(z.header.Get("Content-Type"), c.ctype) || z.header.Get("Cache-Control") != c.cache {
			t.Errorf("%s: Content-Type %q Cache-Control %q, want %s and %s", c.path, z.header.Get("Content-Type"), z.header.Get("Cache-Control"), c.ctype, c.cache)
		}
		body := gunzip(t, z.body)
		if plain.header.Get("Content-Encoding") != "" || !strings.Contains(plain.body, c.contains) || len(z.body) >= len(plain.body) {
			t.Errorf("%s: identity answer Content-Encoding %q, %d bytes; gzip %d bytes", c.path, plain.header.Get("Content-Encoding"), len(plain.body), len(z.body))
		}
		if c.cache == immutableCache && body != plain.body {
			t.Errorf("%s: the gzipped file differs from the file", c.path)
		}
		if !strings.Contains(body, c.contains) {
			t.Errorf("%s: the gzipped body lacks %q", c.path, c.contains)
		}
		if no := b.do(t, http.MethodGet, c.path, nil, "Accept-Encoding", "gzip;q=0, identity"); no.header.Get("Content-Encoding") != "" {
			t.Errorf("%s: gzip;q=0 still got %q", c.path, no.header.Get("Content-Encoding"))
		}
	}
	// Tiny bodies stay as they are.
	icon := b.do(t, http.MethodGet, assetURL("favicon.svg"), nil, "Accept-Encoding", "gzip")
	if icon.code != http.StatusOK || icon.header.Get("Content-Encoding") != "" || !strings.Contains(icon.body, "<svg") {
		t.Errorf("favicon (%d bytes): %d Content-Encoding %q, want it uncompressed", len(icon.body), icon.code, icon.header.Get("Content-Encoding"))
	}
	// A redirect has no body worth compressing.
	if a := f.browser().do(t, http.MethodGet, page, nil, "Accept-Encoding", "gzip"); a.code != http.StatusSeeOther || a.header.Get("Content-Encoding") != "" {
		t.Errorf("redirect to sign-in: %d Content-Encoding %q", a.code, a.header.Get("Content-Encoding"))
	}
}

// TestGzipWriter: the wrapper on its own, with bodies around the
// threshold, written in pieces, and with an explicit status.
func TestGzipWriter(t *testing.T) {
	for _, c := range []struct {
		name  string
		n     int
		ctype string
		code  int
		gz    bool
	}{
		{"small html", minGzipBytes - 1, "text/html; charset=utf-8", 200, false},
		{"html at the threshold", minGzipBytes, "text/html; charset=utf-8", 200, true},
		{"large json error", 5000, "application/json", 500, true},
		{"large png", 5000, "image/png", 200, false},
		{"empty", 0, "text/html", 204, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			body := bytes.Repeat([]byte("a"), c.n)
			h := compress(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", c.ctype)
				w.WriteHeader(c.code)
				for i := 0; i < len(body); i += 100 {
					_, _ = w.Write(body[i:min(i+100, len(body))])
				}
			}))
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			req.Header.Set("Accept-Encoding", "gzip")
			h.ServeHTTP(rec, req)
			if rec.Code != c.code || (rec.Header().Get("Content-Encoding") == "gzip") != c.gz {
				t.Fatalf("%d Content-Encoding %q, want %d gzip=%v", rec.Code, rec.Header().Get("Content-Encoding"), c.code, c.gz)
			}
			got := rec.Body.String()
			if c.gz {
				got = gunzip(t, got)
			}
			if got != string(body) {
				t.Fatalf("body of %d bytes came back as %d", len(body), len(got))
			}
		})
	}
}
