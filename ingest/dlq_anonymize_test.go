package ingest

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/internal/testenv"
)

// fullIPs are the readable client addresses the dead-letter tests send:
// none of them may reach the dead-letter topic.
var fullIPs = []string{"203.0.113.77", "2001:db8:aaaa:bbbb::17", "2002:cb00:714d", "cb00:714d"}

func assertNoFullIP(t *testing.T, what string, b []byte) {
	t.Helper()
	for _, ip := range fullIPs {
		if strings.Contains(strings.ToLower(string(b)), ip) {
			t.Errorf("%s holds %s: %s", what, ip, b)
		}
	}
}

// TestDeadLetterValue: a dead letter keeps its content (member order and
// number spelling too) minus what the
// anonymiser takes from a stored event, in every ip_mode; a value that is
// not JSON keeps its bytes except the IP addresses in it.
func TestDeadLetterValue(t *testing.T) {
	at := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	event := `{"id":"e1","time":"2026-11-23T10:00:00Z","api_key_id":"k","status":70000,"units":1.50,` +
		`"client_ip":"203.0.113.77","user_agent":"curl from 2001:db8:aaaa:bbbb::17","user_email":"a@b.c",` +
		`"properties":{"plan":"pro","Email":"a@b.c","X-Auth-Token":"t","via":"203.0.113.77"}}`
	hash := Anonymizer{IPMode: IPHash, IPHashSecret: "0123456789abcdef-secret"}.WithDefaults()
	pseudo, _ := hash.anonymizeAddr(netip.MustParseAddr("203.0.113.77"), at)
	for _, c := range []struct {
		name   string
		a      Anonymizer
		in     string
		want   string // a JSON document, compared as such; "" when in is not JSON
		wantRe string // for text: what must be in the output
	}{
		{"truncate", Anonymizer{}.WithDefaults(), event,
			`{"id":"e1","time":"2026-11-23T10:00:00Z","api_key_id":"k","status":70000,"units":1.50,"client_ip":"203.0.113.0",` +
				`"user_agent":"curl from 2001:db8:aaaa::","properties":{"plan":"pro","via":"203.0.113.0"}}`, ""},
		{"hash", hash, event,
			`{"id":"e1","time":"2026-11-23T10:00:00Z","api_key_id":"k","status":70000,"units":1.50,"client_ip":"` + pseudo + `",` +
				`"user_agent":"curl from ` + mustAnon(t, hash, "2001:db8:aaaa:bbbb::17", at) + `","properties":{"plan":"pro","via":"` + pseudo + `"}}`, ""},
		{"drop", Anonymizer{IPMode: IPDrop, UserAgentMaxBytes: -1}.WithDefaults(), event,
			`{"id":"e1","time":"2026-11-23T10:00:00Z","api_key_id":"k","status":70000,"units":1.50,"properties":{"plan":"pro","via":""}}`, ""},
		{"6to4", Anonymizer{}.WithDefaults(), `{"id":"e2","client_ip":"2002:cb00:714d::1"}`, `{"id":"e2","client_ip":"203.0.113.0"}`, ""},
		{"unreadable client_ip dropped", Anonymizer{}.WithDefaults(), `{"id":"e3","client_ip":"203.0.113.77:443"}`, `{"id":"e3"}`, ""},
		{"client_ip not a string", Anonymizer{}.WithDefaults(), `{"id":"e4","client_ip":["203.0.113.77"]}`, `{"id":"e4"}`, ""},
		{"properties not an object", Anonymizer{}.WithDefaults(), `{"id":"e5","properties":"email=a@b.c"}`, `{"id":"e5"}`, ""},
		{"array", Anonymizer{}.WithDefaults(), `[{"client_ip":"203.0.113.77"},"203.0.113.77"]`, `[{"client_ip":"203.0.113.0"},"203.0.113.0"]`, ""},
		{"cut short", Anonymizer{}.WithDefaults(), `{"id":"e6","client_ip":"203.0.113.77","route":"/v1/x from [2001:db8:aaaa:bbbb::17]:443`, "",
			`{"id":"e6","client_ip":"203.0.113.0","route":"/v1/x from [2001:db8:aaaa::]:443`},
		{"text with port", Anonymizer{}.WithDefaults(), `client=203.0.113.77:443 at 2026-11-23T10:00:00Z id=cafe:beef`, "",
			`client=203.0.113.0:443 at 2026-11-23T10:00:00Z id=cafe:beef`},
		{"nested too deep for the walk", Anonymizer{}.WithDefaults(), strings.Repeat("[", 1500) + `"203.0.113.77"` + strings.Repeat("]", 1500), "",
			strings.Repeat("[", 1500) + `"203.0.113.0"` + strings.Repeat("]", 1500)},
		{"two documents", Anonymizer{}.WithDefaults(), `{"client_ip":"203.0.113.77"}{"id":"x"}`, "", `{"client_ip":"203.0.113.0"}{"id":"x"}`},
		// The members that identify the event are kept byte for byte, so a
		// replay is the same event: two ids that differ in an IP-like run
		// stay two ids, and the key still bills its owner.
		{"identity kept", Anonymizer{}.WithDefaults(),
			`{"id":"edge-10.1.2.3-42","time":"2026-11-23T10:00:00Z","api_key_id":"key-10.0.0.1","customer_id":"c-10.0.0.2","route":"/from/10.1.2.3"}`,
			`{"id":"edge-10.1.2.3-42","time":"2026-11-23T10:00:00Z","api_key_id":"key-10.0.0.1","customer_id":"c-10.0.0.2","route":"/from/10.1.2.0"}`, ""},
		{"cloudevent identity kept", Anonymizer{}.WithDefaults(),
			`{"specversion":"1.0","id":"ce-10.1.2.3","source":"edge-10.9.9.9","subject":"key-10.0.0.1","data":{"client_ip":"203.0.113.77"}}`,
			`{"specversion":"1.0","id":"ce-10.1.2.3","source":"edge-10.9.9.9","subject":"key-10.0.0.1","data":{"client_ip":"203.0.113.0"}}`, ""},
		{"words are not addresses", Anonymizer{}.WithDefaults(), `DB::Exception at fe80::1 from 2001:db8:aaaa:bbbb::17`, "",
			`DB::Exception at fe80::1 from 2001:db8:aaaa::`},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := c.a.DeadLetterValue([]byte(c.in), at)
			assertNoFullIP(t, "dead letter", out)
			if c.want == "" {
				if string(out) != c.wantRe {
					t.Fatalf("got %s\nwant %s", out, c.wantRe)
				}
				return
			}
			if !json.Valid(out) {
				t.Fatalf("not JSON: %s", out)
			}
			// Members keep their order and numbers their spelling (1.50).
			if string(out) != c.want {
				t.Fatalf("got  %s\nwant %s", out, c.want)
			}
			// A replayed dead letter is anonymised again by the sink: no change.
			if again := c.a.DeadLetterValue(out, at); string(again) != string(out) {
				t.Errorf("applying twice changed %s to %s", out, again)
			}
		})
	}
}

