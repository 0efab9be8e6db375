package schemas

import (
	"math"
	"net/netip"
	"strconv"
	"time"
	"unicode/utf8"
)

// Limits of the v1 event. They are part of the public contract (the JSON
// Schema states them too), so changing one is a schema change.
const (
	maxIDBytes            = 128
	maxAPIKeyIDBytes      = 128
	maxNameBytes          = 128 // customer_id, gateway
	maxMethodLen          = 16
	maxRouteBytes         = 1024
	maxUserAgentBytes     = 512
	maxLatencyMS          = 86_400_000 // one day
	maxByteCount          = 1 << 53    // largest integer every JSON parser reads exactly
	maxUnits              = 1e12       // exclusive: units are stored as Decimal(18,6), 12 integer digits
	maxPropertyKeyBytes   = 64
	maxPropertyValueBytes = 256
)

// Defaults of Options.
const (
	defaultMaxPast       = 35 * 24 * time.Hour // Stripe accepts meter events up to 35 days old
	defaultMaxFuture     = 5 * time.Minute     // and up to 5 minutes ahead
	defaultMaxProperties = 32
	defaultMaxEvents     = 10000
)

// fieldID numbers the v1 fields so that presence and duplicates are tracked
// in a bit mask instead of a map.
type fieldID uint8

const (
	fID fieldID = iota
	fTime
	fAPIKeyID
	fCustomerID
	fGateway
	fMethod
	fRoute
	fStatus
	fLatencyMS
	fRequestBytes
	fResponseBytes
	fClientIP
	fUserAgent
	fUnits
	fProperties
	numFields
)

// fieldSpec is what the validator knows about a field; schema_test.go checks
// it against event.schema.json and the Event struct tags so they cannot drift.
type fieldSpec struct {
	name     string
	required bool
	want     string // the expected JSON type, as error messages phrase it
	jsonType string // the JSON Schema type (without the "null" of optional fields)
}

var v1Fields = [numFields]fieldSpec{
	fID:            {"id", true, "a string", "string"},
	fTime:          {"time", true, "an RFC 3339 timestamp string", "string"},
	fAPIKeyID:      {"api_key_id", true, "a string", "string"},
	fCustomerID:    {"customer_id", false, "a string", "string"},
	fGateway:       {"gateway", false, "a string", "string"},
	fMethod:        {"method", false, "a string", "string"},
	fRoute:         {"route", false, "a string", "string"},
	fStatus:        {"status", true, "an integer", "integer"},
	fLatencyMS:     {"latency_ms", false, "a number", "number"},
	fRequestBytes:  {"request_bytes", false, "an integer", "integer"},
	fResponseBytes: {"response_bytes", false, "an integer", "integer"},
	fClientIP:      {"client_ip", false, "a string", "string"},
	fUserAgent:     {"user_agent", false, "a string", "string"},
	fUnits:         {"units", false, "a number", "number"},
	fProperties:    {"properties", false, "an object", "object"},
}

// requiredMask has a bit set for each required field.
var requiredMask = func() (m uint32) {
	for f, s := range v1Fields {
		if s.required {
			m |= 1 << f
		}
	}
	return m
}()

func lookupField(key []byte) (fieldID, bool) {
	switch string(key) {
	case "id":
		return fID, true
	case "time":
		return fTime, true
	case "api_key_id":
		return fAPIKeyID, true
	case "customer_id":
		return fCustomerID, true
	case "gateway":
		return fGateway, true
	case "method":
		return fMethod, true
	case "route":
		return fRoute, true
	case "status":
		return fStatus, true
	case "latency_ms":
		return fLatencyMS, true
	case "request_bytes":
		return fRequestBytes, true
	case "response_bytes":
		return fResponseBytes, true
	case "client_ip":
		return fClientIP, true
	case "user_agent":
		return fUserAgent, true
	case "units":
		return fUnits, true
	case "properties":
		return fProperties, true
	}
	return 0, false
}

// The rule functions below return "" when the value is acceptable and the
// error message otherwise. They are shared by the decoder and by
// Options.Normalize, so both paths apply exactly the same rules.

// textRule checks a string's byte length and that it is printable UTF-8.
// Lengths are in bytes because that is what ClickHouse and Kafka count.
func textRule(b []byte, minLen, maxLen int) string {
	if len(b) < minLen {
		return "must not be empty"
	}
	if len(b) > maxLen {
		return "must be at most " + strconv.Itoa(maxLen) + " bytes, got " + strconv.Itoa(len(b))
	}
	return printableRule(b)
}

