package schemas

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// testRef is the reference time of the tests: valid events are stamped
// shortly before it.
var testRef = time.Date(2026, 11, 23, 15, 4, 5, 0, time.UTC)

// omit removes a base field in evJSON overrides.
const omit = "\x00omit"

// baseFields is a valid event with every field, as raw JSON values.
var baseFields = [][2]string{
	{"id", `"req-1"`},
	{"time", `"2026-11-23T15:00:00.123Z"`},
	{"api_key_id", `"key_1"`},
	{"customer_id", `"cus_1"`},
	{"gateway", `"eu-1"`},
	{"method", `"GET"`},
	{"route", `"/v1/pets/{id}"`},
	{"status", `200`},
	{"latency_ms", `12.5`},
	{"request_bytes", `10`},
	{"response_bytes", `2048`},
	{"client_ip", `"203.0.113.7"`},
	{"user_agent", `"curl/8.5.0"`},
	{"units", `2`},
	{"properties", `{"plan":"pro"}`},
}

// evJSON builds an event object from baseFields with overrides: a key of
// baseFields gets the new raw value (or is dropped with omit), other keys are
// appended in sorted order.
func evJSON(over map[string]string) string {
	var b strings.Builder
	b.WriteByte('{')
	n := 0
	add := func(k, v string) {
		if n > 0 {
			b.WriteByte(',')
		}
		n++
		b.WriteString(`"` + k + `":` + v)
	}
	for _, f := range baseFields {
		v, ok := over[f[0]]
		switch {
		case !ok:
			add(f[0], f[1])
		case v != omit:
			add(f[0], v)
		}
	}
	var extra []string
	for k := range over {
		if !slices.ContainsFunc(baseFields, func(f [2]string) bool { return f[0] == k }) {
			extra = append(extra, k)
		}
	}
	slices.Sort(extra)
	for _, k := range extra {
		add(k, over[k])
	}
	b.WriteByte('}')
	return b.String()
}

// eventErr asserts that err is an *EventError and returns it.
func eventErr(t *testing.T, err error) *EventError {
	t.Helper()
	var ee *EventError
	if !errors.As(err, &ee) {
		t.Fatalf("error %v (%T) is not an *EventError", err, err)
	}
	return ee
}

// hasField reports whether ee names field.
func hasField(ee *EventError, field string) bool {
	for _, f := range ee.Fields {
		if f.Field == field {
			return true
		}
	}
	return false
}

func eventsEqual(a, b Event) bool {
	if !a.Time.Equal(b.Time) || a.Time.Location() != b.Time.Location() {
		return false
	}
	a.Time, b.Time = time.Time{}, time.Time{}
	return reflect.DeepEqual(a, b)
}
