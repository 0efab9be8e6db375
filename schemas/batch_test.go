package schemas

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// outcome summarises a batch result: the id of each accepted event or the
// fields named by the error ("!status", "!" for a whole-event error).
func outcome(rs []Result) string {
	var parts []string
	for i, r := range rs {
		if r.Index != i {
			parts = append(parts, fmt.Sprintf("index %d at %d", r.Index, i))
		}
		if r.Err == nil {
			parts = append(parts, r.Event.ID)
			continue
		}
		var ee *EventError
		if !errors.As(r.Err, &ee) || ee.Index != r.Index {
			parts = append(parts, fmt.Sprintf("bad error %v", r.Err))
			continue
		}
		var fs []string
		for _, f := range ee.Fields {
			fs = append(fs, f.Field)
		}
		parts = append(parts, "!"+strings.Join(fs, ","))
	}
	return strings.Join(parts, " ")
}

func ev(id string, over ...string) string {
	m := map[string]string{"id": `"` + id + `"`}
	for i := 0; i+1 < len(over); i += 2 {
		m[over[i]] = over[i+1]
	}
	return evJSON(m)
}

func TestDecodeBatch(t *testing.T) {
	const (
		jsonCT = "application/json"
		ndCT   = "application/x-ndjson"
		ceCT   = "application/cloudevents+json"
		cebCT  = "application/cloudevents-batch+json"
	)
	ce := func(id string, extra ...string) string {
		s := `{"specversion":"1.0","id":"` + id + `","type":"dev.meterline.request.v1","source":"eu-1",` +
			`"subject":"key_1","time":"2026-11-23T15:00:00Z","data":{"status":200,"route":"/v1/x"}`
		for _, e := range extra {
			s += "," + e
		}
		return s + "}"
	}
	tests := []struct {
		name, ct, body string
		opts           Options
		want           string // outcome, when no error
		err            error
	}{
		{name: "array", ct: jsonCT, body: "[" + ev("a") + "," + ev("b") + "]", want: "a b"},
		{name: "empty content type", ct: "", body: "[" + ev("a") + "]", want: "a"},
		{name: "content type params", ct: "Application/JSON; charset=UTF-8", body: "[" + ev("a") + "]", want: "a"},
		{name: "single object", ct: jsonCT, body: ev("a"), want: "a"},
		{name: "empty array", ct: jsonCT, body: " [ ] ", want: ""},
		{name: "mixed valid and invalid", ct: jsonCT,
			body: "[" + ev("a") + "," + ev("b", "status", `"x"`) + "," + ev("c") + "," + ev("d", "time", omit, "foo", "1") + "," + ev("e") + "]",
			want: "a !status c !foo,time e"},
		{name: "array element not an object", ct: jsonCT, body: `[` + ev("a") + `,1,"x",null,[{}],` + ev("b") + `]`, want: "a ! ! ! ! b"},
		{name: "cloudevent inside json array", ct: jsonCT, body: "[" + ce("c1") + "," + ev("a") + "]", want: "c1 a"},
		{name: "array unbalanced", ct: jsonCT, body: "[" + ev("a"), err: ErrMalformed},
		{name: "array trailing comma", ct: jsonCT, body: "[" + ev("a") + ",]", err: ErrMalformed},
		{name: "array trailing garbage", ct: jsonCT, body: "[" + ev("a") + "]]", err: ErrMalformed},
		{name: "array broken element", ct: jsonCT, body: "[" + ev("a") + `,{"id":}]`, err: ErrMalformed},
		{name: "two objects", ct: jsonCT, body: ev("a") + ev("b"), err: ErrMalformed},
		{name: "scalar body", ct: jsonCT, body: `42`, err: ErrMalformed},
		{name: "empty body", ct: jsonCT, body: ``, err: ErrMalformed},
		{name: "too many", ct: jsonCT, opts: Options{MaxEvents: 2}, body: "[" + ev("a") + "," + ev("b") + "," + ev("c") + "]", err: ErrTooManyEvents},
		{name: "exactly max", ct: jsonCT, opts: Options{MaxEvents: 2}, body: "[" + ev("a") + "," + ev("b") + "]", want: "a b"},
		{name: "unsupported type", ct: "text/plain", body: "[]", err: ErrUnsupportedMediaType},
		{name: "unsupported charset", ct: "application/json; charset=latin1", body: "[]", err: ErrUnsupportedMediaType},
		{name: "unparseable content type", ct: "application/json; charset", body: "[]", err: ErrUnsupportedMediaType},

		{name: "ndjson", ct: ndCT, body: ev("a") + "\n" + ev("b") + "\n", want: "a b"},
		{name: "ndjson blank lines and CRLF", ct: ndCT, body: "\n" + ev("a") + "\r\n   \r\n\t\n" + ev("b"), want: "a b"},
		{name: "ndjson broken line", ct: ndCT, body: ev("a") + "\n{\"id\":\n" + ev("b") + "\n" + ev("c", "status", "1") + "\n", want: "a ! b !status"},
		{name: "ndjson trailing data on a line", ct: ndCT, body: ev("a") + " x\n" + ev("b"), want: "! b"},
		{name: "ndjson non-object line", ct: ndCT, body: "[1]\n" + ev("b"), want: "! b"},
		{name: "ndjson aliases", ct: "application/jsonl", body: ev("a"), want: "a"},
		{name: "ndjson nothing parseable", ct: ndCT, body: "[\n  " + ev("a") + ",\n]\n", err: ErrMalformed},
		{name: "ndjson binary", ct: ndCT, body: "\x00\x01\x02\xff", err: ErrMalformed},
		{name: "ndjson empty", ct: ndCT, body: "\n\n", want: ""},
		{name: "ndjson too many", ct: ndCT, opts: Options{MaxEvents: 1}, body: ev("a") + "\n\n" + ev("b"), err: ErrTooManyEvents},
		{name: "ndjson max with blank lines", ct: ndCT, opts: Options{MaxEvents: 1}, body: "\n" + ev("a") + "\n\n", want: "a"},

		{name: "cloudevent", ct: ceCT, body: ce("c1"), want: "c1"},
		{name: "cloudevent array is malformed", ct: ceCT, body: "[" + ce("c1") + "]", err: ErrMalformed},
		{name: "cloudevent without specversion", ct: ceCT, body: ev("a"), want: "!specversion,source,type,data,api_key_id,customer_id,latency_ms,request_bytes,response_bytes,client_ip,user_agent"},
		{name: "cloudevents batch", ct: cebCT, body: "[" + ce("c1") + "," + ce("c2", `"data_base64":"AA=="`) + "," + ce("c3") + "]", want: "c1 !data_base64 c3"},
		{name: "cloudevents batch object is malformed", ct: cebCT, body: ce("c1"), err: ErrMalformed},
		{name: "cloudevents batch too many", ct: cebCT, opts: Options{MaxEvents: 1}, body: "[" + ce("c1") + "," + ce("c2") + "]", err: ErrTooManyEvents},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, err := tt.opts.DecodeBatch(tt.ct, []byte(tt.body), testRef)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("error %v, want %v", err, tt.err)
				}
				if rs != nil {
					t.Errorf("results with a body error: %v", outcome(rs))
				}
				return
			}
			if err != nil {
				t.Fatalf("DecodeBatch: %v", err)
			}
			if got := outcome(rs); got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestDecodeBatchMalformedPosition(t *testing.T) {
	body := "[\n" + ev("a") + ",\n" + ev("b") + "\n}"
	_, err := Options{}.DecodeBatch("application/json", []byte(body), testRef)
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "line 4, column 1") {
		t.Errorf("error %v", err)
	}
	nd := "nope\n{\"a\":\n"
	_, err = Options{}.DecodeBatch("application/x-ndjson", []byte(nd), testRef)
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "line 1, column 1") {
		t.Errorf("error %v", err)
	}
}