// printableRule rejects invalid UTF-8 and control characters (C0, DEL, C1):
// they break log lines, CSV exports and terminal output downstream, and no
// legitimate id, route or property value contains them.
func printableRule(b []byte) string {
	for i := 0; i < len(b); {
		c := b[i]
		if c < utf8.RuneSelf {
			if c < 0x20 || c == 0x7F {
				return "must not contain control characters"
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && size == 1 {
			return "must be valid UTF-8"
		}
		if r >= 0x80 && r <= 0x9F {
			return "must not contain control characters"
		}
		i += size
	}
	return ""
}

const methodRuleMsg = "must be an HTTP method: 1 to 16 letters A-Z"

// methodRule upper-cases an HTTP method token into buf. Lowercase is
// accepted because some gateways log methods as they received them.
func methodRule(buf *[maxMethodLen]byte, b []byte) ([]byte, string) {
	if len(b) == 0 || len(b) > maxMethodLen {
		return nil, methodRuleMsg
	}
	for i, c := range b {
		switch {
		case c >= 'A' && c <= 'Z':
			buf[i] = c
		case c >= 'a' && c <= 'z':
			buf[i] = c - ('a' - 'A')
		default:
			return nil, methodRuleMsg
		}
	}
	return buf[:len(b)], ""
}

// clientIPRule parses an IPv4 or IPv6 address. Zones are rejected: a link-local
// zone names an interface of the gateway's host and means nothing here.
func clientIPRule(s string) (netip.Addr, string) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, "must be an IPv4 or IPv6 address"
	}
	if a.Zone() != "" {
		return netip.Addr{}, "must be an IPv4 or IPv6 address without a zone"
	}
	return a, ""
}

// sanitizeUserAgent replaces invalid UTF-8 and control characters with
// U+FFFD and truncates to maxUserAgentBytes on a character boundary. The user
// agent is the one free-text field that is never a reason to reject an event:
// it is informational, often long and sometimes mangled by clients, and losing
// a billable request over it is worse than storing it shortened. It returns b
// itself, and changed false, when nothing needs to change.
func sanitizeUserAgent(dst, b []byte) (out []byte, changed bool) {
	if len(b) <= maxUserAgentBytes && printableRule(b) == "" {
		return b, false
	}
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		if r < 0x20 || r >= 0x7F && r <= 0x9F || r == utf8.RuneError && size == 1 {
			if isSurrogateUTF8(b[i:]) {
				size = 3 // one replacement for an unpaired \uD800-style escape, not three
			}
			if len(dst)+3 > maxUserAgentBytes {
				break
			}
			dst = utf8.AppendRune(dst, utf8.RuneError)
		} else {
			if len(dst)+size > maxUserAgentBytes {
				break
			}
			dst = append(dst, b[i:i+size]...)
		}
		i += size
	}
	return dst, true
}

// isSurrogateUTF8 reports whether b starts with the 3-byte encoding of a
// UTF-16 surrogate, which is how unescape writes an unpaired \uD800.
func isSurrogateUTF8(b []byte) bool {
	return len(b) >= 3 && b[0] == 0xED && b[1] >= 0xA0 && b[1] <= 0xBF && b[2] >= 0x80 && b[2] <= 0xBF
}

// propertyKeyRule allows the characters that are safe in ClickHouse map keys,
// Prometheus-style label names, CSV headers and URLs alike.
func propertyKeyRule(k []byte) string {
	if len(k) == 0 {
		return "property key must not be empty"
	}
	if len(k) > maxPropertyKeyBytes {
		return "property key must be at most " + strconv.Itoa(maxPropertyKeyBytes) + " bytes"
	}
	for _, c := range k {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == ':' || c == '-') {
			return "property key must match [A-Za-z0-9_.:-]+"
		}
	}
	return ""
}

func propertyValueRule(v []byte) string {
	return textRule(v, 0, maxPropertyValueBytes)
}

const statusRuleMsg = "must be an integer from 100 to 599"

func statusRule(v int64) string {
	if v < 100 || v > 599 {
		return statusRuleMsg
	}
	return ""
}

const (
	latencyRuleMsg = "must be a number from 0 to 86400000"
	bytesRuleMsg   = "must be an integer from 0 to 9007199254740992"
	unitsRuleMsg   = "must be a number from 0 to less than 1000000000000"
)