// TestDeadLetterHeadersOfTheSinkKept: the headers the sink writes are kept
// as they are (dlq list, show and replay read them); the error text and the
// producer's headers lose their addresses.
func TestDeadLetterHeadersOfTheSinkKept(t *testing.T) {
	at := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	m := kafka.Message{Value: []byte(`{"id":"e1"}`), Headers: []kafka.Header{
		{Key: HeaderSource, Value: []byte("requests/3/1234")},
		{Key: HeaderErrorReason, Value: []byte("unstorable")},
		{Key: HeaderDeadAt, Value: []byte("2026-11-23T10:00:00Z")},
		{Key: HeaderError, Value: []byte("Code: 1002. DB::Exception: bad value 203.0.113.77")},
		{Key: "x-forwarded-for", Value: []byte("203.0.113.77")},
	}}
	dead := []kafka.Message{m}
	Anonymizer{}.WithDefaults().AnonymizeDeadLetters(dead, at)
	want := map[string]string{
		HeaderSource:      "requests/3/1234",
		HeaderErrorReason: "unstorable",
		HeaderDeadAt:      "2026-11-23T10:00:00Z",
		HeaderError:       "Code: 1002. DB::Exception: bad value 203.0.113.0",
		"x-forwarded-for": "203.0.113.0",
	}
	for _, h := range dead[0].Headers {
		if got := string(h.Value); got != want[h.Key] {
			t.Errorf("header %s = %q, want %q", h.Key, got, want[h.Key])
		}
	}
}