func TestDecodeBatchInvalidEventIsEmpty(t *testing.T) {
	rs, err := Options{}.DecodeBatch("", []byte("["+ev("a", "status", "0")+"]"), testRef)
	if err != nil || len(rs) != 1 || rs[0].Err == nil {
		t.Fatalf("%v %v", rs, err)
	}
	if !eventsEqual(rs[0].Event, Event{}) {
		t.Errorf("invalid event carries data: %+v", rs[0].Event)
	}
}

func TestCloudEvents(t *testing.T) {
	const ct = "application/cloudevents+json"
	envelope := map[string]string{
		"specversion": `"1.0"`,
		"id":          `"ce-1"`,
		"type":        `"dev.meterline.request.v1"`,
		"source":      `"eu-1"`,
		"subject":     `"key_1"`,
		"time":        `"2026-11-23T16:00:00.5+01:00"`,
		"data":        `{"status":201,"method":"post","route":"/v1/pets","units":3,"properties":{"plan":"pro"}}`,
	}
	build := func(over map[string]string) string {
		m := map[string]string{}
		for k, v := range envelope {
			m[k] = v
		}
		for k, v := range over {
			if v == omit {
				delete(m, k)
			} else {
				m[k] = v
			}
		}
		var parts []string
		for _, k := range []string{"specversion", "id", "type", "source", "subject", "time", "datacontenttype", "dataschema", "data", "data_base64"} {
			if v, ok := m[k]; ok {
				parts = append(parts, `"`+k+`":`+v)
				delete(m, k)
			}
		}
		for k, v := range m {
			parts = append(parts, `"`+k+`":`+v)
		}
		return "{" + strings.Join(parts, ",") + "}"
	}
	toProps := Options{UnknownFieldsToProperties: true}
	tests := []struct {
		name  string
		over  map[string]string
		opts  Options
		field string
		check func(t *testing.T, e Event)
	}{
		{name: "mapping", check: func(t *testing.T, e Event) {
			want := Event{ID: "ce-1", Time: time.Date(2026, 11, 23, 15, 0, 0, 500e6, time.UTC), APIKeyID: "key_1",
				Gateway: "eu-1", Method: "POST", Route: "/v1/pets", Status: 201, Units: 3,
				Properties: map[string]string{"plan": "pro"},
				Absent:     MeasureLatency | MeasureRequestBytes | MeasureResponseBytes}
			if !eventsEqual(e, want) {
				t.Errorf("got  %+v\nwant %+v", e, want)
			}
		}},
		{name: "units default", over: map[string]string{"data": `{"status":200}`}, check: func(t *testing.T, e Event) {
			if e.Units != 1 {
				t.Errorf("units %v", e.Units)
			}
		}},
		{name: "any type", over: map[string]string{"type": `"com.example.whatever"`}},
		{name: "datacontenttype json", over: map[string]string{"datacontenttype": `"application/json; charset=utf-8"`}},
		{name: "datacontenttype xml", over: map[string]string{"datacontenttype": `"application/xml"`}, field: "datacontenttype"},
		{name: "dataschema ignored", over: map[string]string{"dataschema": `"urn:meterline:schema:event:v1"`}},
		{name: "specversion 0.3", over: map[string]string{"specversion": `"0.3"`}, field: "specversion"},
		{name: "specversion number", over: map[string]string{"specversion": `1.0`}, field: "specversion"},
		{name: "specversion null", over: map[string]string{"specversion": `null`}, field: "specversion"},
		{name: "id missing", over: map[string]string{"id": omit}, field: "id"},
		{name: "id too long", over: map[string]string{"id": `"` + strings.Repeat("x", 129) + `"`}, field: "id"},
		{name: "type missing", over: map[string]string{"type": omit}, field: "type"},
		{name: "type empty", over: map[string]string{"type": `""`}, field: "type"},
		{name: "source missing", over: map[string]string{"source": omit}, field: "source"},
		{name: "source too long", over: map[string]string{"source": `"` + strings.Repeat("x", 129) + `"`}, field: "source"},
		{name: "subject missing", over: map[string]string{"subject": omit}, field: "subject"},
		{name: "subject from data", over: map[string]string{"subject": omit, "data": `{"status":200,"api_key_id":"key_9"}`}, check: func(t *testing.T, e Event) {
			if e.APIKeyID != "key_9" {
				t.Errorf("api_key_id %q", e.APIKeyID)
			}
		}},
		{name: "subject bad", over: map[string]string{"subject": `"a\u0000"`}, field: "subject"},
		{name: "time missing", over: map[string]string{"time": omit}, field: "time"},
		{name: "time from data", over: map[string]string{"time": omit, "data": `{"status":200,"time":"2026-11-23T15:00:00Z"}`}},
		{name: "time bad", over: map[string]string{"time": `"noon"`}, field: "time"},
		{name: "time too old", over: map[string]string{"time": `"2020-01-01T00:00:00Z"`}, field: "time"},
		{name: "data missing", over: map[string]string{"data": omit}, field: "data"},
		{name: "data null", over: map[string]string{"data": `null`}, field: "data"},
		{name: "data string", over: map[string]string{"data": `"{\"status\":200}"`}, field: "data"},
		{name: "data_base64", over: map[string]string{"data": omit, "data_base64": `"eyJzdGF0dXMiOjIwMH0="`}, field: "data_base64"},
		{name: "data status missing", over: map[string]string{"data": `{"route":"/x"}`}, field: "data.status"},
		{name: "data status bad", over: map[string]string{"data": `{"status":"200"}`}, field: "data.status"},
		{name: "data unknown field", over: map[string]string{"data": `{"status":200,"foo":1}`}, field: "data.foo"},
		{name: "data unknown field to properties", opts: toProps, over: map[string]string{"data": `{"status":200,"foo":1}`}, check: func(t *testing.T, e Event) {
			if e.Properties["foo"] != "1" {
				t.Errorf("properties %v", e.Properties)
			}
		}},
		{name: "data property bad", over: map[string]string{"data": `{"status":200,"properties":{"k":1}}`}, field: "data.properties.k"},
		{name: "data id agrees", over: map[string]string{"data": `{"status":200,"id":"ce-1","time":"2026-11-23T15:00:00.5Z","api_key_id":"key_1","gateway":"eu-1"}`}},
		{name: "data id disagrees", over: map[string]string{"data": `{"status":200,"id":"other"}`}, field: "data.id"},
		{name: "data time disagrees", over: map[string]string{"data": `{"status":200,"time":"2026-11-23T15:00:00Z"}`}, field: "data.time"},
		{name: "data api_key_id disagrees", over: map[string]string{"data": `{"status":200,"api_key_id":"key_2"}`}, field: "data.api_key_id"},
		{name: "data gateway disagrees", over: map[string]string{"data": `{"status":200,"gateway":"us-1"}`}, field: "data.gateway"},
		{name: "duplicate attribute", over: map[string]string{"subject": `"key_1","subject":"key_2"`}, field: "subject"},
		{name: "extension ignored", over: map[string]string{"traceparent": `"00-abc-def-01"`, "region": `"eu"`}, check: func(t *testing.T, e Event) {
			if len(e.Properties) != 1 {
				t.Errorf("properties %v", e.Properties)
			}
		}},
		{name: "extension long name accepted", over: map[string]string{"averyveryverylongextensionname": `1`}},
		{name: "extension to properties", opts: toProps, over: map[string]string{"region": `"eu"`, "sampled": `true`, "rate": `0.5`}, check: func(t *testing.T, e Event) {
			want := map[string]string{"plan": "pro", "region": "eu", "sampled": "true", "rate": "0.5"}
			if fmt.Sprint(e.Properties) != fmt.Sprint(want) {
				t.Errorf("properties %v", e.Properties)
			}
		}},
		{name: "extension clashes with data property", opts: toProps, over: map[string]string{"plan": `"basic"`}, field: "plan"},
		{name: "extension object to properties", opts: toProps, over: map[string]string{"region": `{"a":1}`}, field: "region"},
		{name: "invalid extension name", over: map[string]string{"api_key_id": `"key_1"`}, field: "api_key_id"},
		{name: "uppercase extension name", over: map[string]string{"Region": `"eu"`}, field: "Region"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := build(tt.over)
			rs, err := tt.opts.DecodeBatch(ct, []byte(body), testRef)
			if err != nil || len(rs) != 1 {
				t.Fatalf("DecodeBatch(%s) = %v, %v", body, rs, err)
			}
			r := rs[0]
			if tt.field == "" {
				if r.Err != nil {
					t.Fatalf("%s: %v", body, r.Err)
				}
				if tt.check != nil {
					tt.check(t, r.Event)
				}
				return
			}
			if r.Err == nil {
				t.Fatalf("%s accepted, want an error naming %q", body, tt.field)
			}
			if ee := eventErr(t, r.Err); !hasField(ee, tt.field) {
				t.Errorf("error %q does not name %q", r.Err, tt.field)
			}
			// The same object in a JSON array is recognised by specversion.
			if tt.over["specversion"] == "" {
				rs, err := tt.opts.DecodeBatch("application/json", []byte("["+body+"]"), testRef)
				if err != nil || len(rs) != 1 || rs[0].Err == nil || !hasField(eventErr(t, rs[0].Err), tt.field) {
					t.Errorf("as application/json: %v %v", rs, err)
				}
			}
		})
	}
}