func latencyRule(f float64) string {
	if !(f >= 0 && f <= maxLatencyMS) { // also false for NaN
		return latencyRuleMsg
	}
	return ""
}

// unitsRule rounds units to the 6 decimal places that Decimal(18,6) keeps, so
// that what is validated, sent to Kafka and summed is what gets stored.
func unitsRule(u float64) (float64, string) {
	if !(u >= 0 && u < maxUnits) {
		return 0, unitsRuleMsg
	}
	u = roundUnits(u)
	if u >= maxUnits {
		return 0, unitsRuleMsg
	}
	return u + 0, "" // + 0 turns -0 into 0
}

// roundUnits rounds to 6 decimal places through the decimal text rather than
// with math.Round(u*1e6)/1e6, which loses digits once u*1e6 exceeds 2^52.
// Formatting to a stack buffer keeps it allocation-free.
func roundUnits(u float64) float64 {
	if u == math.Trunc(u) {
		return u
	}
	var buf [40]byte
	s := strconv.AppendFloat(buf[:0], u, 'f', 6, 64)
	r, err := strconv.ParseFloat(string(s), 64)
	if err != nil {
		return u
	}
	return r
}

// timeWindowRule rejects times outside [ref-maxPast, ref+maxFuture]. A zero
// ref disables the check, for tools that re-validate stored or backfilled
// events and have no meaningful "now".
func timeWindowRule(t, ref time.Time, maxPast, maxFuture time.Duration) string {
	if ref.IsZero() {
		return ""
	}
	if lo := ref.Add(-maxPast); t.Before(lo) {
		return "is more than " + humanDuration(maxPast) + " before the reference time (accepted from " + lo.UTC().Format(time.RFC3339) + ")"
	}
	if hi := ref.Add(maxFuture); t.After(hi) {
		return "is more than " + humanDuration(maxFuture) + " after the reference time (accepted until " + hi.UTC().Format(time.RFC3339) + ")"
	}
	return ""
}

func humanDuration(d time.Duration) string {
	const day = 24 * time.Hour
	if d >= day && d%day == 0 {
		return strconv.FormatInt(int64(d/day), 10) + " days"
	}
	return d.String()
}

// jsonInt reads a JSON number that must be an integer. Like JSON Schema's
// "integer", a number with a zero fraction (200.0, 2e2) counts; 200.5 does
// not. ok is false for fractions and for magnitudes beyond 2^53, which not
// every JSON parser reads exactly.
func jsonInt(raw []byte) (int64, bool) {
	neg := raw[0] == '-'
	digits := raw
	if neg {
		digits = raw[1:]
	}
	plain := true
	for _, c := range digits {
		if !isDigit(c) {
			plain = false
			break
		}
	}
	if plain {
		if len(digits) > 16 { // 2^53 has 16 digits
			return 0, false
		}
		var v int64
		for _, c := range digits {
			v = v*10 + int64(c-'0')
		}
		if v > maxByteCount {
			return 0, false
		}
		if neg {
			v = -v
		}
		return v, true
	}
	f, ok := jsonFloat(raw)
	if !ok || f != math.Trunc(f) || math.Abs(f) > maxByteCount {
		return 0, false
	}
	return int64(f), true
}

// jsonFloat reads a JSON number; ok is false when it overflows float64
// (1e400). Underflow (1e-400) reads as 0, as in every JSON parser.
func jsonFloat(raw []byte) (float64, bool) {
	f, err := strconv.ParseFloat(string(raw), 64)
	if err != nil {
		return 0, false
	}
	return f, true
}

// displayKey makes a sender-supplied key safe to echo in an error message:
// short, valid UTF-8, no control characters.
func displayKey(k []byte) string {
	const maxShown = 64
	if len(k) <= maxShown && printableRule(k) == "" {
		return string(k)
	}
	out := make([]byte, 0, maxShown+3)
	for i := 0; i < len(k); {
		r, size := utf8.DecodeRune(k[i:])
		if r < 0x20 || r >= 0x7F && r <= 0x9F || r == utf8.RuneError && size == 1 {
			r = utf8.RuneError
		}
		if len(out)+utf8.RuneLen(r) > maxShown {
			return string(out) + "…"
		}
		out = utf8.AppendRune(out, r)
		i += size
	}
	return string(out)
}

// IsField reports whether name is a top-level field of the v1 event (for
// bounded metric labels and the like).
func IsField(name string) bool {
	_, ok := lookupField([]byte(name))
	return ok
}
