package ingest

import (
	"bytes"
	"encoding/json"
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
			dead[i].Headers[j].Value = a.scrubText(dead[i].Headers[j].Value, now)
		}
	}
}

// DeadLetterValue returns a message value as it may be kept in the
// dead-letter topic. A value that is JSON keeps its content, with what the
// anonymiser removes from a stored event removed at any depth: a
// client_ip that reads as an address is anonymised (dropped in drop mode),
// one that does not is dropped (it cannot be told harmless); user_agent is
// cut to user_agent_max_bytes; properties and any other member whose name
// matches deny_properties are dropped; any other string has its IP
// addresses anonymised. Object members come out in key order. A value that
// is not JSON (cut short, another format) is kept as it is, except that
// every run of it that reads as an IP address is anonymised: it may still
// hold other personal data, which no rule can find in free text.
func (a Anonymizer) DeadLetterValue(v []byte, now time.Time) []byte {
	dec := json.NewDecoder(bytes.NewReader(v))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil || dec.More() || !utf8.Valid(v) {
		return a.scrubText(v, now)
	}
	if _, err := dec.Token(); err == nil {
		return a.scrubText(v, now) // trailing data
	}
	at := now
	if m, ok := doc.(map[string]any); ok {
		if s, ok := m["time"].(string); ok {
			if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
				at = t
			}
		}
	}
	doc = a.scrubJSON(doc, at)
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(doc); err != nil {
		return a.scrubText(v, now)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

func (a Anonymizer) scrubJSON(v any, at time.Time) any {
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			switch {
			case k == "client_ip":
				s, ok := val.(string)
				if !ok {
					delete(x, k)
					continue
				}
				ip, err := netip.ParseAddr(s)
				if err != nil {
					delete(x, k)
					continue
				}
				out, err := a.anonymizeAddr(ip, at)
				if err != nil || out == "" {
					delete(x, k)
					continue
				}
				x[k] = out
			case k == "user_agent":
				s, ok := val.(string)
				if !ok || a.UserAgentMaxBytes < 0 {
					delete(x, k)
					continue
				}
				x[k] = a.scrubString(a.cutUserAgent(s), at)
			case !schemas.IsField(k) && a.denied(k):
				delete(x, k)
			case k == "properties":
				if _, ok := val.(map[string]any); !ok {
					delete(x, k) // not the contract's object: nothing tells what it holds
					continue
				}
				fallthrough
			default:
				x[k] = a.scrubJSON(val, at)
			}
		}
		return x
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
		if ip, err := netip.ParseAddr(string(run)); err == nil && strings.ContainsAny(string(run), ".:") {
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