func TestDecodeEventAcceptsCloudEvent(t *testing.T) {
	body := `{"specversion":"1.0","id":"x","type":"t","source":"s","subject":"k","time":"2026-11-23T15:00:00Z","data":{"status":204}}`
	e, err := Options{}.DecodeEvent([]byte(body), testRef)
	if err != nil || e.Status != 204 || e.Gateway != "s" || e.APIKeyID != "k" {
		t.Fatalf("%+v %v", e, err)
	}
}

// TestConcurrentDecode shares the decoder pool and its intern tables between
// goroutines; run with -race.
func TestConcurrentDecode(t *testing.T) {
	array, ndjson, _ := benchBodies(200)
	want := benchEvents(200)
	done := make(chan error)
	for g := range 8 {
		go func() {
			ct, body := "application/json", array
			if g%2 == 1 {
				ct, body = "application/x-ndjson", ndjson
			}
			for range 20 {
				rs, err := Options{}.DecodeBatch(ct, body, testRef)
				if err != nil {
					done <- err
					return
				}
				for i, r := range rs {
					if r.Err != nil || !eventsEqual(r.Event, want[i]) {
						done <- fmt.Errorf("event %d: %v %+v", i, r.Err, r.Event)
						return
					}
				}
			}
			done <- nil
		}()
	}
	for range 8 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}
