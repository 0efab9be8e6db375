package schemas

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"time"
)

var fuzzContentTypes = []string{
	"application/json",
	"application/x-ndjson",
	"application/cloudevents+json",
	"application/cloudevents-batch+json",
}

// FuzzDecodeBatch checks, for any body: no panic; body errors are the
// documented ones; the JSON grammar agrees with encoding/json; every accepted
// event passes Normalize unchanged, and its canonical JSON decodes back to
// the same event.
func FuzzDecodeBatch(f *testing.F) {
	ce := `{"specversion":"1.0","id":"c1","type":"t","source":"eu","subject":"k","time":"2026-11-23T15:00:00Z","data":{"status":200,"units":0.5,"properties":{"a":"b"}},"ext":1}`
	seeds := []string{
		"[" + evJSON(nil) + "," + evJSON(map[string]string{"status": `"x"`}) + "]",
		evJSON(map[string]string{"user_agent": `"\ud83d\ude00 \u2028 \ud800"`, "method": `"get"`, "client_ip": `"::ffff:10.0.0.1"`}),
		evJSON(map[string]string{"foo": `1.5e3`, "bar": `"x"`, "units": `0.0000015`, "latency_ms": `1e-7`}),
		evJSON(map[string]string{"time": `"2026-11-23t16:00:00.123456+01:00"`, "properties": `{"a":"\"","b":"\\"}`}),
		evJSON(nil) + "\n\n" + evJSON(map[string]string{"id": omit}) + "\n{broken\n",
		ce,
		"[" + ce + "," + ce + "]",
		`[1,"x",null,{}]`,
		`{"a":[1,{"b":[]}],"c":-0.0e+1}`,
		"\xEF\xBB\xBF[]",
	}
	for i, s := range seeds {
		for m := range fuzzContentTypes {
			f.Add(uint8(m+4*(i%2)*32), []byte(s))
		}
	}
	f.Fuzz(func(t *testing.T, mode uint8, body []byte) {
		ct := fuzzContentTypes[int(mode)%len(fuzzContentTypes)]
		opts := Options{UnknownFieldsToProperties: mode&0x80 != 0, MaxEvents: 1000}
		rs, err := opts.DecodeBatch(ct, body, testRef)
		checkGrammar(t, ct, body, err)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooManyEvents) {
				t.Fatalf("unexpected body error %v", err)
			}
			if rs != nil {
				t.Fatalf("results with a body error")
			}
			return
		}
		for i, r := range rs {
			if r.Index != i {
				t.Fatalf("result %d has index %d", i, r.Index)
			}
			if r.Err != nil {
				var ee *EventError
				if !errors.As(r.Err, &ee) || ee.Index != i || len(ee.Fields) == 0 {
					t.Fatalf("result %d: bad error %#v", i, r.Err)
				}
				continue
			}
			e := r.Event
			n := e
			if err := opts.Normalize(&n, testRef); err != nil {
				t.Fatalf("accepted event fails re-validation: %v\n%+v", err, e)
			}
			if !eventsEqual(n, e) {
				t.Fatalf("Normalize changed an accepted event\n in  %+v\n out %+v", e, n)
			}
			canon := e.AppendJSON(nil)
			if !json.Valid(canon) {
				t.Fatalf("AppendJSON wrote invalid JSON: %s", canon)
			}
			back, err := opts.DecodeEvent(canon, testRef)
			if err != nil {
				t.Fatalf("canonical JSON rejected: %v\n%s", err, canon)
			}
			if !eventsEqual(back, e) {
				t.Fatalf("round trip changed the event\n in  %+v\n out %+v\n%s", e, back, canon)
			}
		}
	})
}

// checkGrammar compares the decoder's verdict on JSON syntax with
// encoding/json's for the body types where syntax decides the outcome.
func checkGrammar(t *testing.T, ct string, body []byte, err error) {
	if ct == "application/x-ndjson" || errors.Is(err, ErrTooManyEvents) {
		return
	}
	b := body[skipBOM(body):]
	if bytes.Count(b, []byte("["))+bytes.Count(b, []byte("{")) > 9000 {
		return // encoding/json stops at 10000 levels of nesting; the decoder does not
	}
	valid := json.Valid(b)
	if err == nil && !valid {
		t.Fatalf("accepted a body encoding/json rejects: %q", body)
	}
	if errors.Is(err, ErrMalformed) && valid {
		first := b[skipSpace(b, 0)]
		if ct == "application/json" && (first == '[' || first == '{') ||
			ct == "application/cloudevents+json" && first == '{' ||
			ct == "application/cloudevents-batch+json" && first == '[' {
			t.Fatalf("rejected valid JSON as malformed: %v: %q", err, body)
		}
	}
}

// FuzzEventRoundTrip builds events from arbitrary field values, normalises
// them and checks that every event Normalize accepts survives AppendJSON and
// DecodeEvent unchanged: the escaping, number formatting and rounding paths
// that random JSON bodies rarely reach.
func FuzzEventRoundTrip(f *testing.F) {
	f.Add("id", "GET", "/v1/x", "ua", "1.2.3.4", "k", "v", 12.5, 1.0, int64(0))
	f.Add("\u2028\"\\", "post", "/é", "\x00\xff", "::FFFF:1.2.3.4", "a.b", "\u00e9", 1e-7, 0.1234565, int64(123456789))
	f.Add("x", "", "", "", "", "", "", 86400000.0, 999999999999.9999, int64(-1))
	f.Fuzz(func(t *testing.T, id, method, route, ua, ip, pk, pv string, latency, units float64, nanos int64) {
		e := Event{
			ID: id, Time: testRef.Add(time.Duration(nanos % int64(time.Hour))), APIKeyID: "key", Method: method,
			Route: route, Status: 200, LatencyMS: latency, ClientIP: ip, UserAgent: ua, Units: units,
		}
		if pk != "" {
			e.Properties = map[string]string{pk: pv}
		}
		if err := (Options{}).Normalize(&e, testRef); err != nil {
			return
		}
		again := e
		if err := (Options{}).Normalize(&again, testRef); err != nil || !eventsEqual(again, e) {
			t.Fatalf("Normalize is not idempotent: %v\n%+v\n%+v", err, e, again)
		}
		canon := e.AppendJSON(nil)
		back, err := Options{}.DecodeEvent(canon, testRef)
		if err != nil {
			t.Fatalf("canonical JSON rejected: %v\n%s", err, canon)
		}
		if !eventsEqual(back, e) {
			t.Fatalf("round trip changed the event\n in  %+v\n out %+v\n%s", e, back, canon)
		}
	})
}