func mustAnon(t *testing.T, a Anonymizer, ip string, at time.Time) string {
	t.Helper()
	s, err := a.anonymizeAddr(netip.MustParseAddr(ip), at)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSinkDeadLettersAnonymisedValues produces invalid messages that carry
// full client addresses straight to Kafka (in the value, in a value that is
// not JSON, and in a header), and reads the dead-letter topic back: every
// message is there, with its reason, and no full address.
func TestSinkDeadLettersAnonymisedValues(t *testing.T) {
	db := requireDB(t)
	f := newSinkFixture(t)
	key := testenv.Unique("key")
	invalid := [][]byte{
		eventJSON(t, "dl-status", key, func(m map[string]any) { m["status"] = 70000; m["client_ip"] = "203.0.113.77" }),
		eventJSON(t, "dl-6to4", key, func(m map[string]any) { m["status"] = 0; m["client_ip"] = "2002:cb00:714d::1" }),
		eventJSON(t, "dl-v6", key, func(m map[string]any) {
			delete(m, "api_key_id")
			m["client_ip"] = "2001:db8:aaaa:bbbb::17"
			m["properties"] = map[string]string{"email": "a@b.c", "plan": "pro"}
		}),
		eventJSON(t, "dl-port", key, func(m map[string]any) { m["client_ip"] = "203.0.113.77:443" }),
		[]byte(`{"id":"dl-cut","api_key_id":"` + key + `","client_ip":"203.0.113.77","st`),
	}
	msgs := make([]kafka.Message, len(invalid))
	for i, v := range invalid {
		msgs[i] = kafka.Message{Key: []byte(key), Value: v, Headers: []kafka.Header{{Key: "x-forwarded-for", Value: []byte("203.0.113.77, 10.0.0.1")}}}
	}
	if err := f.writer.WriteMessages(t.Context(), msgs...); err != nil {
		t.Fatal(err)
	}
	stop := f.run(t, db, prometheus.NewRegistry())
	var dead []kafka.Message
	waitFor(t, time.Minute, func() error {
		dead = topicMessages(t, f.k.Brokers, f.k.DeadLetterTopic)
		if len(dead) != len(invalid) {
			return fmt.Errorf("%d dead letters, want %d", len(dead), len(invalid))
		}
		return nil
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	for _, d := range dead {
		assertNoFullIP(t, "dead-letter value", d.Value)
		for _, h := range d.Headers {
			assertNoFullIP(t, "dead-letter header "+h.Key, h.Value)
		}
		if headerValue(d, HeaderError) == "" {
			t.Errorf("dead letter without a reason: %s", d.Value)
		}
		if v := string(d.Value); strings.Contains(v, "email") || !strings.Contains(v, `"id":"dl-`) {
			t.Errorf("dead letter lost its id or kept a denied property: %s", v)
		}
		if v := string(d.Value); !strings.Contains(v, "dl-port") && !strings.Contains(v, "203.0.113.0") && !strings.Contains(v, "2001:db8:aaaa::") {
			t.Errorf("dead letter lost its anonymised client_ip: %s", v)
		}
		if got := headerValue(d, "x-forwarded-for"); got != "203.0.113.0, 10.0.0.0" {
			t.Errorf("producer header x-forwarded-for = %q", got)
		}
	}
}
