package schemas

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestDecodeEventRules(t *testing.T) {
	q := strconv.Quote
	long := func(n int) string { return q(strings.Repeat("a", n)) }
	props := func(n int) string {
		var b strings.Builder
		b.WriteByte('{')
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `"k%d":"v"`, i)
		}
		b.WriteByte('}')
		return b.String()
	}
	toProps := Options{UnknownFieldsToProperties: true}
	type check func(t *testing.T, e Event)
	tests := []struct {
		name  string
		over  map[string]string
		opts  Options
		field string // the field the error must name; "" for a valid event
		check check
	}{
		{name: "base event", check: func(t *testing.T, e Event) {
			want := Event{
				ID: "req-1", Time: time.Date(2026, 11, 23, 15, 0, 0, 123e6, time.UTC), APIKeyID: "key_1",
				CustomerID: "cus_1", Gateway: "eu-1", Method: "GET", Route: "/v1/pets/{id}", Status: 200,
				LatencyMS: 12.5, RequestBytes: 10, ResponseBytes: 2048, ClientIP: "203.0.113.7",
				UserAgent: "curl/8.5.0", Units: 2, Properties: map[string]string{"plan": "pro"},
			}
			if !eventsEqual(e, want) {
				t.Errorf("got %+v\nwant %+v", e, want)
			}
		}},
		{name: "only required fields", over: map[string]string{
			"customer_id": omit, "gateway": omit, "method": omit, "route": omit, "latency_ms": omit,
			"request_bytes": omit, "response_bytes": omit, "client_ip": omit, "user_agent": omit,
			"units": omit, "properties": omit,
		}, check: func(t *testing.T, e Event) {
			if e.Units != 1 || e.Properties != nil || e.LatencyMS != 0 {
				t.Errorf("defaults: %+v", e)
			}
		}},

		// id
		{name: "id 128 bytes", over: map[string]string{"id": long(128)}},
		{name: "id unicode", over: map[string]string{"id": `"réq-☃"`}},
		{name: "id escaped", over: map[string]string{"id": `"a\/b\u00e9"`}, check: func(t *testing.T, e Event) {
			if e.ID != "a/bé" {
				t.Errorf("id %q", e.ID)
			}
		}},
		{name: "id empty", over: map[string]string{"id": `""`}, field: "id"},
		{name: "id 129 bytes", over: map[string]string{"id": long(129)}, field: "id"},
		{name: "id control char", over: map[string]string{"id": `"a\u0001b"`}, field: "id"},
		{name: "id tab", over: map[string]string{"id": `"a\tb"`}, field: "id"},
		{name: "id C1 control", over: map[string]string{"id": `"a\u0085b"`}, field: "id"},
		{name: "id DEL", over: map[string]string{"id": `"a\u007fb"`}, field: "id"},
		{name: "id NUL", over: map[string]string{"id": `"a\u0000b"`}, field: "id"},
		{name: "id lone surrogate", over: map[string]string{"id": `"a\ud800b"`}, field: "id"},
		{name: "id invalid UTF-8", over: map[string]string{"id": "\"a\xffb\""}, field: "id"},
		{name: "id number", over: map[string]string{"id": `17`}, field: "id"},
		{name: "id null", over: map[string]string{"id": `null`}, field: "id"},
		{name: "id missing", over: map[string]string{"id": omit}, field: "id"},

		// time
		{name: "time offset to UTC", over: map[string]string{"time": `"2026-11-23T17:00:00+02:00"`}, check: func(t *testing.T, e Event) {
			if want := time.Date(2026, 11, 23, 15, 0, 0, 0, time.UTC); !e.Time.Equal(want) || e.Time.Location() != time.UTC {
				t.Errorf("time %v", e.Time)
			}
		}},
		{name: "time nanoseconds truncated", over: map[string]string{"time": `"2026-11-23T15:00:00.123999999999Z"`}, check: func(t *testing.T, e Event) {
			if e.Time.Nanosecond() != 123e6 {
				t.Errorf("time %v", e.Time)
			}
		}},
		{name: "time lowercase", over: map[string]string{"time": `"2026-11-23t15:00:00z"`}},
		{name: "time negative offset", over: map[string]string{"time": `"2026-11-23T10:00:00.5-05:00"`}},
		{name: "time oldest accepted", over: map[string]string{"time": q(testRef.Add(-35 * 24 * time.Hour).Format(time.RFC3339Nano))}},
		{name: "time newest accepted", over: map[string]string{"time": q(testRef.Add(5 * time.Minute).Format(time.RFC3339Nano))}},
		{name: "time too old", over: map[string]string{"time": q(testRef.Add(-35*24*time.Hour - time.Millisecond).Format(time.RFC3339Nano))}, field: "time"},
		{name: "time too new", over: map[string]string{"time": q(testRef.Add(5*time.Minute + time.Millisecond).Format(time.RFC3339Nano))}, field: "time"},
		{name: "time custom window", opts: Options{MaxPast: time.Hour}, over: map[string]string{"time": `"2026-11-23T14:00:00Z"`}, field: "time"},
		{name: "time space separator", over: map[string]string{"time": `"2026-11-23 15:00:00Z"`}, field: "time"},
		{name: "time no offset", over: map[string]string{"time": `"2026-11-23T15:00:00"`}, field: "time"},
		{name: "time month 13", over: map[string]string{"time": `"2026-13-23T15:00:00Z"`}, field: "time"},
		{name: "time Feb 30", over: map[string]string{"time": `"2026-02-30T15:00:00Z"`}, field: "time"},
		{name: "time hour 24", over: map[string]string{"time": `"2026-11-23T24:00:00Z"`}, field: "time"},
		{name: "time leap second", over: map[string]string{"time": `"2026-11-23T14:59:60Z"`}, field: "time"},
		{name: "time comma fraction", over: map[string]string{"time": `"2026-11-23T15:00:00,5Z"`}, field: "time"},
		{name: "time offset +24:00", over: map[string]string{"time": `"2026-11-23T15:00:00+24:00"`}, field: "time"},
		{name: "time empty fraction", over: map[string]string{"time": `"2026-11-23T15:00:00.Z"`}, field: "time"},
		{name: "time unix number", over: map[string]string{"time": `1795446000`}, field: "time"},
		{name: "time missing", over: map[string]string{"time": omit}, field: "time"},
		{name: "time null", over: map[string]string{"time": `null`}, field: "time"},

		// api_key_id
		{name: "api_key_id 128 bytes", over: map[string]string{"api_key_id": long(128)}},
		{name: "api_key_id empty", over: map[string]string{"api_key_id": `""`}, field: "api_key_id"},
		{name: "api_key_id 129 bytes", over: map[string]string{"api_key_id": long(129)}, field: "api_key_id"},
		{name: "api_key_id newline", over: map[string]string{"api_key_id": `"a\nb"`}, field: "api_key_id"},
		{name: "api_key_id object", over: map[string]string{"api_key_id": `{}`}, field: "api_key_id"},
		{name: "api_key_id missing", over: map[string]string{"api_key_id": omit}, field: "api_key_id"},

		// customer_id, gateway
		{name: "customer_id 128 bytes", over: map[string]string{"customer_id": long(128)}},
		{name: "customer_id null is absent", over: map[string]string{"customer_id": `null`}, check: func(t *testing.T, e Event) {
			if e.CustomerID != "" {
				t.Errorf("customer_id %q", e.CustomerID)
			}
		}},
		{name: "customer_id 129 bytes", over: map[string]string{"customer_id": long(129)}, field: "customer_id"},
		{name: "customer_id control", over: map[string]string{"customer_id": `"\u001b[31m"`}, field: "customer_id"},
		{name: "customer_id number", over: map[string]string{"customer_id": `42`}, field: "customer_id"},
		{name: "gateway empty is absent", over: map[string]string{"gateway": `""`}},
		{name: "gateway 129 bytes", over: map[string]string{"gateway": long(129)}, field: "gateway"},
		{name: "gateway array", over: map[string]string{"gateway": `["a"]`}, field: "gateway"},

		// method
		{name: "method lowercase", over: map[string]string{"method": `"post"`}, check: func(t *testing.T, e Event) {
			if e.Method != "POST" {
				t.Errorf("method %q", e.Method)
			}
		}},
		{name: "method 16 letters", over: map[string]string{"method": q(strings.Repeat("X", 16))}},
		{name: "method 17 letters", over: map[string]string{"method": q(strings.Repeat("X", 17))}, field: "method"},
		{name: "method empty", over: map[string]string{"method": `""`}, field: "method"},
		{name: "method digit", over: map[string]string{"method": `"G3T"`}, field: "method"},
		{name: "method space", over: map[string]string{"method": `"GET "`}, field: "method"},
		{name: "method number", over: map[string]string{"method": `1`}, field: "method"},

		// route
		{name: "route 1024 bytes", over: map[string]string{"route": long(1024)}},
		{name: "route 1025 bytes", over: map[string]string{"route": long(1025)}, field: "route"},
		{name: "route control", over: map[string]string{"route": `"/a\rb"`}, field: "route"},

		// status
		{name: "status 100", over: map[string]string{"status": `100`}},
		{name: "status 599", over: map[string]string{"status": `599`}},
		{name: "status 2e2", over: map[string]string{"status": `2e2`}, check: func(t *testing.T, e Event) {
			if e.Status != 200 {
				t.Errorf("status %d", e.Status)
			}
		}},
		{name: "status 200.0", over: map[string]string{"status": `200.0`}},
		{name: "status 99", over: map[string]string{"status": `99`}, field: "status"},
		{name: "status 600", over: map[string]string{"status": `600`}, field: "status"},
		{name: "status -200", over: map[string]string{"status": `-200`}, field: "status"},
		{name: "status 200.5", over: map[string]string{"status": `200.5`}, field: "status"},
		{name: "status string", over: map[string]string{"status": `"200"`}, field: "status"},
		{name: "status bool", over: map[string]string{"status": `true`}, field: "status"},
		{name: "status null", over: map[string]string{"status": `null`}, field: "status"},
		{name: "status missing", over: map[string]string{"status": omit}, field: "status"},
		{name: "status 1e400", over: map[string]string{"status": `1e400`}, field: "status"},
		{name: "status huge integer", over: map[string]string{"status": strings.Repeat("9", 400)}, field: "status"},

		// latency_ms
		{name: "latency 0", over: map[string]string{"latency_ms": `0`}},
		{name: "latency max", over: map[string]string{"latency_ms": `86400000`}},
		{name: "latency -0", over: map[string]string{"latency_ms": `-0.0`}, check: func(t *testing.T, e Event) {
			if e.LatencyMS != 0 || strconv.FormatFloat(e.LatencyMS, 'g', -1, 64) != "0" {
				t.Errorf("latency %v", e.LatencyMS)
			}
		}},
		{name: "latency null", over: map[string]string{"latency_ms": `null`}},
		{name: "latency 1e-400", over: map[string]string{"latency_ms": `1e-400`}},
		{name: "latency negative", over: map[string]string{"latency_ms": `-0.5`}, field: "latency_ms"},
		{name: "latency over a day", over: map[string]string{"latency_ms": `86400000.5`}, field: "latency_ms"},
		{name: "latency 1e400", over: map[string]string{"latency_ms": `1e400`}, field: "latency_ms"},
		{name: "latency string", over: map[string]string{"latency_ms": `"12"`}, field: "latency_ms"},

		// request_bytes, response_bytes
		{name: "request_bytes 2^53", over: map[string]string{"request_bytes": `9007199254740992`}},
		{name: "request_bytes 1e3", over: map[string]string{"request_bytes": `1e3`}, check: func(t *testing.T, e Event) {
			if e.RequestBytes != 1000 {
				t.Errorf("request_bytes %d", e.RequestBytes)
			}
		}},
		{name: "request_bytes 2^53+1", over: map[string]string{"request_bytes": `9007199254740993`}, field: "request_bytes"},
		{name: "request_bytes negative", over: map[string]string{"request_bytes": `-1`}, field: "request_bytes"},
		{name: "request_bytes fraction", over: map[string]string{"request_bytes": `1.5`}, field: "request_bytes"},
		{name: "request_bytes 1e20", over: map[string]string{"request_bytes": `1e20`}, field: "request_bytes"},
		{name: "response_bytes 0", over: map[string]string{"response_bytes": `0`}},
		{name: "response_bytes string", over: map[string]string{"response_bytes": `"5"`}, field: "response_bytes"},

		// client_ip
		{name: "client_ip IPv6 canonical", over: map[string]string{"client_ip": `"2001:DB8:0:0::1"`}, check: func(t *testing.T, e Event) {
			if e.ClientIP != "2001:db8::1" {
				t.Errorf("client_ip %q", e.ClientIP)
			}
		}},
		{name: "client_ip IPv4-mapped", over: map[string]string{"client_ip": `"::ffff:1.2.3.4"`}},
		{name: "client_ip zone", over: map[string]string{"client_ip": `"fe80::1%eth0"`}, field: "client_ip"},
		{name: "client_ip short IPv4", over: map[string]string{"client_ip": `"1.2.3"`}, field: "client_ip"},
		{name: "client_ip leading zero", over: map[string]string{"client_ip": `"01.2.3.4"`}, field: "client_ip"},
		{name: "client_ip with port", over: map[string]string{"client_ip": `"1.2.3.4:80"`}, field: "client_ip"},
		{name: "client_ip hostname", over: map[string]string{"client_ip": `"localhost"`}, field: "client_ip"},
		{name: "client_ip empty", over: map[string]string{"client_ip": `""`}, field: "client_ip"},
		{name: "client_ip number", over: map[string]string{"client_ip": `16909060`}, field: "client_ip"},

		// user_agent
		{name: "user_agent truncated", over: map[string]string{"user_agent": long(600)}, check: func(t *testing.T, e Event) {
			if len(e.UserAgent) != 512 {
				t.Errorf("user_agent of %d bytes", len(e.UserAgent))
			}
		}},
		{name: "user_agent truncated on a rune boundary", over: map[string]string{"user_agent": q(strings.Repeat("a", 511) + "é")}, check: func(t *testing.T, e Event) {
			if e.UserAgent != strings.Repeat("a", 511) {
				t.Errorf("user_agent of %d bytes ends %q", len(e.UserAgent), e.UserAgent[500:])
			}
		}},
		{name: "user_agent control replaced", over: map[string]string{"user_agent": `"a\u0000b\ud800c"`}, check: func(t *testing.T, e Event) {
			if e.UserAgent != "a\uFFFDb\uFFFDc" {
				t.Errorf("user_agent %q", e.UserAgent)
			}
		}},
		{name: "user_agent number", over: map[string]string{"user_agent": `5`}, field: "user_agent"},

		// units
		{name: "units absent is 1", over: map[string]string{"units": omit}, check: func(t *testing.T, e Event) {
			if e.Units != 1 {
				t.Errorf("units %v", e.Units)
			}
		}},
		{name: "units null is 1", over: map[string]string{"units": `null`}, check: func(t *testing.T, e Event) {
			if e.Units != 1 {
				t.Errorf("units %v", e.Units)
			}
		}},
		{name: "units 0", over: map[string]string{"units": `0`}, check: func(t *testing.T, e Event) {
			if e.Units != 0 {
				t.Errorf("units %v", e.Units)
			}
		}},
		{name: "units rounded", over: map[string]string{"units": `1.2345675`}, check: func(t *testing.T, e Event) {
			if e.Units != 1.234568 && e.Units != 1.234567 {
				t.Errorf("units %v", e.Units)
			}
		}},
		{name: "units tiny rounds to 0", over: map[string]string{"units": `0.0000004`}, check: func(t *testing.T, e Event) {
			if e.Units != 0 {
				t.Errorf("units %v", e.Units)
			}
		}},
		{name: "units largest", over: map[string]string{"units": `999999999999.999`}},
		{name: "units 1e12", over: map[string]string{"units": `1e12`}, field: "units"},
		{name: "units rounding up to 1e12", over: map[string]string{"units": `999999999999.9999999`}, field: "units"},
		{name: "units negative", over: map[string]string{"units": `-1`}, field: "units"},
		{name: "units 1e400", over: map[string]string{"units": `1e400`}, field: "units"},
		{name: "units string", over: map[string]string{"units": `"1"`}, field: "units"},

		// properties
		{name: "properties null", over: map[string]string{"properties": `null`}, check: func(t *testing.T, e Event) {
			if e.Properties != nil {
				t.Errorf("properties %v", e.Properties)
			}
		}},
		{name: "properties empty", over: map[string]string{"properties": `{}`}, check: func(t *testing.T, e Event) {
			if e.Properties != nil {
				t.Errorf("properties %v", e.Properties)
			}
		}},
		{name: "properties 32", over: map[string]string{"properties": props(32)}},
		{name: "properties 33", over: map[string]string{"properties": props(33)}, field: "properties"},
		{name: "properties 3 of max 2", opts: Options{MaxProperties: 2}, over: map[string]string{"properties": props(3)}, field: "properties"},
		{name: "properties key chars", over: map[string]string{"properties": `{"a.b:c-d_E9":"x"}`}},
		{name: "properties key 64 bytes", over: map[string]string{"properties": `{` + long(64) + `:"x"}`}},
		{name: "properties key 65 bytes", over: map[string]string{"properties": `{` + long(65) + `:"x"}`}, field: "properties." + strings.Repeat("a", 64) + "…"},
		{name: "properties key space", over: map[string]string{"properties": `{"a b":"x"}`}, field: "properties.a b"},
		{name: "properties key empty", over: map[string]string{"properties": `{"":"x"}`}, field: "properties."},
		{name: "properties value 256 bytes", over: map[string]string{"properties": `{"k":` + long(256) + `}`}},
		{name: "properties value 257 bytes", over: map[string]string{"properties": `{"k":` + long(257) + `}`}, field: "properties.k"},
		{name: "properties value control", over: map[string]string{"properties": `{"k":"\u0007"}`}, field: "properties.k"},
		{name: "properties value number", over: map[string]string{"properties": `{"n":1}`}, field: "properties.n"},
		{name: "properties value null", over: map[string]string{"properties": `{"n":null}`}, field: "properties.n"},
		{name: "properties value object", over: map[string]string{"properties": `{"n":{"a":[1,2,{"b":null}]}}`}, field: "properties.n"},
		{name: "properties duplicate key", over: map[string]string{"properties": `{"plan":"a","plan":"b"}`}, field: "properties.plan"},
		{name: "properties array", over: map[string]string{"properties": `["plan"]`}, field: "properties"},
		{name: "properties string", over: map[string]string{"properties": `"plan=pro"`}, field: "properties"},

		// unknown fields
		{name: "unknown field", over: map[string]string{"foo": `1`}, field: "foo"},
		{name: "unknown field null", over: map[string]string{"foo": `null`}, field: "foo"},
		{name: "field names are case-sensitive", over: map[string]string{"Status": `200`}, field: "Status"},
		{name: "unknown to properties", opts: toProps, over: map[string]string{"foo": `1.50`, "bar": `"x"`, "baz": `true`, "qux": `null`}, check: func(t *testing.T, e Event) {
			want := map[string]string{"plan": "pro", "foo": "1.50", "bar": "x", "baz": "true"}
			if fmt.Sprint(e.Properties) != fmt.Sprint(want) {
				t.Errorf("properties %v", e.Properties)
			}
		}},
		{name: "unknown to properties without properties", opts: toProps, over: map[string]string{"properties": omit, "foo": `"x"`}, check: func(t *testing.T, e Event) {
			if len(e.Properties) != 1 || e.Properties["foo"] != "x" {
				t.Errorf("properties %v", e.Properties)
			}
		}},
		{name: "unknown to properties object", opts: toProps, over: map[string]string{"foo": `{"a":1}`}, field: "foo"},
		{name: "unknown to properties clash", opts: toProps, over: map[string]string{"plan": `"basic"`}, field: "plan"},
		{name: "unknown to properties bad key", opts: toProps, over: map[string]string{"a b": `"x"`}, field: "a b"},
		{name: "unknown to properties over the limit", opts: Options{UnknownFieldsToProperties: true, MaxProperties: 1}, over: map[string]string{"foo": `"x"`}, field: "foo"},
		{name: "unknown to properties bad value", opts: toProps, over: map[string]string{"foo": `"\u0001"`}, field: "foo"},

		// keys
		{name: "escaped key", over: map[string]string{"status": omit, `st\u0061tus`: `201`}, check: func(t *testing.T, e Event) {
			if e.Status != 201 {
				t.Errorf("status %d", e.Status)
			}
		}},
		{name: "duplicate via escaped key", over: map[string]string{`st\u0061tus`: `201`}, field: "status"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := evJSON(tt.over)
			e, err := tt.opts.DecodeEvent([]byte(body), testRef)
			if tt.field == "" {
				if err != nil {
					t.Fatalf("DecodeEvent(%s): %v", body, err)
				}
				if tt.check != nil {
					tt.check(t, e)
				}
				return
			}
			if err == nil {
				t.Fatalf("DecodeEvent(%s) accepted %+v, want an error naming %q", body, e, tt.field)
			}
			ee := eventErr(t, err)
			if !hasField(ee, tt.field) {
				t.Fatalf("error %q does not name field %q", err, tt.field)
			}
			if !strings.Contains(err.Error(), strconv.Quote(tt.field)) {
				t.Errorf("message %q does not name %q", err, tt.field)
			}
			if !eventsEqual(e, Event{}) {
				t.Errorf("invalid event returned data: %+v", e)
			}
		})
	}
}

