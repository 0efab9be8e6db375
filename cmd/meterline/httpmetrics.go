package main

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// instrumentHTTP wraps the server's mux with
// meterline_http_request_duration_seconds{route,class}: route is the
// mux pattern that served the request (a bounded set: "/" for unknown
// paths), class the status class of the answer (2xx … 5xx).
func instrumentHTTP(mux *http.ServeMux, reg prometheus.Registerer) http.Handler {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "meterline_http_request_duration_seconds",
		Help:    "Time to answer an HTTP request, by route (the pattern that served it) and status class.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 15), // 1 ms … 16 s
	}, []string{"route", "class"})
	reg.MustRegister(h)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		mux.ServeHTTP(sw, r)
		// ServeMux sets r.Pattern on the request it routed.
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		h.WithLabelValues(route, statusClass(sw.status)).Observe(time.Since(start).Seconds())
	})
}

func statusClass(code int) string {
	switch {
	case code == 0 || (code >= 200 && code < 300):
		return "2xx" // nothing written: net/http answers 200
	case code < 200:
		return "1xx"
	case code < 400:
		return "3xx"
	case code < 500:
		return "4xx"
	default:
		return "5xx"
	}
}

// statusWriter records the status code; Unwrap keeps http.ResponseController
// (flushes, deadlines) working through it.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Flush forwards to the underlying writer, for handlers that stream.
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
