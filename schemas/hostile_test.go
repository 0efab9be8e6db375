package schemas

import (
	"errors"
	"strings"
	"testing"
)

// TestHostileInput feeds bodies meant to break the decoder. Each must end in a
// clean error (a body error or per-event errors), quickly and without a panic.
func TestHostileInput(t *testing.T) {
	deep := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	deepObj := func(n int) string { return strings.Repeat(`{"a":`, n) + "1" + strings.Repeat("}", n) }
	many := func(n int) string {
		var b strings.Builder
		b.WriteByte('{')
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(`"k`)
			b.WriteString(strings.Repeat("x", i%7))
			b.WriteString(`":"v"`)
		}
		b.WriteByte('}')
		return b.String()
	}
	huge := strings.Repeat("a", 10<<20)
	tests := []struct {
		name, ct, body string
		field          string // per-event error naming this field; "" for a body error
	}{
		{"deep nesting in properties", "application/json", evJSON(map[string]string{"properties": `{"a":` + deep(1_000_000) + `}`}), "properties.a"},
		{"deep objects in an unknown field", "application/json", evJSON(map[string]string{"foo": deepObj(100_000)}), "foo"},
		{"deep nesting unbalanced", "application/json", "[" + evJSON(map[string]string{"foo": strings.Repeat("[", 1_000_000)}) + "]", ""},
		{"huge number", "application/json", evJSON(map[string]string{"latency_ms": "1e400"}), "latency_ms"},
		{"huge integer literal", "application/json", evJSON(map[string]string{"response_bytes": strings.Repeat("9", 1_000_000)}), "response_bytes"},
		{"NUL in a string", "application/json", "[" + evJSON(map[string]string{"route": "\"/a\x00b\""}) + "]", ""},
		{"escaped NUL", "application/json", evJSON(map[string]string{"route": `"/a\u0000b"`}), "route"},
		{"NUL bytes body", "application/json", "\x00\x00\x00", ""},
		{"invalid UTF-8 in a value", "application/json", evJSON(map[string]string{"gateway": "\"\xc3\x28\""}), "gateway"},
		{"invalid UTF-8 in a key", "application/json", evJSON(map[string]string{"\xff\xfe": "1"}), "\uFFFD\uFFFD"},
		{"10 MB string", "application/json", evJSON(map[string]string{"id": `"` + huge + `"`}), "id"},
		{"10 MB user agent", "application/json", evJSON(map[string]string{"user_agent": `"` + huge + `"`, "status": "0"}), "status"},
		{"10 MB key", "application/json", evJSON(map[string]string{huge: "1"}), "a" + strings.Repeat("a", 63) + "…"},
		{"10 MB time", "application/json", evJSON(map[string]string{"time": `"2026-11-23T15:00:00.` + strings.Repeat("1", 10<<20) + `Z"`, "status": "0"}), "status"},
		{"many keys", "application/json", evJSON(map[string]string{"properties": many(200_000)}), "properties"},
		{"many top-level keys", "application/json", many(200_000), ""},
		{"ndjson binary junk", "application/x-ndjson", "\xff\xfe\x00{\n\x00", ""},
		{"unterminated string", "application/json", `[{"id":"` + huge, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, err := Options{}.DecodeBatch(tt.ct, []byte(tt.body), testRef)
			if tt.field == "" {
				if err != nil {
					if !errors.Is(err, ErrMalformed) {
						t.Fatalf("error %v", err)
					}
					if len(err.Error()) > 300 {
						t.Errorf("error of %d bytes", len(err.Error()))
					}
					return
				}
				for _, r := range rs {
					if r.Err == nil {
						t.Errorf("event %d accepted", r.Index)
					}
				}
				return
			}
			if err != nil || len(rs) != 1 || rs[0].Err == nil {
				t.Fatalf("want one invalid event, got %v, %v", rs, err)
			}
			ee := eventErr(t, rs[0].Err)
			if tt.field != "*" && !hasField(ee, tt.field) {
				t.Errorf("error does not name %q: %.300s", tt.field, rs[0].Err)
			}
			if len(rs[0].Err.Error()) > 2000 {
				t.Errorf("error of %d bytes", len(rs[0].Err.Error()))
			}
		})
	}
}

// TestHostileEventKeepsNeighbours: bad input never hurts good input in the
// same batch.
func TestHostileEventKeepsNeighbours(t *testing.T) {
	hostile := []string{
		evJSON(map[string]string{"id": `"h"`, "properties": `{"a":` + strings.Repeat("[", 100_000) + strings.Repeat("]", 100_000) + `}`}),
		evJSON(map[string]string{"id": `"h"`, "status": "1e400"}),
		evJSON(map[string]string{"id": `"h"`, "route": `"\u0000"`}),
		evJSON(map[string]string{"id": "\"\xff\""}),
		strings.Repeat(`{"a":`, 1000) + "1" + strings.Repeat("}", 1000),
		`[[[[[[[]]]]]]]`,
	}
	for _, h := range hostile {
		body := "[" + ev("a") + "," + h + "," + ev("b") + "]"
		rs, err := Options{}.DecodeBatch("application/json", []byte(body), testRef)
		if err != nil {
			t.Fatalf("%.80s: %v", h, err)
		}
		if got := outcome(rs); !strings.HasPrefix(got, "a !") || !strings.HasSuffix(got, " b") || len(rs) != 3 {
			t.Errorf("%.80s: %s", h, got)
		}
		nd := ev("a") + "\n" + h + "\n" + ev("b")
		rs, err = Options{}.DecodeBatch("application/x-ndjson", []byte(nd), testRef)
		if err != nil || len(rs) != 3 || rs[0].Err != nil || rs[1].Err == nil || rs[2].Err != nil {
			t.Errorf("ndjson %.80s: %s %v", h, outcome(rs), err)
		}
	}
}
