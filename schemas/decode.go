package schemas

import (
	"bytes"
	"errors"
	"fmt"
	"mime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Options configures decoding and validation. The zero value applies the
// defaults; zero or negative fields take their default.
type Options struct {
	// MaxPast is how long before the reference time an event's time may lie.
	// Default 35 days, the oldest usage Stripe accepts.
	MaxPast time.Duration
	// MaxFuture is how long after the reference time an event's time may lie,
	// to absorb gateway clock skew. Default 5 minutes.
	MaxFuture time.Duration
	// MaxProperties caps the entries of an event's properties, including
	// unknown fields kept as properties. Default 32.
	MaxProperties int
	// UnknownFieldsToProperties keeps unknown top-level fields (and
	// CloudEvents extension attributes) whose value is a string, number or
	// boolean as properties, numbers and booleans as their JSON text. When
	// false, the default, an unknown field is an error naming it.
	UnknownFieldsToProperties bool
	// MaxEvents caps the events of one batch. Default 10000.
	MaxEvents int
}

func (o Options) withDefaults() Options {
	if o.MaxPast <= 0 {
		o.MaxPast = defaultMaxPast
	}
	if o.MaxFuture <= 0 {
		o.MaxFuture = defaultMaxFuture
	}
	if o.MaxProperties <= 0 {
		o.MaxProperties = defaultMaxProperties
	}
	if o.MaxEvents <= 0 {
		o.MaxEvents = defaultMaxEvents
	}
	return o
}

// Errors of a whole body; callers branch on them with errors.Is. The messages
// are meant for the sender (they end up in HTTP error bodies), hence no
// package prefix.
var (
	// ErrMalformed means the body cannot be parsed at all (HTTP 400). The
	// wrapping error says what is wrong and where (line, column, byte offset).
	ErrMalformed = errors.New("malformed JSON")
	// ErrUnsupportedMediaType means the Content-Type is not one the decoder
	// reads, or names a charset other than UTF-8 (HTTP 415).
	ErrUnsupportedMediaType = errors.New("unsupported media type (use application/json, application/x-ndjson, application/cloudevents+json or application/cloudevents-batch+json)")
	// ErrTooManyEvents means the batch holds more than Options.MaxEvents
	// events (HTTP 413); none of them was decoded.
	ErrTooManyEvents = errors.New("too many events in one batch")
)

// FieldError names one bad field of one event.
type FieldError struct {
	// Field is the field as the sender wrote it: "status",
	// "properties.plan", and for CloudEvents "subject" or "data.status".
	// It is empty when the problem is the event as a whole (not an object,
	// malformed NDJSON line).
	Field string
	// Message says what is wrong, without repeating the field name.
	Message string
}

// Error formats the error as `field "status": must be ...`.
func (e FieldError) Error() string {
	if e.Field == "" {
		return e.Message
	}
	return "field " + strconv.Quote(e.Field) + ": " + e.Message
}

// EventError is every problem of one event.
type EventError struct {
	// Index is the event's position in its batch (0 for DecodeEvent). For
	// NDJSON it counts non-blank lines.
	Index int
	// Fields lists the problems in the order found; never empty.
	Fields []FieldError
}

// Error formats all problems on one line:
// `event 3: field "status": must be an integer from 100 to 599; field "time": ...`.
func (e *EventError) Error() string {
	var b strings.Builder
	b.WriteString("event ")
	b.WriteString(strconv.Itoa(e.Index))
	b.WriteString(": ")
	for i, f := range e.Fields {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(f.Error())
	}
	return b.String()
}

// Result is the outcome for one event of a batch.
type Result struct {
	// Index is the event's position in the batch.
	Index int
	// Event is the decoded event in canonical form; the zero Event when Err
	// is set.
	Event Event
	// Err is nil or an *EventError.
	Err error
}

// maxFieldErrors bounds the errors reported per event, so that a hostile
// object with thousands of bad keys yields a short answer.
const maxFieldErrors = 20

// Interning: within a batch the same api_key_id, gateway, route, user agent
// and property values repeat on most events; sharing one string per distinct
// value removes most allocations of the decoder. The table is bounded and
// lives in a pooled decoder.
const (
	maxInternLen     = maxUserAgentBytes
	maxInternEntries = 2048
)

// decoder holds the scratch state of one decode call. It is pooled because
// DecodeEvent runs once per Kafka message.
type decoder struct {
	opts    Options // with defaults
	ref     time.Time
	members []member
	kbuf    []byte // unescaped key
	vbuf    []byte // unescaped string value
	ubuf    []byte // sanitized user agent
	errs    []FieldError
	added   []string // property keys taken from unknown fields, this event
	intern  map[string]string
	ips     map[string]string // client_ip as sent -> canonical form
}

var decoderPool = sync.Pool{New: func() any {
	return &decoder{intern: make(map[string]string), ips: make(map[string]string)}
}}

func newDecoder(o Options, ref time.Time) *decoder {
	d := decoderPool.Get().(*decoder)
	d.opts = o.withDefaults()
	d.ref = ref
	return d
}

func (d *decoder) release() {
	// Do not keep what a hostile body made large.
	if cap(d.members) > 1024 {
		d.members = nil
	}
	if cap(d.vbuf) > 64<<10 {
		d.vbuf = nil
	}
	if cap(d.kbuf) > 64<<10 {
		d.kbuf = nil
	}
	clear(d.errs)
	d.errs = d.errs[:0]
	clear(d.added)
	d.added = d.added[:0]
	decoderPool.Put(d)
}

func (d *decoder) internBytes(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if len(b) > maxInternLen {
		return string(b)
	}
	if s, ok := d.intern[string(b)]; ok {
		return s
	}
	if len(d.intern) >= maxInternEntries {
		clear(d.intern)
	}
	s := string(b)
	d.intern[s] = s
	return s
}

// fail records a problem of the current event. The field name is built only
// here, on the error path, so valid events pay no string concatenation.
func (d *decoder) fail(prefix, name, msg string) {
	switch {
	case len(d.errs) < maxFieldErrors:
		d.errs = append(d.errs, FieldError{Field: prefix + name, Message: msg})
	case len(d.errs) == maxFieldErrors:
		d.errs = append(d.errs, FieldError{Message: "further errors not reported"})
	}
}

func (d *decoder) failType(prefix, name, want string, got byte) {
	d.fail(prefix, name, "must be "+want+", got "+kindName(got))
}

func kindName(c byte) string {
	switch c {
	case '"':
		return "string"
	case '{':
		return "object"
	case '[':
		return "array"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	}
	return "number"
}

// key returns the unescaped key of m, valid until the next call.
func (d *decoder) key(data []byte, m *member) []byte {
	raw := data[m.keyStart:m.keyEnd]
	if !m.keyEsc {
		return raw
	}
	d.kbuf = unescape(d.kbuf[:0], raw)
	return d.kbuf
}

// str returns the unescaped content of the string value of m, valid until
// the next call. The caller has checked that the value is a string.
func (d *decoder) str(data []byte, m *member) []byte {
	raw := data[m.valStart+1 : m.valEnd-1]
	if !m.valEsc {
		return raw
	}
	d.vbuf = unescape(d.vbuf[:0], raw)
	return d.vbuf
}

// object records the members of the object at data[i]. The returned slice
// stays valid while later calls append more members after it.
func (d *decoder) object(data []byte, i, limit int) ([]member, int, bool, *syntaxError) {
	base := len(d.members)
	all, end, tooMany, err := parseObject(data, i, d.members, limit)
	d.members = all
	return all[base:], end, tooMany, err
}

// maxMembers bounds the members recorded per event object: the 15 fields,
// unknown fields up to the property limit, and slack for errors to report.
func (d *decoder) maxMembers() int { return 64 + 2*d.opts.MaxProperties }

// event decodes the object at data[i] == '{' into ev and returns the offset
// after it. Problems of the event are left in d.errs; a syntax error means
// the object's extent is unknown and ev is meaningless.
func (d *decoder) event(data []byte, i int, forceCE bool, ev *Event) (int, *syntaxError) {
	d.members = d.members[:0]
	clear(d.errs)
	d.errs = d.errs[:0]
	d.added = d.added[:0]
	ms, end, tooMany, err := d.object(data, i, d.maxMembers())
	if err != nil {
		return 0, err
	}
	if tooMany {
		d.fail("", "", "too many fields (more than "+strconv.Itoa(d.maxMembers())+")")
	}
	ce := forceCE
	for k := range ms {
		if string(d.key(data, &ms[k])) == "specversion" {
			ce = true
			break
		}
	}
	if ce {
		d.cloudEvent(data, ms, ev)
	} else {
		present, bad := d.v1(data, ms, "", ev)
		for f := range numFields {
			if bit := uint32(1) << f; requiredMask&bit != 0 && (present|bad)&bit == 0 {
				d.fail("", v1Fields[f].name, "is required")
			}
		}
	}
	return end, nil
}

// v1 decodes the members of a v1 event object into ev. prefix is prepended to
// field names in errors ("data." inside a CloudEvent). It returns the fields
// that were present with a valid value and those present with an invalid one;
// the caller decides which are required.
func (d *decoder) v1(data []byte, ms []member, prefix string, ev *Event) (present, bad uint32) {
	var seen uint32
	unknown := false
	for k := range ms {
		m := &ms[k]
		f, ok := lookupField(d.key(data, m))
		if !ok {
			unknown = true
			continue
		}
		bit := uint32(1) << f
		if seen&bit != 0 {
			d.fail(prefix, v1Fields[f].name, "duplicate field")
			bad |= bit
			continue
		}
		seen |= bit
		if m.kind(data) == 'n' {
			continue // null means absent
		}
		if d.field(data, m, f, prefix, ev) {
			present |= bit
		} else {
			bad |= bit
		}
	}
	if present&(1<<fUnits) == 0 {
		ev.Units = 1
	}
	ev.Absent = absentMeasures(present)
	// Unknown fields come second so that a clash with an explicit property is
	// always reported on the unknown field, whatever the member order.
	if unknown {
		for k := range ms {
			m := &ms[k]
			key := d.key(data, m)
			if _, ok := lookupField(key); ok {
				continue
			}
			if !d.opts.UnknownFieldsToProperties {
				d.fail(prefix, displayKey(key), "unknown field (put custom dimensions in properties)")
				continue
			}
			d.toProperty(data, m, key, prefix, ev)
		}
	}
	return present, bad
}

// absentMeasures is the set of optional measurements missing from present
// (an absent or null member; an invalid one fails the event anyway).
func absentMeasures(present uint32) Measures {
	var a Measures
	if present&(1<<fLatencyMS) == 0 {
		a |= MeasureLatency
	}
	if present&(1<<fRequestBytes) == 0 {
		a |= MeasureRequestBytes
	}
	if present&(1<<fResponseBytes) == 0 {
		a |= MeasureResponseBytes
	}
	return a
}

// field decodes one known field and reports whether its value was valid.
func (d *decoder) field(data []byte, m *member, f fieldID, prefix string, ev *Event) bool {
	name := v1Fields[f].name
	kind := m.kind(data)
	switch v1Fields[f].jsonType {
	case "string":
		if kind != '"' {
			d.failType(prefix, name, v1Fields[f].want, kind)
			return false
		}
	case "integer", "number":
		if kind != '-' && !isDigit(kind) {
			d.failType(prefix, name, v1Fields[f].want, kind)
			return false
		}
	case "object":
		if kind != '{' {
			d.failType(prefix, name, v1Fields[f].want, kind)
			return false
		}
	}
	raw := data[m.valStart:m.valEnd]
	msg := ""
	switch f {
	case fID, fAPIKeyID:
		b := d.str(data, m)
		if msg = textRule(b, 1, maxIDBytes); msg == "" {
			if f == fID {
				ev.ID = string(b) // unique per event: interning would only fill the table
			} else {
				ev.APIKeyID = d.internBytes(b)
			}
		}
	case fCustomerID, fGateway, fRoute:
		b := d.str(data, m)
		limit := maxNameBytes
		if f == fRoute {
			limit = maxRouteBytes
		}
		if msg = textRule(b, 0, limit); msg == "" {
			s := d.internBytes(b)
			switch f {
			case fCustomerID:
				ev.CustomerID = s
			case fGateway:
				ev.Gateway = s
			default:
				ev.Route = s
			}
		}
	case fTime:
		t, ok := parseTime(d.str(data, m))
		if !ok {
			msg = "must be an RFC 3339 timestamp such as 2026-11-23T15:04:05.123Z"
		} else if msg = timeWindowRule(t, d.ref, d.opts.MaxPast, d.opts.MaxFuture); msg == "" {
			ev.Time = t
		}
	case fMethod:
		var buf [maxMethodLen]byte
		var up []byte
		if up, msg = methodRule(&buf, d.str(data, m)); msg == "" {
			ev.Method = d.internBytes(up)
		}
	case fStatus:
		v, ok := jsonInt(raw)
		if !ok {
			msg = statusRuleMsg
		} else if msg = statusRule(v); msg == "" {
			ev.Status = int(v)
		}
	case fRequestBytes, fResponseBytes:
		v, ok := jsonInt(raw)
		if !ok || v < 0 {
			msg = bytesRuleMsg
		} else if f == fRequestBytes {
			ev.RequestBytes = uint64(v)
		} else {
			ev.ResponseBytes = uint64(v)
		}
	case fLatencyMS:
		v, ok := jsonFloat(raw)
		if !ok {
			msg = latencyRuleMsg
		} else if msg = latencyRule(v); msg == "" {
			ev.LatencyMS = v + 0 // + 0 turns -0 into 0
		}
	case fUnits:
		v, ok := jsonFloat(raw)
		if !ok {
			msg = unitsRuleMsg
		} else if v, msg = unitsRule(v); msg == "" {
			ev.Units = v
		}
	case fClientIP:
		msg = d.clientIP(d.str(data, m), ev)
	case fUserAgent:
		ua, changed := sanitizeUserAgent(d.ubuf[:0], d.str(data, m))
		if changed {
			d.ubuf = ua // keep the grown buffer; an unchanged ua aliases the input
		}
		ev.UserAgent = d.internBytes(ua)
	case fProperties:
		return d.properties(data, m, prefix, ev)
	}
	if msg != "" {
		d.fail(prefix, name, msg)
		return false
	}
	return true
}

// clientIP validates and canonicalises an address, caching the result:
// netip.ParseAddr allocates for every input, and the same clients recur.
func (d *decoder) clientIP(b []byte, ev *Event) string {
	if s, ok := d.ips[string(b)]; ok {
		ev.ClientIP = s
		return ""
	}
	a, msg := clientIPRule(string(b))
	if msg != "" {
		return msg
	}
	var buf [64]byte
	s := d.internBytes(a.AppendTo(buf[:0]))
	if len(d.ips) >= maxInternEntries {
		clear(d.ips)
	}
	d.ips[string(b)] = s
	ev.ClientIP = s
	return ""
}

func (d *decoder) properties(data []byte, m *member, prefix string, ev *Event) bool {
	limit := d.opts.MaxProperties
	pms, _, tooMany, _ := d.object(data, m.valStart, limit+1) // syntax checked already
	if tooMany || len(pms) > limit {
		d.fail(prefix, "properties", "must have at most "+strconv.Itoa(limit)+" entries")
		return false
	}
	if len(pms) == 0 {
		ev.Properties = nil
		return true
	}
	props := make(map[string]string, len(pms))
	ok := true
	for k := range pms {
		pm := &pms[k]
		key := d.key(data, pm)
		if msg := propertyKeyRule(key); msg != "" {
			d.fail(prefix, "properties."+displayKey(key), msg)
			ok = false
			continue
		}
		if kind := pm.kind(data); kind != '"' {
			d.failType(prefix, "properties."+string(key), "a string", kind)
			ok = false
			continue
		}
		v := d.str(data, pm)
		if msg := propertyValueRule(v); msg != "" {
			d.fail(prefix, "properties."+string(key), msg)
			ok = false
			continue
		}
		ks := d.internBytes(key)
		if _, dup := props[ks]; dup {
			d.fail(prefix, "properties."+ks, "duplicate key")
			ok = false
			continue
		}
		props[ks] = d.internBytes(v)
	}
	ev.Properties = props
	return ok
}

// toProperty keeps an unknown field (or CloudEvents extension) as a property.
func (d *decoder) toProperty(data []byte, m *member, key []byte, prefix string, ev *Event) {
	kind := m.kind(data)
	if kind == 'n' {
		return
	}
	if msg := propertyKeyRule(key); msg != "" {
		d.fail(prefix, displayKey(key), "unknown field cannot be kept as a property: "+msg)
		return
	}
	ks := d.internBytes(key)
	var val string
	switch kind {
	case '"':
		v := d.str(data, m)
		if msg := propertyValueRule(v); msg != "" {
			d.fail(prefix, ks, msg)
			return
		}
		val = d.internBytes(v)
	case 't':
		val = "true"
	case 'f':
		val = "false"
	case '{', '[':
		d.failType(prefix, ks, "a string, number or boolean to be kept as a property", kind)
		return
	default: // a number: its text as sent, so 1.50 stays 1.50
		raw := data[m.valStart:m.valEnd]
		if len(raw) > maxPropertyValueBytes {
			d.fail(prefix, ks, "must be at most "+strconv.Itoa(maxPropertyValueBytes)+" bytes as text")
			return
		}
		val = d.internBytes(raw)
	}
	if _, exists := ev.Properties[ks]; exists {
		if slices.Contains(d.added, ks) {
			d.fail(prefix, ks, "duplicate field")
		} else {
			d.fail(prefix, ks, "conflicts with properties."+ks)
		}
		return
	}
	if len(ev.Properties) >= d.opts.MaxProperties {
		d.fail(prefix, ks, "cannot be kept as a property: more than "+strconv.Itoa(d.opts.MaxProperties)+" properties")
		return
	}
	if ev.Properties == nil {
		ev.Properties = make(map[string]string, 4)
	}
	ev.Properties[ks] = val
	d.added = append(d.added, ks)
}

// takeErr turns the problems of the current event into its error.
func (d *decoder) takeErr(index int) *EventError {
	if len(d.errs) == 0 {
		return nil
	}
	return &EventError{Index: index, Fields: slices.Clone(d.errs)}
}

// DecodeEvent decodes and validates one v1 event (or one structured
// CloudEvent, recognised by its specversion member), as produced to Kafka.
// ref is the reference time of the time window, normally the time the event
// was received; the zero time disables the window check.
//
// The error is an *EventError (Index 0) listing every bad field, or wraps
// ErrMalformed when data is not one JSON object.
func (o Options) DecodeEvent(data []byte, ref time.Time) (Event, error) {
	d := newDecoder(o, ref)
	defer d.release()
	i := skipSpace(data, skipBOM(data))
	if i >= len(data) || data[i] != '{' {
		return Event{}, malformed(data, i, "expected a JSON object")
	}
	var ev Event
	end, serr := d.event(data, i, false, &ev)
	if serr != nil {
		return Event{}, malformed(data, serr.off, serr.msg)
	}
	if end = skipSpace(data, end); end != len(data) {
		return Event{}, malformed(data, end, "unexpected data after the JSON object")
	}
	if err := d.takeErr(0); err != nil {
		return Event{}, err
	}
	return ev, nil
}

type mediaKind uint8

const (
	mediaJSON mediaKind = iota
	mediaNDJSON
	mediaCloudEvent
	mediaCloudEventBatch
)

// parseContentType maps a Content-Type header to the body format.
func parseContentType(ct string) (mediaKind, error) {
	switch ct {
	case "", "application/json":
		return mediaJSON, nil
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return 0, fmt.Errorf("%w: content type %q: %v", ErrUnsupportedMediaType, ct, err)
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") && !strings.EqualFold(cs, "utf8") {
		return 0, fmt.Errorf("%w: charset %q (only utf-8 is accepted)", ErrUnsupportedMediaType, cs)
	}
	switch mt {
	case "application/json":
		return mediaJSON, nil
	case "application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines":
		return mediaNDJSON, nil
	case "application/cloudevents+json":
		return mediaCloudEvent, nil
	case "application/cloudevents-batch+json":
		return mediaCloudEventBatch, nil
	}
	return 0, fmt.Errorf("%w: %q", ErrUnsupportedMediaType, mt)
}

// DecodeBatch decodes and validates the body of a POST /v1/events request.
// contentType is the raw Content-Type header; empty means application/json.
// ref is the reference time of the time window, normally the time the request
// arrived; the zero time disables the window check.
//
// Accepted bodies:
//   - application/json: an array of events or a single event object; an
//     object with a specversion member is read as a structured CloudEvent;
//   - application/x-ndjson (also application/ndjson, application/jsonl,
//     application/x-jsonlines): one event object per line, blank lines
//     skipped and not counted in indexes;
//   - application/cloudevents+json: one structured CloudEvent;
//   - application/cloudevents-batch+json: an array of structured CloudEvents.
//
// There is one Result per event, in body order, valid and invalid alike, so
// that one bad event never costs the others. The error is for the whole body:
// ErrUnsupportedMediaType, ErrTooManyEvents, or one wrapping ErrMalformed
// with the position of the problem. An NDJSON body is malformed only when no
// line at all is a JSON value (a JSON array sent as NDJSON, binary data);
// otherwise each broken line is an error of that event.
func (o Options) DecodeBatch(contentType string, body []byte, ref time.Time) ([]Result, error) {
	kind, err := parseContentType(contentType)
	if err != nil {
		return nil, err
	}
	d := newDecoder(o, ref)
	defer d.release()
	if kind == mediaNDJSON {
		return d.ndjson(body)
	}
	return d.jsonBody(body, kind)
}

func (d *decoder) jsonBody(body []byte, kind mediaKind) ([]Result, error) {
	forceCE := kind == mediaCloudEvent || kind == mediaCloudEventBatch
	i := skipSpace(body, skipBOM(body))
	if i >= len(body) {
		return nil, malformed(body, i, "empty body")
	}
	var results []Result
	switch {
	case body[i] == '{' && kind != mediaCloudEventBatch:
		results = make([]Result, 1)
		end, serr := d.event(body, i, forceCE, &results[0].Event)
		if serr != nil {
			return nil, malformed(body, serr.off, serr.msg)
		}
		d.finish(&results[0], 0)
		i = end
	case body[i] == '[' && kind != mediaCloudEvent:
		var err error
		if results, i, err = d.array(body, i, forceCE); err != nil {
			return nil, err
		}
	case kind == mediaCloudEvent:
		return nil, malformed(body, i, "expected a JSON object (one structured CloudEvent)")
	case kind == mediaCloudEventBatch:
		return nil, malformed(body, i, "expected a JSON array of CloudEvents")
	default:
		return nil, malformed(body, i, "expected a JSON array of events or an event object")
	}
	if i = skipSpace(body, i); i != len(body) {
		return nil, malformed(body, i, "unexpected data after the JSON value")
	}
	return results, nil
}

// array decodes the events of the array at body[i] == '['.
func (d *decoder) array(body []byte, i int, forceCE bool) ([]Result, int, error) {
	// Events are 150-500 bytes; start with room for the likely count so the
	// slice of large Results grows once or twice, not ten times.
	results := make([]Result, 0, min(d.opts.MaxEvents, len(body)/256+1))
	i = skipSpace(body, i+1)
	if i < len(body) && body[i] == ']' {
		return results, i + 1, nil
	}
	for idx := 0; ; idx++ {
		if idx >= d.opts.MaxEvents {
			return nil, 0, fmt.Errorf("%w: more than %d", ErrTooManyEvents, d.opts.MaxEvents)
		}
		results = append(results, Result{Index: idx})
		r := &results[idx]
		if i < len(body) && body[i] == '{' {
			end, serr := d.event(body, i, forceCE, &r.Event)
			if serr != nil {
				return nil, 0, malformed(body, serr.off, serr.msg)
			}
			d.finish(r, idx)
			i = end
		} else {
			end, serr := skipValue(body, i)
			if serr != nil {
				return nil, 0, malformed(body, serr.off, serr.msg)
			}
			r.Err = &EventError{Index: idx, Fields: []FieldError{{Message: "must be a JSON object, got " + kindName(body[i])}}}
			i = end
		}
		i = skipSpace(body, i)
		if i >= len(body) {
			return nil, 0, malformed(body, i, "unexpected end of input in an unclosed array")
		}
		switch body[i] {
		case ',':
			i = skipSpace(body, i+1)
		case ']':
			return results, i + 1, nil
		default:
			return nil, 0, malformed(body, i, "invalid character "+quoteByte(body[i])+", expected ',' or ']'")
		}
	}
}

// finish sets the error of a decoded event; an invalid event carries no data,
// so nothing half-validated can be used by mistake.
func (d *decoder) finish(r *Result, idx int) {
	if err := d.takeErr(idx); err != nil {
		r.Event = Event{}
		r.Err = err
	}
}

// ndjson decodes one event per line. A line that is not valid JSON is an
// error of that event only, because NDJSON lines are independent and the
// others can still be read; see DecodeBatch for when the whole body fails.
func (d *decoder) ndjson(body []byte) ([]Result, error) {
	body = body[skipBOM(body):]
	n := 0
	for rest := body; len(rest) > 0; {
		line := rest
		if j := bytes.IndexByte(rest, '\n'); j >= 0 {
			line, rest = rest[:j], rest[j+1:]
		} else {
			rest = nil
		}
		if skipSpace(line, 0) < len(line) {
			n++
		}
	}
	if n > d.opts.MaxEvents {
		return nil, fmt.Errorf("%w: %d lines, more than %d", ErrTooManyEvents, n, d.opts.MaxEvents)
	}
	results := make([]Result, 0, n)
	parsed := false
	var firstErr error
	lineStart := 0
	for lineStart < len(body) {
		lineEnd := len(body)
		if j := bytes.IndexByte(body[lineStart:], '\n'); j >= 0 {
			lineEnd = lineStart + j
		}
		line := body[lineStart:lineEnd]
		lineOff := lineStart
		lineStart = lineEnd + 1
		i := skipSpace(line, 0)
		if i == len(line) {
			continue
		}
		idx := len(results)
		results = append(results, Result{Index: idx})
		r := &results[idx]
		var serr *syntaxError
		end := 0
		if line[i] == '{' {
			end, serr = d.event(line, i, false, &r.Event)
		} else {
			end, serr = skipValue(line, i)
		}
		if serr == nil {
			if end = skipSpace(line, end); end != len(line) {
				serr = &syntaxError{end, "unexpected data after the JSON value"}
			}
		}
		switch {
		case serr != nil:
			r.Event = Event{}
			r.Err = &EventError{Index: idx, Fields: []FieldError{{
				Message: "malformed JSON at column " + strconv.Itoa(serr.off+1) + ": " + serr.msg,
			}}}
			if firstErr == nil {
				firstErr = malformed(body, lineOff+serr.off, serr.msg)
			}
		case line[i] != '{':
			parsed = true
			r.Err = &EventError{Index: idx, Fields: []FieldError{{
				Message: "must be a JSON object, got " + kindName(line[i]) + " (NDJSON holds one event object per line)",
			}}}
		default:
			parsed = true
			d.finish(r, idx)
		}
	}
	if len(results) > 0 && !parsed {
		return nil, firstErr
	}
	return results, nil
}

// malformed wraps ErrMalformed with the position of the problem, in the
// terms an editor shows (1-based line and column) and as a byte offset.
func malformed(body []byte, off int, msg string) error {
	off = min(max(off, 0), len(body))
	line := 1 + bytes.Count(body[:off], []byte{'\n'})
	col := off - bytes.LastIndexByte(body[:off], '\n')
	return fmt.Errorf("%w: %s at line %d, column %d (byte offset %d)", ErrMalformed, msg, line, col, off)
}