func TestDecodeEventReportsEveryError(t *testing.T) {
	body := evJSON(map[string]string{"status": `"200"`, "time": `"yesterday"`, "client_ip": `"x"`, "foo": `1`, "id": omit})
	_, err := Options{}.DecodeEvent([]byte(body), testRef)
	ee := eventErr(t, err)
	for _, f := range []string{"status", "time", "client_ip", "foo", "id"} {
		if !hasField(ee, f) {
			t.Errorf("error %q does not name %q", err, f)
		}
	}
	if ee.Index != 0 {
		t.Errorf("index %d", ee.Index)
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "event 0: ") || !strings.Contains(msg, `field "status": must be an integer, got string`) {
		t.Errorf("message %q", msg)
	}
}

func TestDecodeEventDuplicateKeys(t *testing.T) {
	for _, field := range []string{"id", "time", "status", "properties", "units"} {
		body := evJSON(nil)
		var v string
		for _, f := range baseFields {
			if f[0] == field {
				v = f[1]
			}
		}
		body = body[:len(body)-1] + `,"` + field + `":` + v + `}`
		_, err := Options{}.DecodeEvent([]byte(body), testRef)
		if ee := eventErr(t, err); !hasField(ee, field) || !strings.Contains(err.Error(), "duplicate") {
			t.Errorf("%s twice: %v", field, err)
		}
	}
}

