package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/netip"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/schemas"
)

// AnonymizeDeadLetters rewrites dead letters before they are written to the
// dead-letter topic, so that it holds what the raw table may hold and no
// more: the value through DeadLetterValue, and every header value (the
// producer's own headers are copied into a dead letter) with the IP
// addresses in it anonymised. now stands in for the event time of a value
// that carries none (it picks the pseudonym period in hash mode).
func (a Anonymizer) AnonymizeDeadLetters(dead []kafka.Message, now time.Time) {
	for i := range dead {
		dead[i].Value = a.DeadLetterValue(dead[i].Value, now)
		for j := range dead[i].Headers {
			if sinkHeaders[dead[i].Headers[j].Key] {
				continue // written by the sink: positions, classes, times
			}
			dead[i].Headers[j].Value = a.scrubText(dead[i].Headers[j].Value, now)
		}
	}
}

// sinkHeaders are the headers the sink itself sets on a dead letter; they
// hold no personal data (the error text, HeaderError, may quote a value,
// so it is scrubbed like the producer's headers) and dlq list, show and
// replay read them, so they are kept byte for byte.
var sinkHeaders = map[string]bool{
	HeaderSource: true, HeaderDeadAt: true, HeaderErrorReason: true,
	HeaderTruncated: true, HeaderOriginalSize: true, HeaderReplayedFrom: true,
}

// identityMembers are the top-level members that identify an event and
// that the raw table stores as they are: a dead letter keeps them byte for
// byte, so a replay after a fix is the same event (the same id counts
// once) and bills the same key. CloudEvents carry the id and key as id and
// subject.
var identityMembers = map[string]bool{
	"id": true, "time": true, "api_key_id": true, "customer_id": true,
	"subject": true, "specversion": true, "type": true, "source": true,
}

// DeadLetterValue returns a message value as it may be kept in the
// dead-letter topic. A value that is JSON keeps its content and member
// order, with what the anonymiser removes from a stored event removed at
// any depth: a client_ip that reads as an address is anonymised (dropped
// in drop mode), one that does not is dropped (it cannot be told
// harmless); user_agent is cut to user_agent_max_bytes; properties and any
// other member whose name matches deny_properties are dropped; any other
// string has its IP addresses anonymised. A value that is not JSON (cut
// short, another format) is kept as it is, except that every run of it
// that reads as an IP address is anonymised: it may still hold other
// personal data, which no rule can find in free text.
func (a Anonymizer) DeadLetterValue(v []byte, now time.Time) []byte {
	if !utf8.Valid(v) {
		return a.scrubText(v, now)
	}
	dec := json.NewDecoder(bytes.NewReader(v))
	dec.UseNumber()
	doc, err := decodeOrdered(dec, 0)
	if err != nil {
		return a.scrubText(v, now)
	}
	if _, err := dec.Token(); err != io.EOF {
		return a.scrubText(v, now) // trailing data
	}
	at := now
	if obj, ok := doc.(jsonObject); ok {
		for _, m := range obj {
			if s, ok := m.val.(string); ok && m.key == "time" {
				if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
					at = t
				}
			}
		}
	}
	var buf bytes.Buffer
	buf.Grow(len(v))
	if err := encodeOrdered(&buf, a.scrubTop(doc, at)); err != nil {
		return a.scrubText(v, now)
	}
	return buf.Bytes()
}

// jsonObject is a JSON object with its members in order (duplicates kept).
type jsonObject []jsonMember

type jsonMember struct {
	key string
	val any
}

// maxDeadLetterDepth bounds the nesting decodeOrdered follows; deeper
// values are treated as text.
const maxDeadLetterDepth = 1000

var errTooDeep = errors.New("nested too deep")

// decodeOrdered reads one JSON value: jsonObject, []any, string,
// json.Number, bool or nil.
func decodeOrdered(dec *json.Decoder, depth int) (any, error) {
	if depth > maxDeadLetterDepth {
		return nil, errTooDeep
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch tok {
	case json.Delim('{'):
		obj := jsonObject{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return nil, err
			}
			k, _ := kt.(string)
			v, err := decodeOrdered(dec, depth+1)
			if err != nil {
				return nil, err
			}
			obj = append(obj, jsonMember{k, v})
		}
		_, err := dec.Token() // }
		return obj, err
	case json.Delim('['):
		arr := []any{}
		for dec.More() {
			v, err := decodeOrdered(dec, depth+1)
			if err != nil {
				return nil, err
			}
			arr = append(arr, v)
		}
		_, err := dec.Token() // ]
		return arr, err
	}
	return tok, nil
}

