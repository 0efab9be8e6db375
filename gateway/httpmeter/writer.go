package httpmeter

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"sync"
)

// recorder wraps a handler's ResponseWriter and records what the meter
// needs: the final status, the body bytes written, and what the handler set
// with SetRoute and SetUnits. The four types below add http.Flusher and
// http.Hijacker only when the wrapped writer has them, so a type assertion
// by the handler finds what it would find without the middleware.
type recorder struct {
	w          http.ResponseWriter
	status     int
	bytes      int64
	units      float64
	hasUnits   bool
	route      string
	props      [maxSetProperties][2]string
	nprops     uint8
	hijacked   bool
	wroteFinal bool
	kind       uint8 // which of the four types holds it, for release
}

func (rw *recorder) Header() http.Header { return rw.w.Header() }

func (rw *recorder) WriteHeader(code int) {
	if !rw.wroteFinal {
		// 1xx answers other than 101 are informational (103 Early Hints):
		// the final status comes after them.
		if code >= 200 || code == http.StatusSwitchingProtocols {
			rw.status = code
			rw.wroteFinal = true
		}
	}
	rw.w.WriteHeader(code)
}

func (rw *recorder) implicitOK() {
	if !rw.wroteFinal {
		rw.status = http.StatusOK
		rw.wroteFinal = true
	}
}

func (rw *recorder) Write(p []byte) (int, error) {
	rw.implicitOK()
	n, err := rw.w.Write(p)
	rw.bytes += int64(n)
	return n, err
}

// ReadFrom keeps net/http's sendfile path for io.Copy from a file.
func (rw *recorder) ReadFrom(src io.Reader) (int64, error) {
	rw.implicitOK()
	var n int64
	var err error
	if rf, ok := rw.w.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(src)
	} else {
		n, err = io.Copy(writerOnly{rw.w}, src)
	}
	rw.bytes += n
	return n, err
}

// Unwrap lets http.ResponseController reach the wrapped writer's deadlines,
// full duplex and the rest.
func (rw *recorder) Unwrap() http.ResponseWriter { return rw.w }

func (rw *recorder) rec() *recorder { return rw }

func (rw *recorder) flush() {
	rw.implicitOK() // a flush sends the header with 200
	rw.w.(http.Flusher).Flush()
}

func (rw *recorder) hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, b, err := rw.w.(http.Hijacker).Hijack()
	if err == nil {
		rw.hijacked = true
	}
	return c, b, err
}

// writerOnly hides ReadFrom so io.Copy does not call back into it.
type writerOnly struct{ io.Writer }

type flushRecorder struct{ recorder }

func (rw *flushRecorder) Flush() { rw.flush() }

type hijackRecorder struct{ recorder }

func (rw *hijackRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) { return rw.hijack() }

type flushHijackRecorder struct{ recorder }

func (rw *flushHijackRecorder) Flush() { rw.flush() }

func (rw *flushHijackRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) { return rw.hijack() }

// Writers are recycled: net/http forbids using a ResponseWriter after
// ServeHTTP returned, so once the event is recorded the wrapper is free, and
// metering a request allocates nothing.
var (
	poolFlushHijack = sync.Pool{New: func() any { return new(flushHijackRecorder) }}
	poolFlush       = sync.Pool{New: func() any { return new(flushRecorder) }}
	poolHijack      = sync.Pool{New: func() any { return new(hijackRecorder) }}
	poolPlain       = sync.Pool{New: func() any { return new(recorder) }}
)

// wrap returns the writer the handler gets and its recorder; release gives
// them back.
func wrap(w http.ResponseWriter) (http.ResponseWriter, *recorder) {
	_, f := w.(http.Flusher)
	_, h := w.(http.Hijacker)
	switch {
	case f && h:
		x := poolFlushHijack.Get().(*flushHijackRecorder)
		x.recorder = recorder{w: w, kind: kindFlushHijack}
		return x, &x.recorder
	case f:
		x := poolFlush.Get().(*flushRecorder)
		x.recorder = recorder{w: w, kind: kindFlush}
		return x, &x.recorder
	case h:
		x := poolHijack.Get().(*hijackRecorder)
		x.recorder = recorder{w: w, kind: kindHijack}
		return x, &x.recorder
	default:
		x := poolPlain.Get().(*recorder)
		*x = recorder{w: w, kind: kindPlain}
		return x, x
	}
}

// release returns the writer wrap gave, after the handler returned.
func release(ww http.ResponseWriter, rec *recorder) {
	kind := rec.kind
	*rec = recorder{}
	switch kind {
	case kindFlushHijack:
		poolFlushHijack.Put(ww)
	case kindFlush:
		poolFlush.Put(ww)
	case kindHijack:
		poolHijack.Put(ww)
	default:
		poolPlain.Put(ww)
	}
}

const (
	kindPlain uint8 = iota
	kindFlush
	kindHijack
	kindFlushHijack
)

// find returns the meter's recorder under w, following Unwrap through the
// writers other middleware (gin, echo, chi's) put around it.
func find(w http.ResponseWriter) *recorder {
	for range 16 { // a bound against an Unwrap cycle
		if r, ok := w.(interface{ rec() *recorder }); ok {
			return r.rec()
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return nil
		}
		w = u.Unwrap()
	}
	return nil
}

// SetRoute sets the endpoint template of the request being answered on w
// ("/v1/pets/{id}"), for routers whose template the middleware cannot see.
// It wins over Config.RouteFunc and r.Pattern. It reports false when w is
// not (and does not unwrap to) a writer of the middleware.
func SetRoute(w http.ResponseWriter, route string) bool {
	r := find(w)
	if r == nil {
		return false
	}
	r.route = route
	return true
}

// SetUnits sets the billable units of the request being answered on w
// (credits, tokens, rows; at most 6 decimal places are kept). Without it an
// event carries 1 unit. It reports false when w is not (and does not unwrap
// to) a writer of the middleware.
func SetUnits(w http.ResponseWriter, units float64) bool {
	r := find(w)
	if r == nil {
		return false
	}
	r.units, r.hasUnits = units, true
	return true
}

// maxSetProperties bounds the properties SetProperty adds to one event, so
// that they live in the recorder without allocating.
const maxSetProperties = 4

// SetProperty adds a property (a free string dimension, the event's
// "properties") to the event of the request being answered on w: the
// reason a gateway refused it, a plan, a region. Keys follow the event
// schema ([A-Za-z0-9_.:-], at most 64 bytes; values at most 256); the
// collector rejects an event with a bad one. Setting a key again replaces
// its value. It reports false when w is not (and does not unwrap to) a
// writer of the middleware, or when the event holds 4 properties already.
func SetProperty(w http.ResponseWriter, key, value string) bool {
	r := find(w)
	if r == nil {
		return false
	}
	for i := range r.nprops {
		if r.props[i][0] == key {
			r.props[i][1] = value
			return true
		}
	}
	if int(r.nprops) == maxSetProperties {
		return false
	}
	r.props[r.nprops] = [2]string{key, value}
	r.nprops++
	return true
}

// countingBody counts the bytes a handler reads from a body of unknown
// length (chunked uploads).
type countingBody struct {
	io.ReadCloser
	n int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	return n, err
}