func TestDecodeEventMalformed(t *testing.T) {
	for _, body := range []string{
		``, ` `, `[]`, `"x"`, `{`, `{"id":}`, `{"id":"a",}`, `{"id":"a"} x`, `{"id":"a"}{}`,
		`{"id":'a'}`, `{id:"a"}`, "{\"id\":\"a\x01\"}", `{"id":"a\x"}`, `{"a":[1,2}`, `{"a":01}`,
		`{"a":1.}`, `{"a":-}`, `{"a":1e}`, `{"a":tru}`, `{"a":"\u12"}`, `nul`,
	} {
		_, err := Options{}.DecodeEvent([]byte(body), testRef)
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("DecodeEvent(%q) = %v, want ErrMalformed", body, err)
		}
	}
	_, err := Options{}.DecodeEvent([]byte("{\n  \"id\": \"a\",\n  \"x\": nope\n}"), testRef)
	if err == nil || !strings.Contains(err.Error(), "line 3, column 8 (byte offset 22)") {
		t.Errorf("position: %v", err)
	}
}

func TestDecodeEventZeroRefSkipsWindow(t *testing.T) {
	body := evJSON(map[string]string{"time": `"1999-01-01T00:00:00Z"`})
	if _, err := (Options{}).DecodeEvent([]byte(body), time.Time{}); err != nil {
		t.Fatal(err)
	}
}

func TestDecodeEventBOM(t *testing.T) {
	body := "\xEF\xBB\xBF" + evJSON(nil)
	if _, err := (Options{}).DecodeEvent([]byte(body), testRef); err != nil {
		t.Fatal(err)
	}
}

func TestEventErrorFormat(t *testing.T) {
	e := &EventError{Index: 3, Fields: []FieldError{
		{Field: "status", Message: "must be an integer from 100 to 599"},
		{Field: "time", Message: "is required"},
		{Message: "further errors not reported"},
	}}
	want := `event 3: field "status": must be an integer from 100 to 599; field "time": is required; further errors not reported`
	if got := e.Error(); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestFieldErrorsAreBounded(t *testing.T) {
	var b strings.Builder
	b.WriteString(evJSON(nil))
	s := b.String()
	s = s[:len(s)-1]
	for i := range 1000 {
		s += fmt.Sprintf(`,"u%d":1`, i)
	}
	s += "}"
	_, err := Options{}.DecodeEvent([]byte(s), testRef)
	ee := eventErr(t, err)
	if len(ee.Fields) > maxFieldErrors+1 {
		t.Errorf("%d field errors", len(ee.Fields))
	}
}
