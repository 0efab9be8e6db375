package bench

import (
	"bytes"
	"encoding/json"
	"sort"
	"testing"
	"time"

	"github.com/meterline/meterline/schemas"
)

// sample decodes n generated events with the pipeline's own decoder, so the
// test also proves that every generated event is valid.
func sample(t *testing.T, tr Traffic, n int) (evs []schemas.Event, raw [][]byte, g *Generator, now time.Time) {
	t.Helper()
	now = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	g = NewGenerator(tr, "s0", 42)
	for i := 0; i < n; i++ {
		b, _, _ := g.Append(nil, now)
		ev, err := (schemas.Options{}).DecodeEvent(b, now)
		if err != nil {
			t.Fatalf("generated event %d is invalid: %v\n%s", i, err, b)
		}
		evs = append(evs, ev)
		raw = append(raw, b)
	}
	return evs, raw, g, now
}

func TestGeneratorZipfSkew(t *testing.T) {
	evs, _, _, _ := sample(t, Traffic{Prefix: "t", Customers: 1000, KeysPerCustomer: 10}, 50000)
	perCust := map[string]int{}
	perKey := map[string]int{}
	for _, e := range evs {
		perCust[e.CustomerID]++
		perKey[e.APIKeyID]++
	}
	counts := make([]int, 0, len(perCust))
	for _, n := range perCust {
		counts = append(counts, n)
	}
	sort.Sort(sort.Reverse(sort.IntSlice(counts)))
	top10 := 0
	for _, n := range counts[:10] {
		top10 += n
	}
	// A Zipf law with s=1.1 over 1,000 customers gives the top 1 % about
	// half the traffic; a uniform draw would give them 1 %.
	if share := float64(top10) / float64(len(evs)); share < 0.3 || share > 0.8 {
		t.Errorf("top 10 customers have %.0f%% of the events, want a Zipf-like 30-80%%", share*100)
	}
	if counts[0] < 20*counts[len(counts)/2] {
		t.Errorf("largest customer %d events, median %d: not skewed", counts[0], counts[len(counts)/2])
	}
	if len(perCust) < 200 {
		t.Errorf("only %d customers seen: no long tail", len(perCust))
	}
	if len(perKey) <= len(perCust) {
		t.Errorf("%d keys for %d customers: customers should have several keys", len(perKey), len(perCust))
	}
}

func TestGeneratorErrorShare(t *testing.T) {
	evs, _, g, _ := sample(t, Traffic{Prefix: "t"}, 40000)
	errs := 0
	for _, e := range evs {
		if e.Status >= 400 {
			errs++
		}
	}
	// Duplicates repeat earlier events, errors included.
	if share := float64(errs) / float64(len(evs)); share < 0.01 || share > 0.03 {
		t.Errorf("error share %.2f%%, want 1-3%% (default 2%%)", share*100)
	}
	if g.Errors == 0 {
		t.Error("error counter not kept")
	}
}

func TestGeneratorDuplicates(t *testing.T) {
	evs, raw, g, _ := sample(t, Traffic{Prefix: "t", DupRate: 0.05}, 40000)
	seen := map[string][]byte{}
	dups := 0
	for i, e := range evs {
		if prev, ok := seen[e.ID]; ok {
			dups++
			if !bytes.Equal(prev, raw[i]) {
				t.Fatalf("duplicate of %s differs from the original:\n%s\n%s", e.ID, prev, raw[i])
			}
			continue
		}
		seen[e.ID] = raw[i]
	}
	if share := float64(dups) / float64(len(evs)); share < 0.04 || share > 0.06 {
		t.Errorf("duplicate share %.2f%%, want about 5%%", share*100)
	}
	if int64(dups) != g.Dups {
		t.Errorf("generator counted %d duplicates, the ids show %d", g.Dups, dups)
	}
	_, _, g0, _ := sample(t, Traffic{Prefix: "t", DupRate: -1}, 1000)
	if g0.Dups != 0 {
		t.Errorf("DupRate -1 gave %d duplicates", g0.Dups)
	}
}

func TestGeneratorLateEvents(t *testing.T) {
	lateness := 5 * time.Minute
	evs, _, g, now := sample(t, Traffic{Prefix: "t", LateRate: 0.05, Lateness: lateness, DupRate: -1}, 20000)
	late := 0
	for _, e := range evs {
		age := now.Sub(e.Time)
		switch {
		case age >= lateness:
			late++
			if age >= 2*lateness {
				t.Errorf("late event %s is %s old, want < %s", e.ID, age, 2*lateness)
			}
		case age > 30*time.Second:
			t.Errorf("on-time event %s is %s old", e.ID, age)
		case age < 0:
			t.Errorf("event %s is in the future by %s", e.ID, -age)
		}
	}
	if int64(late) != g.Late {
		t.Errorf("%d events older than the lateness, generator counted %d late", late, g.Late)
	}
	if share := float64(late) / float64(len(evs)); share < 0.04 || share > 0.06 {
		t.Errorf("late share %.2f%%, want about 5%%", share*100)
	}
}

func TestGeneratorBatchIsAJSONArrayOfDistinctIDs(t *testing.T) {
	g := NewGenerator(Traffic{Prefix: "t", DupRate: -1}, "a", 1)
	body, dups := g.AppendBatch(nil, 500, time.Now())
	var arr []map[string]any
	if err := json.Unmarshal(body, &arr); err != nil {
		t.Fatal(err)
	}
	ids := map[any]bool{}
	for _, e := range arr {
		ids[e["id"]] = true
	}
	if len(arr) != 500 || len(ids) != 500 || dups != 0 {
		t.Fatalf("%d events, %d distinct ids, %d dups", len(arr), len(ids), dups)
	}
	// Another stream of the same run never reuses an id.
	g2 := NewGenerator(Traffic{Prefix: "t", DupRate: -1}, "b", 1)
	body2, _ := g2.AppendBatch(nil, 500, time.Now())
	var arr2 []map[string]any
	_ = json.Unmarshal(body2, &arr2)
	for _, e := range arr2 {
		if ids[e["id"]] {
			t.Fatalf("id %v in both streams", e["id"])
		}
	}
}

func BenchmarkGeneratorAppend(b *testing.B) {
	g := NewGenerator(Traffic{Prefix: "bench"}, "s", 1)
	buf := make([]byte, 0, 1<<20)
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		buf, _, _ = g.Append(buf[:0], now)
	}
}