func encodeOrdered(buf *bytes.Buffer, v any) error {
	switch x := v.(type) {
	case jsonObject:
		buf.WriteByte('{')
		for i, m := range x {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := encodeOrdered(buf, m.key); err != nil {
				return err
			}
			buf.WriteByte(':')
			if err := encodeOrdered(buf, m.val); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
	case []any:
		buf.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := encodeOrdered(buf, e); err != nil {
				return err
			}
		}
		buf.WriteByte(']')
	case json.Number:
		buf.WriteString(string(x))
	default:
		enc := json.NewEncoder(buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(x); err != nil {
			return err
		}
		buf.Truncate(buf.Len() - 1) // Encode's newline
	}
	return nil
}

// scrubTop is scrubJSON for the whole message, keeping the identity
// members of a top-level object as they are.
func (a Anonymizer) scrubTop(v any, at time.Time) any {
	obj, ok := v.(jsonObject)
	if !ok {
		return a.scrubJSON(v, at)
	}
	out := jsonObject{}
	for _, m := range obj {
		if identityMembers[m.key] {
			out = append(out, m)
			continue
		}
		out = append(out, a.scrubJSON(jsonObject{m}, at).(jsonObject)...)
	}
	return out
}

func (a Anonymizer) scrubJSON(v any, at time.Time) any {
	switch x := v.(type) {
	case jsonObject:
		out := x[:0]
		for _, m := range x {
			switch {
			case m.key == "client_ip":
				s, ok := m.val.(string)
				if !ok {
					continue
				}
				ip, err := netip.ParseAddr(s)
				if err != nil {
					continue
				}
				anon, err := a.anonymizeAddr(ip, at)
				if err != nil || anon == "" {
					continue
				}
				m.val = anon
			case m.key == "user_agent":
				s, ok := m.val.(string)
				if !ok || a.UserAgentMaxBytes < 0 {
					continue
				}
				m.val = a.scrubString(a.cutUserAgent(s), at)
			case !schemas.IsField(m.key) && a.denied(m.key):
				continue
			case m.key == "properties":
				if _, ok := m.val.(jsonObject); !ok {
					continue // not the contract's object: nothing tells what it holds
				}
				m.val = a.scrubJSON(m.val, at)
			default:
				m.val = a.scrubJSON(m.val, at)
			}
			out = append(out, m)
		}
		return out
	case []any:
		for i := range x {
			x[i] = a.scrubJSON(x[i], at)
		}
		return x
	case string:
		return a.scrubString(x, at)
	}
	return v
}

// addrRun finds runs of text that may be IP addresses: hex digits, dots
// and colons. Each run is tried whole, then for the dotted quads inside it
// (203.0.113.77:443).
var (
	addrRun    = regexp.MustCompile(`[0-9A-Fa-f.:]{2,}`)
	dottedQuad = regexp.MustCompile(`(?:[0-9]{1,3}\.){3}[0-9]{1,3}`)
)

func (a Anonymizer) scrubString(s string, at time.Time) string {
	return string(a.scrubText([]byte(s), at))
}

// scrubText anonymises every run of b that reads as an IP address.
func (a Anonymizer) scrubText(b []byte, at time.Time) []byte {
	return addrRun.ReplaceAllFunc(b, func(run []byte) []byte {
		// An IPv6 address in free text has at least three colons or a
		// dotted IPv4 part; shorter runs are words ("DB::Exception").
		if ip, err := netip.ParseAddr(string(run)); err == nil && (strings.Contains(string(run), ".") || strings.Count(string(run), ":") >= 3) {
			out, err := a.anonymizeAddr(ip, at)
			if err != nil {
				return nil
			}
			return []byte(out)
		}
		return dottedQuad.ReplaceAllFunc(run, func(q []byte) []byte {
			ip, err := netip.ParseAddr(string(q))
			if err != nil {
				return q
			}
			out, err := a.anonymizeAddr(ip, at)
			if err != nil {
				return nil
			}
			return []byte(out)
		})
	})
}
