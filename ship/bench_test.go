package ship

import (
	"encoding/json"
	"testing"
)

// BenchmarkMapCaddyLine is the cost of mapping one access log line into an
// event, against the baseline of decoding the same line into a generic
// map (what any JSON log reader pays):
//
//	go test ./ship -run '^$' -bench 'CaddyLine' -benchmem
func BenchmarkMapCaddyLine(b *testing.B) {
	m, err := NewMapper(CaddyConfig{KeyHeader: "X-Api-Key-Id", CustomerHeader: "X-Customer-Id", IDHeader: "X-Request-Id", UnitsHeader: "X-Units", Routes: []string{"/v1/users/{id}", "/v1/pets/{id}/toys", "/v1/pets/{id}"}})
	if err != nil {
		b.Fatal(err)
	}
	line := []byte(caddyLine)
	b.SetBytes(int64(len(line)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Map(line); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeCaddyLineBaseline(b *testing.B) {
	line := []byte(caddyLine)
	b.SetBytes(int64(len(line)))
	b.ReportAllocs()
	for b.Loop() {
		var v map[string]any
		if err := json.Unmarshal(line, &v); err != nil {
			b.Fatal(err)
		}
	}
}
