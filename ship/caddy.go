package ship

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/meterline/meterline/schemas"
)

// Why a line became no event; the reason label of
// meterline_ship_lines_skipped_total.
const (
	SkipMalformed = "malformed"  // not a JSON object
	SkipNotAccess = "not_access" // JSON, but not an access log entry
	SkipOversized = "oversized"  // longer than max_line_bytes
	SkipInvalid   = "invalid"    // an entry whose values the event cannot carry
	SkipUnmetered = "unmetered"  // no API key header: not metered
)

// SkipError says why a line was skipped; Reason is one of the Skip values.
type SkipError struct {
	Reason string
	Err    error
}

func (e *SkipError) Error() string { return e.Reason + ": " + e.Err.Error() }
func (e *SkipError) Unwrap() error { return e.Err }

func skip(reason, format string, a ...any) error {
	return &SkipError{Reason: reason, Err: fmt.Errorf(format, a...)}
}

// caddyEntry is what the mapping reads of a Caddy 2 JSON access log entry
// (logger http.log.access..., msg "handled request").
type caddyEntry struct {
	TS       json.RawMessage `json:"ts"`
	Msg      string          `json:"msg"`
	Request  *caddyRequest   `json:"request"`
	Duration json.RawMessage `json:"duration"`
	Size     json.RawMessage `json:"size"`
	Status   json.RawMessage `json:"status"`
	Resp     http.Header     `json:"resp_headers"`
}

type caddyRequest struct {
	RemoteIP string      `json:"remote_ip"`
	Method   string      `json:"method"`
	URI      string      `json:"uri"`
	Headers  http.Header `json:"headers"`
}

// Mapper turns Caddy access log lines into v1 events:
//
//	id             the response header IDHeader (X-Request-Id) if it is 1-128
//	               printable ASCII bytes, else "caddy-" and the first 32 hex
//	               digits of the line's SHA-256: the same line gives the same id
//	time           ts (when Caddy finished the request) minus duration
//	api_key_id     the request header KeyHeader (else not metered)
//	customer_id    the request header CustomerHeader, if configured
//	gateway        Gateway
//	method         request.method
//	route          the first Routes rule matching the path, else
//	               UnmatchedRoute, else the path
//	status         status (100-599, else the line is skipped as invalid)
//	latency_ms     duration (seconds, or a Go duration string) in ms
//	request_bytes  the request's Content-Length header, when logged
//	response_bytes size
//	client_ip      request.remote_ip (the collector anonymises it)
//	user_agent     the request's User-Agent
//	units          the response header UnitsHeader, if configured, else 1
//
// No other header is sent anywhere; Caddy's own redaction of Authorization
// and Cookie, and the Caddyfile's log filter, keep secrets out of the file.
type Mapper struct {
	cfg    CaddyConfig
	routes *Routes
}

// NewMapper returns the mapping of cfg (validated by the caller).
func NewMapper(cfg CaddyConfig) (*Mapper, error) {
	r, err := ParseRoutes(cfg.Routes)
	if err != nil {
		return nil, err
	}
	cfg.KeyHeader = http.CanonicalHeaderKey(cfg.KeyHeader)
	cfg.CustomerHeader = http.CanonicalHeaderKey(cfg.CustomerHeader)
	cfg.IDHeader = http.CanonicalHeaderKey(cfg.IDHeader)
	cfg.UnitsHeader = http.CanonicalHeaderKey(cfg.UnitsHeader)
	return &Mapper{cfg: cfg, routes: r}, nil
}

