package schemas

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"
)

func TestAppendJSONCanonical(t *testing.T) {
	e := Event{
		ID: "req-1", Time: time.Date(2026, 11, 23, 15, 4, 5, 123e6, time.UTC), APIKeyID: "key_1",
		CustomerID: "cus_1", Gateway: "eu-1", Method: "GET", Route: "/v1/pets/{id}", Status: 200,
		LatencyMS: 12.5, RequestBytes: 10, ResponseBytes: 2048, ClientIP: "203.0.113.0",
		UserAgent: "curl/8.5.0", Units: 1.5, Properties: map[string]string{"sdk": "go", "plan": "pro", "a": ""},
	}
	want := `{"id":"req-1","time":"2026-11-23T15:04:05.123Z","api_key_id":"key_1","customer_id":"cus_1",` +
		`"gateway":"eu-1","method":"GET","route":"/v1/pets/{id}","status":200,"latency_ms":12.5,` +
		`"request_bytes":10,"response_bytes":2048,"client_ip":"203.0.113.0","user_agent":"curl/8.5.0",` +
		`"units":1.5,"properties":{"a":"","plan":"pro","sdk":"go"}}`
	if got := string(e.AppendJSON(nil)); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	minimal := Event{ID: "x", Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), APIKeyID: "k", Status: 204}
	want = `{"id":"x","time":"2026-01-02T03:04:05.000Z","api_key_id":"k","status":204,"latency_ms":0,"request_bytes":0,"response_bytes":0,"units":0}`
	if got := string(minimal.AppendJSON([]byte("prefix"))); got != "prefix"+want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestAppendJSONTimeIsUTCMillis(t *testing.T) {
	loc := time.FixedZone("X", -5*3600)
	e := Event{Time: time.Date(2026, 11, 23, 10, 4, 5, 123456789, loc)}
	if got := string(e.AppendJSON(nil)); !strings.Contains(got, `"time":"2026-11-23T15:04:05.123Z"`) {
		t.Errorf("%s", got)
	}
}

func TestAppendStringEscapes(t *testing.T) {
	tests := map[string]string{
		"plain":          `"plain"`,
		`q"b\s`:          `"q\"b\\s"`,
		"\n\r\t\x00\x1f": `"\n\r\t\u0000\u001f"`,
		"é☃😀":            `"é☃😀"`,
		"\u2028\u2029":   `"\u2028\u2029"`,
		"a\xffb":         `"a\ufffdb"`,
		"<&>/\x7f":       "\"<&>/\x7f\"",
	}
	for in, want := range tests {
		got := string(appendString(nil, in))
		if got != want {
			t.Errorf("appendString(%q) = %s, want %s", in, got, want)
		}
		var back string
		if err := json.Unmarshal([]byte(got), &back); err != nil {
			t.Errorf("%s: %v", got, err)
		} else if want := strings.ToValidUTF8(in, "\uFFFD"); back != want {
			t.Errorf("round trip of %q gave %q", in, back)
		}
	}
}

func TestAppendFloat(t *testing.T) {
	for _, f := range []float64{0, 1, 0.1, 12.5, 86400000, 999999999999.999999, 1e-7, 1.5e-300, 1e21, 123456789.123456, math.MaxFloat64, math.SmallestNonzeroFloat64} {
		s := string(appendFloat(nil, f))
		var back float64
		if err := json.Unmarshal([]byte(s), &back); err != nil || back != f {
			t.Errorf("appendFloat(%v) = %s, reads back as %v (%v)", f, s, back, err)
		}
	}
	if s := string(appendFloat(nil, 1e-7)); s != "1e-7" {
		t.Errorf("1e-7 written as %s", s)
	}
	if s := string(appendFloat(nil, math.NaN())); s != "null" {
		t.Errorf("NaN written as %s", s)
	}
}

func TestRoundTrip(t *testing.T) {
	bodies := []string{
		evJSON(nil),
		evJSON(map[string]string{"units": `0.1234567`, "latency_ms": `0.000001`, "user_agent": `"\u2028 \"quoted\" \\ é"`}),
		evJSON(map[string]string{"properties": `{"z":"1","a":"\u00e9\"","m":""}`, "client_ip": `"::FFFF:1.2.3.4"`}),
		evJSON(map[string]string{"time": `"2026-11-23T16:00:00.987654+01:00"`, "method": `"patch"`, "units": `999999999999.9998`}),
		evJSON(map[string]string{"customer_id": omit, "gateway": omit, "method": omit, "route": omit, "client_ip": omit, "user_agent": omit, "properties": omit}),
		evJSON(map[string]string{"user_agent": `"` + strings.Repeat("é", 300) + `"`}),
	}
	for _, body := range bodies {
		e, err := Options{}.DecodeEvent([]byte(body), testRef)
		if err != nil {
			t.Fatalf("%s: %v", body, err)
		}
		canon := e.AppendJSON(nil)
		back, err := Options{}.DecodeEvent(canon, testRef)
		if err != nil {
			t.Fatalf("canonical %s: %v", canon, err)
		}
		if !eventsEqual(e, back) {
			t.Errorf("round trip changed the event\n in  %+v\n out %+v", e, back)
		}
		if again := back.AppendJSON(nil); string(again) != string(canon) {
			t.Errorf("canonical form not stable:\n%s\n%s", canon, again)
		}
		// encoding/json, as any consumer of the topic would, reads the same event.
		var std Event
		if err := json.Unmarshal(canon, &std); err != nil || !eventsEqual(std, e) {
			t.Errorf("encoding/json reads %s as %+v (%v)", canon, std, err)
		}
	}
}

