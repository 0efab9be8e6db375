package httplimit

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

var benchHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, `{"id":"42","name":"rex"}`)
})

// discardWriter keeps nothing but its header map, which it clears between
// requests as a server does.
type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardWriter) WriteHeader(int)             {}

// BenchmarkMiddleware compares, in the same run, the handler alone
// (baseline) with the handler behind the limits middleware: keys with two
// rate limits that are never reached (checked and counted on every
// request), spread over 1000 keys or all on one (one shard's lock for every
// goroutine), keys with no rate limits (the copy's lookup and the status
// check only), and a key always over its limit (the 429 path).
//
//	go test ./gateway/httplimit -run '^$' -bench Middleware -cpu 1,2 -count 5
var ratedKeys = func() []string {
	var out []string
	for i := range 1000 {
		out = append(out, fmt.Sprintf("rated%d", i))
	}
	return out
}()

func BenchmarkMiddleware(b *testing.B) {
	s := &standInLimits{code: 200}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		_, _ = io.WriteString(w, s.pages[0])
	}))
	defer s.srv.Close()
	var keys []string
	for i := range 1000 {
		keys = append(keys, keyJSON(fmt.Sprintf("rated%d", i), `,"rate_limits":[{"per":"1s","requests":1000000000},{"per":"1h","requests":1000000000}]`))
		keys = append(keys, keyJSON(fmt.Sprintf("plain%d", i), ""))
	}
	keys = append(keys, keyJSON("over", `,"rate_limits":[{"per":"1h","requests":1}]`))
	s.pages = []string{page("e.1", false, false, strings.Join(keys, ","))}
	l, err := New(Config{Endpoint: s.srv.URL, PollInterval: time.Hour, MaxStaleness: 2 * time.Hour,
		KeyFunc: func(r *http.Request) string { return r.Header.Get("X-Api-Key-Id") }})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	<-l.Synced()
	limited := l.Middleware(benchHandler)
	run := func(b *testing.B, h http.Handler, spread bool, key func(i int) string) {
		b.ReportAllocs()
		var g atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			r := httptest.NewRequest("GET", "/v1/pets/42", nil)
			k := key(int(g.Add(1)))
			r.Header.Set("X-Api-Key-Id", k)
			w := &discardWriter{h: http.Header{}}
			i := 0
			for pb.Next() {
				if i++; spread && i%64 == 0 {
					r.Header["X-Api-Key-Id"][0] = ratedKeys[i%1000]
				}
				clear(w.h)
				h.ServeHTTP(w, r)
			}
		})
	}
	b.Run("baseline", func(b *testing.B) { run(b, benchHandler, false, func(int) string { return "rated1" }) })
	b.Run("rate_limited_1000_keys", func(b *testing.B) { run(b, limited, true, func(i int) string { return ratedKeys[i%1000] }) })
	b.Run("rate_limited_one_key", func(b *testing.B) { run(b, limited, false, func(int) string { return "rated0" }) })
	b.Run("no_rate_limits", func(b *testing.B) { run(b, limited, false, func(i int) string { return fmt.Sprintf("plain%d", i) }) })
	b.Run("refused_429", func(b *testing.B) { run(b, limited, false, func(int) string { return "over" }) })
}