// Map returns the event of one log line (without its newline), or a
// *SkipError saying why there is none.
func (m *Mapper) Map(line []byte) (schemas.Event, error) {
	var ev schemas.Event
	var e caddyEntry
	if len(line) == 0 || line[0] != '{' {
		return ev, skip(SkipMalformed, "not a JSON object")
	}
	if err := json.Unmarshal(line, &e); err != nil {
		return ev, skip(SkipMalformed, "%v", jsonErr(err))
	}
	if e.Request == nil || len(e.Status) == 0 {
		return ev, skip(SkipNotAccess, "no request or status: not an access log entry (msg %.40q)", e.Msg)
	}
	key := header(e.Request.Headers, m.cfg.KeyHeader)
	if key == "" {
		return ev, skip(SkipUnmetered, "no %s header", m.cfg.KeyHeader)
	}
	status, err := strconv.Atoi(string(e.Status))
	if err != nil || status < 100 || status > 599 {
		return ev, skip(SkipInvalid, "status %.20s is not 100-599", e.Status)
	}
	end, err := parseTS(e.TS)
	if err != nil {
		return ev, skip(SkipInvalid, "ts: %v", err)
	}
	latency, err := parseDuration(e.Duration)
	if err != nil {
		return ev, skip(SkipInvalid, "duration: %v", err)
	}
	ev = schemas.Event{
		ID:         m.id(e.Resp, line),
		Time:       end.Add(-latency).UTC(),
		APIKeyID:   key,
		CustomerID: header(e.Request.Headers, m.cfg.CustomerHeader),
		Gateway:    m.cfg.Gateway,
		Method:     e.Request.Method,
		Route:      m.route(e.Request.URI),
		Status:     status,
		LatencyMS:  float64(latency.Microseconds()) / 1000,
		UserAgent:  header(e.Request.Headers, "User-Agent"),
		Units:      1,
	}
	if len(ev.Method) > 16 || strings.Trim(ev.Method, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") != "" {
		ev.Method = ""
	}
	if a, err := netip.ParseAddr(e.Request.RemoteIP); err == nil {
		ev.ClientIP = a.WithZone("").Unmap().String()
	}
	if n, err := strconv.ParseUint(header(e.Request.Headers, "Content-Length"), 10, 63); err == nil {
		ev.RequestBytes = n
	} else {
		ev.Absent |= schemas.MeasureRequestBytes
	}
	if n, err := strconv.ParseUint(string(e.Size), 10, 63); err == nil {
		ev.ResponseBytes = n
	} else {
		ev.Absent |= schemas.MeasureResponseBytes
	}
	if m.cfg.UnitsHeader != "" {
		if s := header(e.Resp, m.cfg.UnitsHeader); s != "" {
			u, err := strconv.ParseFloat(s, 64)
			if err != nil || u < 0 || math.IsInf(u, 0) || math.IsNaN(u) {
				return ev, skip(SkipInvalid, "%s %.40q is not a number of units", m.cfg.UnitsHeader, s)
			}
			ev.Units = u
		}
	}
	for _, f := range [...]struct{ name, v string }{{"api_key_id", ev.APIKeyID}, {"customer_id", ev.CustomerID}} {
		if !utf8.ValidString(f.v) {
			return ev, skip(SkipInvalid, "%s is not UTF-8", f.name)
		}
	}
	return ev, nil
}

// id is the request id Caddy logged, else a hash of the line.
func (m *Mapper) id(resp http.Header, line []byte) string {
	if v := header(resp, m.cfg.IDHeader); v != "" && len(v) <= 128 && printableASCII(v) {
		return v
	}
	sum := sha256.Sum256(line)
	return "caddy-" + hex.EncodeToString(sum[:16])
}

// route names the endpoint of a request URI.
func (m *Mapper) route(uri string) string {
	path, _, _ := strings.Cut(uri, "?")
	if t, ok := m.routes.Match(path); ok {
		return t
	}
	if m.cfg.UnmatchedRoute != "" {
		return m.cfg.UnmatchedRoute
	}
	return cleanRoute(path)
}

// cleanRoute percent-encodes control bytes and bytes >= 0x80 and cuts the
// result to 1024 bytes, as the nginx and HAProxy gateways do.
func cleanRoute(s string) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < 1024; i++ {
		c := s[i]
		if c < 0x20 || c >= 0x7f {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	out := b.String()
	if len(out) > 1024 {
		out = out[:1024]
	}
	return out
}

func header(h http.Header, name string) string {
	if name == "" || h == nil {
		return ""
	}
	if v := h[name]; len(v) > 0 {
		return v[0]
	}
	for k, v := range h { // a log written with other capitalisation
		if strings.EqualFold(k, name) && len(v) > 0 {
			return v[0]
		}
	}
	return ""
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// parseTS reads Caddy's ts: Unix seconds as a number (the default), or an
// RFC 3339 string (time_format rfc3339 and the like).
func parseTS(raw json.RawMessage) (time.Time, error) {
	if len(raw) == 0 {
		return time.Time{}, errors.New("missing")
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return time.Time{}, err
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return time.Time{}, fmt.Errorf("%.40q is neither Unix seconds nor RFC 3339", s)
		}
		return t, nil
	}
	f, err := strconv.ParseFloat(string(raw), 64)
	if err != nil || f <= 0 || f > 1e11 {
		return time.Time{}, fmt.Errorf("%.40s is not a Unix time in seconds", raw)
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), nil
}

// parseDuration reads Caddy's duration: seconds as a number (the default),
// or a Go duration string (duration_format string).
func parseDuration(raw json.RawMessage) (time.Duration, error) {
	if len(raw) == 0 {
		return 0, errors.New("missing")
	}
	var d time.Duration
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, err
		}
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("%.40q is not a duration", s)
		}
	} else {
		f, err := strconv.ParseFloat(string(raw), 64)
		if err != nil || math.IsNaN(f) || f > 1e6 {
			return 0, fmt.Errorf("%.40s is not a number of seconds", raw)
		}
		d = time.Duration(f * float64(time.Second))
	}
	if d < 0 || d > 1e6*time.Second {
		return 0, fmt.Errorf("%s is out of range", d)
	}
	return d, nil
}

// jsonErr shortens a JSON error, which can quote the input.
func jsonErr(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("invalid JSON at byte %d", se.Offset)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("field %q has the wrong type (%s)", te.Field, te.Value)
	}
	return "invalid JSON"
}
