package schemas

import (
	"math"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// Event is one v1 request event: one API request seen by a gateway. The
// decoder returns events in canonical form (see Options.Normalize), which is
// what AppendJSON writes and what the event table stores.
type Event struct {
	// ID is unique per request and is the deduplication key; 1 to 128 bytes.
	ID string `json:"id"`
	// Time is when the request happened, in UTC, truncated to the millisecond.
	Time time.Time `json:"time"`
	// APIKeyID is the public id of the API key that made the request, never
	// its secret; 1 to 128 bytes.
	APIKeyID string `json:"api_key_id"`
	// CustomerID is optional; when empty it is resolved from the key registry.
	CustomerID string `json:"customer_id,omitempty"`
	// Gateway names the gateway or region that emitted the event.
	Gateway string `json:"gateway,omitempty"`
	// Method is the upper-case HTTP method.
	Method string `json:"method,omitempty"`
	// Route is the endpoint template (/v1/pets/{id}), not the raw path, so
	// that usage groups by endpoint and no ids or secrets in paths are stored.
	Route string `json:"route,omitempty"`
	// Status is the HTTP status code, 100 to 599.
	Status int `json:"status"`
	// LatencyMS is the time the request took, in milliseconds.
	LatencyMS float64 `json:"latency_ms"`
	// RequestBytes is the size of the request body.
	RequestBytes uint64 `json:"request_bytes"`
	// ResponseBytes is the size of the response body.
	ResponseBytes uint64 `json:"response_bytes"`
	// ClientIP is the caller's address in canonical text form; the collector
	// and sink anonymise it (see AnonymizeIP) before it is stored.
	ClientIP string `json:"client_ip,omitempty"`
	// UserAgent is truncated to 512 bytes.
	UserAgent string `json:"user_agent,omitempty"`
	// Units is the billable quantity of the request (credits, tokens, rows),
	// at most 6 decimal places. The decoder defaults it to 1 when absent; an
	// Event built in Go must set it explicitly, since 0 is a valid quantity.
	Units float64 `json:"units"`
	// Properties are free string dimensions (plan, region, sdk).
	Properties map[string]string `json:"properties,omitempty"`
	// Absent marks the optional measurements (latency_ms, request_bytes,
	// response_bytes) the event did not carry: they are stored as NULL, not
	// 0, left out of the canonical JSON, and left out of percentiles. The
	// decoder sets it; the zero value, as in an Event built in Go, means
	// every measurement is present.
	Absent Measures `json:"-"`
}

// Measures is a set of the event's optional measurements.
type Measures uint8

// The optional measurements of an event.
const (
	MeasureLatency Measures = 1 << iota
	MeasureRequestBytes
	MeasureResponseBytes
)

// Has tells whether the event carries measurement m.
func (e *Event) Has(m Measures) bool { return e.Absent&m == 0 }

// AppendJSON appends the canonical v1 JSON of e to dst and returns the
// extended buffer. The canonical form has the fields in declaration order,
// the optional strings only when non-empty, the optional measurements only
// when present (see Absent), the time with exactly three
// fractional digits in UTC, numbers in their shortest exact form and
// properties sorted by key, so equal events always give equal bytes.
//
// e should be valid (decoded, or passed through Options.Normalize): the
// output is well-formed JSON whatever e holds, but invalid UTF-8 is written
// as U+FFFD and a NaN or infinite number as null, which do not decode back
// to the same event.
func (e *Event) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"id":`...)
	dst = appendString(dst, e.ID)
	dst = append(dst, `,"time":"`...)
	dst = appendTime(dst, e.Time)
	dst = append(dst, `","api_key_id":`...)
	dst = appendString(dst, e.APIKeyID)
	if e.CustomerID != "" {
		dst = append(dst, `,"customer_id":`...)
		dst = appendString(dst, e.CustomerID)
	}
	if e.Gateway != "" {
		dst = append(dst, `,"gateway":`...)
		dst = appendString(dst, e.Gateway)
	}
	if e.Method != "" {
		dst = append(dst, `,"method":`...)
		dst = appendString(dst, e.Method)
	}
	if e.Route != "" {
		dst = append(dst, `,"route":`...)
		dst = appendString(dst, e.Route)
	}
	dst = append(dst, `,"status":`...)
	dst = strconv.AppendInt(dst, int64(e.Status), 10)
	if e.Has(MeasureLatency) {
		dst = append(dst, `,"latency_ms":`...)
		dst = appendFloat(dst, e.LatencyMS)
	}
	if e.Has(MeasureRequestBytes) {
		dst = append(dst, `,"request_bytes":`...)
		dst = strconv.AppendUint(dst, e.RequestBytes, 10)
	}
	if e.Has(MeasureResponseBytes) {
		dst = append(dst, `,"response_bytes":`...)
		dst = strconv.AppendUint(dst, e.ResponseBytes, 10)
	}
	if e.ClientIP != "" {
		dst = append(dst, `,"client_ip":`...)
		dst = appendString(dst, e.ClientIP)
	}
	if e.UserAgent != "" {
		dst = append(dst, `,"user_agent":`...)
		dst = appendString(dst, e.UserAgent)
	}
	dst = append(dst, `,"units":`...)
	dst = appendFloat(dst, e.Units)
	if len(e.Properties) > 0 {
		dst = append(dst, `,"properties":{`...)
		// A fixed array keeps the common case (up to 32 keys) off the heap.
		var arr [defaultMaxProperties]string
		keys := arr[:0]
		for k := range e.Properties {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for i, k := range keys {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, k)
			dst = append(dst, ':')
			dst = appendString(dst, e.Properties[k])
		}
		dst = append(dst, '}')
	}
	return append(dst, '}')
}

// jsonSafe marks the ASCII bytes that need no escape inside a JSON string.
var jsonSafe = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// appendString writes s as a JSON string. Besides what JSON requires, it
// escapes U+2028 and U+2029 so the output can be embedded in JavaScript, as
// encoding/json does; it leaves <, > and & alone because the messages are not
// HTML.
func appendString(dst []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if jsonSafe[c] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// appendFloat writes f as the shortest decimal that reads back as the same
// float64, in plain notation for the magnitudes events have and in
// exponent notation only for the very small or very large.
func appendFloat(dst []byte, f float64) []byte {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return append(dst, "null"...)
	}
	abs := math.Abs(f)
	if abs == 0 || abs >= 1e-6 && abs < 1e21 {
		return strconv.AppendFloat(dst, f, 'f', -1, 64)
	}
	start := len(dst)
	dst = strconv.AppendFloat(dst, f, 'e', -1, 64)
	// strconv pads the exponent to two digits (1e-07); drop the padding for
	// the shorter form most JSON writers use.
	if n := len(dst); n-start >= 4 && dst[n-4] == 'e' && dst[n-3] == '-' && dst[n-2] == '0' {
		dst[n-2] = dst[n-1]
		dst = dst[:n-1]
	}
	return dst
}