func TestNormalize(t *testing.T) {
	loc := time.FixedZone("X", 3600)
	e := Event{
		ID: "a", Time: time.Date(2026, 11, 23, 16, 0, 0, 123456789, loc), APIKeyID: "k", Method: "get",
		Status: 200, LatencyMS: math.Copysign(0, -1), ClientIP: "2001:DB8::1", UserAgent: strings.Repeat("u", 600),
		Units: 1.0000004, Properties: map[string]string{},
	}
	if err := (Options{}).Normalize(&e, testRef); err != nil {
		t.Fatal(err)
	}
	if e.Time != time.Date(2026, 11, 23, 15, 0, 0, 123e6, time.UTC) || e.Method != "GET" || e.ClientIP != "2001:db8::1" ||
		len(e.UserAgent) != 512 || e.Units != 1 || e.Properties != nil || math.Signbit(e.LatencyMS) {
		t.Errorf("not normalised: %+v", e)
	}

	bad := Event{
		Time: testRef.Add(time.Hour), Method: "G T", Status: 99, LatencyMS: math.NaN(), RequestBytes: 1 << 60,
		ResponseBytes: 1 << 54, ClientIP: "nope", Units: math.Inf(1), Route: "\x00", CustomerID: "\xff", Gateway: strings.Repeat("g", 200),
		Properties: map[string]string{"bad key": "v", "ok": "\x01"},
	}
	err := (Options{}).Normalize(&bad, testRef)
	ee := eventErr(t, err)
	for _, f := range []string{"id", "time", "api_key_id", "customer_id", "gateway", "method", "route", "status", "latency_ms",
		"request_bytes", "response_bytes", "client_ip", "units", "properties.bad key", "properties.ok"} {
		if !hasField(ee, f) {
			t.Errorf("%v does not name %q", err, f)
		}
	}
	many := Event{ID: "a", Time: testRef, APIKeyID: "k", Status: 200, Properties: map[string]string{"a": "1", "b": "2"}}
	if err := (Options{MaxProperties: 1}).Normalize(&many, testRef); err == nil || !hasField(eventErr(t, err), "properties") {
		t.Errorf("too many properties: %v", err)
	}
}

func TestEventSchemaIsACopy(t *testing.T) {
	a := EventSchema()
	a[0] = 'X'
	if b := EventSchema(); b[0] != '{' {
		t.Error("EventSchema returned shared memory")
	}
}

// TestAbsentMeasuresStayAbsent: an event without latency_ms or sizes (or
// with null) decodes with them marked absent, and its canonical JSON (what
// the collector writes to Kafka) leaves them out instead of writing 0, so
// the sink stores NULL; present ones, 0 included, are kept.
func TestAbsentMeasuresStayAbsent(t *testing.T) {
	ref := time.Date(2026, 11, 23, 15, 0, 0, 0, time.UTC)
	for in, want := range map[string]string{
		`{"id":"a","time":"2026-11-23T14:59:00Z","api_key_id":"k","status":200}`:                                        `"status":200,"units":1}`,
		`{"id":"a","time":"2026-11-23T14:59:00Z","api_key_id":"k","status":200,"latency_ms":null,"request_bytes":null}`: `"status":200,"units":1}`,
		`{"id":"a","time":"2026-11-23T14:59:00Z","api_key_id":"k","status":200,"latency_ms":0,"response_bytes":5}`:      `"status":200,"latency_ms":0,"response_bytes":5,"units":1}`,
	} {
		e, err := Options{}.DecodeEvent([]byte(in), ref)
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		out := string(e.AppendJSON(nil))
		if !strings.HasSuffix(out, want) {
			t.Errorf("%s\n  canonical %s\n  want it to end in %s", in, out, want)
		}
		again, err := Options{}.DecodeEvent([]byte(out), ref)
		if err != nil || again.Absent != e.Absent {
			t.Errorf("%s: round trip absent %v, want %v (%v)", in, again.Absent, e.Absent, err)
		}
	}
}
