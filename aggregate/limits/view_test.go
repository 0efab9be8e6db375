package limits

import (
	"context"
	"errors"
	"maps"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meterline/meterline/store"
)

// fixedSource is a fixed source standing in for the rollups: it returns
// the same units per customer for any range.
type fixedSource map[string]float64

func (s fixedSource) UnitsByCustomer(context.Context, time.Time, time.Time) (map[string]float64, error) {
	return maps.Clone(s), nil
}

// settableSource is a source standing in for the rollups whose figures
// (or failure) a test changes between refreshes, and which remembers the
// range it was asked for.
type settableSource struct {
	mu       sync.Mutex
	units    map[string]float64
	err      error
	from, to time.Time
}

func (s *settableSource) set(customer string, units float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.units == nil {
		s.units = map[string]float64{}
	}
	s.units[customer] = units
}

func (s *settableSource) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = err
}

func (s *settableSource) UnitsByCustomer(_ context.Context, from, to time.Time) (map[string]float64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.from, s.to = from, to
	if s.err != nil {
		return nil, s.err
	}
	return maps.Clone(s.units), nil
}

// newTestView builds a View with its own metrics registry. db may be nil
// (no alerts).
func newTestView(t testing.TB, cfg Config, r *Registry, src UsageSource, db store.Conn) *View {
	t.Helper()
	v := NewView(cfg, r, src, db, prometheus.NewRegistry(), testLog())
	t.Cleanup(v.Close)
	return v
}

func refresh(t testing.TB, v *View) {
	t.Helper()
	if err := v.Refresh(context.Background()); err != nil {
		t.Fatalf("refresh: %v", err)
	}
}

func at(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestLookupMath(t *testing.T) {
	r := NewRegistry(mustParse(t, validCatalogue))
	src := &settableSource{}
	v := newTestView(t, Config{}, r, src, nil)
	now := at("2026-03-14T15:09:26Z")
	v.now = func() time.Time { return now }

	cases := []struct {
		key                string
		used               float64
		customer, plan     string
		included           float64
		hard               float64 // 0: none
		remaining          float64
		overIncl, overHard bool
	}{
		{"key_live_1", 0, "acme", "pro", 100000, 150000, 100000, false, false},
		{"key_live_2", 99999.5, "acme", "pro", 100000, 150000, 0.5, false, false},
		{"key_live_1", 100000, "acme", "pro", 100000, 150000, 0, false, false},
		{"key_live_1", 120000, "acme", "pro", 100000, 150000, 0, true, false}, // remaining floors at 0
		{"key_live_1", 150000, "acme", "pro", 100000, 150000, 0, true, true},  // hard limit reached
		{"key_g", 2500, "globex", "free", 1000, 0, 0, true, false},            // no hard limit
	}
	for _, c := range cases {
		src.set(c.customer, c.used)
		refresh(t, v)
		l, err := v.Lookup(c.key, now.Add(2*time.Second))
		if err != nil {
			t.Fatalf("%s at %v: %v", c.key, c.used, err)
		}
		if l.APIKeyID != c.key || l.CustomerID != c.customer || l.PlanID != c.plan || l.Used != c.used ||
			l.Included != c.included || l.Remaining != c.remaining || l.OverIncluded != c.overIncl || l.OverHardLimit != c.overHard {
			t.Errorf("%s at %v: got %+v", c.key, c.used, l)
		}
		if (c.hard == 0) != (l.HardLimit == nil) || (l.HardLimit != nil && *l.HardLimit != c.hard) {
			t.Errorf("%s: hard limit %v, want %v", c.key, l.HardLimit, c.hard)
		}
		if !l.PeriodStart.Equal(at("2026-03-01T00:00:00Z")) || !l.ResetAt.Equal(at("2026-04-01T00:00:00Z")) {
			t.Errorf("period %v - %v", l.PeriodStart, l.ResetAt)
		}
		if !l.AsOf.Equal(now) || l.StalenessSeconds != 2 {
			t.Errorf("as of %v, staleness %v", l.AsOf, l.StalenessSeconds)
		}
	}
	// The source is asked for the whole current period.
	if !src.from.Equal(at("2026-03-01T00:00:00Z")) || !src.to.Equal(at("2026-04-01T00:00:00Z")) {
		t.Errorf("source asked for [%v, %v)", src.from, src.to)
	}
	// A customer without usage has used nothing.
	if l, err := v.Lookup("key_g", now); err != nil || l.CustomerID != "globex" {
		t.Fatal(l, err)
	}
}

func TestPeriods(t *testing.T) {
	for _, c := range []struct{ now, start, next string }{
		{"2025-12-31T23:59:59Z", "2025-12-01T00:00:00Z", "2026-01-01T00:00:00Z"}, // December to January
		{"2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"},
		{"2028-02-29T12:00:00Z", "2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z"},
		{"2026-03-31T23:30:00-02:00", "2026-04-01T00:00:00Z", "2026-05-01T00:00:00Z"}, // UTC, whatever the zone
	} {
		s, n := periodOf(at(c.now))
		if !s.Equal(at(c.start)) || !n.Equal(at(c.next)) || s.Location() != time.UTC {
			t.Errorf("periodOf(%s) = %v, %v; want %s, %s", c.now, s, n, c.start, c.next)
		}
	}
}

func TestLookupAcrossTheYearBoundary(t *testing.T) {
	r := NewRegistry(mustParse(t, validCatalogue))
	v := newTestView(t, Config{}, r, fixedSource{"acme": 90000}, nil)
	now := at("2025-12-31T23:59:58Z")
	v.now = func() time.Time { return now }
	refresh(t, v)

	l, err := v.Lookup("key_live_1", now)
	if err != nil || l.Used != 90000 || !l.ResetAt.Equal(at("2026-01-01T00:00:00Z")) {
		t.Fatalf("before midnight: %+v, %v", l, err)
	}
	// After the period ended and before the next refresh: the new period,
	// with nothing of it counted as of the snapshot.
	after := at("2026-01-01T00:00:03Z")
	l, err = v.Lookup("key_live_1", after)
	if err != nil {
		t.Fatal(err)
	}
	if l.Used != 0 || l.Remaining != 100000 || !l.PeriodStart.Equal(at("2026-01-01T00:00:00Z")) ||
		!l.ResetAt.Equal(at("2026-02-01T00:00:00Z")) || l.StalenessSeconds != 5 || !l.AsOf.Equal(now) {
		t.Fatalf("after midnight: %+v", l)
	}
	// A caller whose clock is before the snapshot's period gets no answer.
	if _, err := v.Lookup("key_live_1", at("2025-11-30T23:59:59Z")); !errors.Is(err, ErrStale) {
		t.Fatalf("caller before the period: %v", err)
	}
}

func TestLookupErrors(t *testing.T) {
	r := NewRegistry(mustParse(t, validCatalogue))
	src := &settableSource{}
	reg := prometheus.NewRegistry()
	v := NewView(Config{MaxStaleness: time.Minute}, r, src, nil, reg, testLog())
	now := at("2026-03-14T15:00:00Z")
	v.now = func() time.Time { return now }

	if _, err := v.Lookup("key_live_1", now); !errors.Is(err, ErrStale) {
		t.Fatalf("never refreshed: %v, want ErrStale", err)
	}
	if _, err := v.Lookup("nobody", now); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("unknown key: %v", err)
	}
	refresh(t, v)
	if _, err := v.Lookup("key_live_1", now.Add(time.Minute)); err != nil {
		t.Fatalf("exactly at the bound: %v", err)
	}
	if _, err := v.Lookup("key_live_1", now.Add(time.Minute+time.Millisecond)); !errors.Is(err, ErrStale) {
		t.Fatalf("past the bound: %v, want ErrStale", err)
	}
	if _, err := v.Lookup("nobody", now.Add(time.Hour)); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("unknown key while stale: %v, want ErrUnknownKey", err)
	}

	// A failing source keeps the last snapshot, which then ages.
	src.fail(errors.New("clickhouse down"))
	later := now.Add(30 * time.Second)
	v.now = func() time.Time { return later }
	if err := v.Refresh(context.Background()); err == nil || !strings.Contains(err.Error(), "clickhouse down") {
		t.Fatalf("refresh error: %v", err)
	}
	if l, err := v.Lookup("key_live_1", later); err != nil || !l.AsOf.Equal(now) || l.StalenessSeconds != 30 {
		t.Fatalf("after a failed refresh: %+v, %v", l, err)
	}
	if got := testutil.ToFloat64(v.m.refreshErrors); got != 1 {
		t.Errorf("refresh errors = %v, want 1", got)
	}
	if got := gathered(t, reg, "meterline_limits_staleness_seconds"); got != 30 {
		t.Errorf("staleness gauge = %v, want 30", got)
	}
	if n, err := testutil.GatherAndCount(reg, "meterline_limits_staleness_seconds", "meterline_registry_reloads_total",
		"meterline_alerts_deliveries_total", "meterline_limits_refresh_duration_seconds"); err != nil || n == 0 {
		t.Errorf("metrics not registered: %d, %v", n, err)
	}

	// An empty catalogue knows no key.
	r.Swap(nil)
	if _, err := v.Lookup("key_live_1", later); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("empty catalogue: %v", err)
	}
}

func TestRunRefreshesUntilCancelled(t *testing.T) {
	r := NewRegistry(mustParse(t, validCatalogue))
	src := &settableSource{}
	src.set("acme", 5)
	v := newTestView(t, Config{Refresh: 10 * time.Millisecond, MaxStaleness: time.Second}, r, src, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- v.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		l, err := v.Lookup("key_live_1", time.Now())
		if err == nil && l.Used == 7 {
			break
		}
		if err == nil {
			src.set("acme", 7) // seen the first figure: change it, a later refresh must pick it up
		}
		if time.Now().After(deadline) {
			t.Fatalf("refresh loop did not pick up a change: %+v, %v", l, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run returned %v", err)
	}
}

func TestConfigDefaultsAndValidate(t *testing.T) {
	c := Config{}.WithDefaults()
	if c.Refresh != 5*time.Second || c.MaxStaleness != time.Minute || c.ReloadEvery != 10*time.Second ||
		c.WebhookTimeout != 10*time.Second || c.MaxAttempts != 20 {
		t.Fatalf("defaults: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	bad := Config{Refresh: time.Minute, MaxStaleness: time.Second, WebhookSecret: "short", MaxAttempts: -1, RetryMin: time.Hour, RetryMax: time.Second}.WithDefaults()
	err := bad.Validate()
	for _, want := range []string{"limits.max_staleness", "limits.webhook_secret", "limits.max_attempts", "limits.retry_min"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate lacks %s: %v", want, err)
		}
	}
}

// BenchmarkLookup measures the per-request cost a gateway pays, from
// several goroutines at once as an HTTP server would call it.
func BenchmarkLookup(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("plans:\n  - id: pro\n    included_units: 100000\n    hard_limit: 150000\ncustomers:\n")
	keys := make([]string, 0, 10000)
	used := fixedSource{}
	for i := range 1000 {
		c := "cust_" + strconv.Itoa(i)
		sb.WriteString("  - id: " + c + "\n    plan: pro\n    keys: [")
		for k := range 10 {
			key := c + "_key_" + strconv.Itoa(k)
			keys = append(keys, key)
			if k > 0 {
				sb.WriteString(", ")
			}
			sb.WriteString(key)
		}
		sb.WriteString("]\n")
		used[c] = float64(i * 100)
	}
	r := NewRegistry(mustParse(b, sb.String()))
	v := newTestView(b, Config{}, r, used, nil)
	refresh(b, v)
	now := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			l, err := v.Lookup(keys[i%len(keys)], now)
			if err != nil || l.Included != 100000 {
				b.Error(l, err)
				return
			}
			i += 7919
		}
	})
}

func TestLookupDoesNotAllocate(t *testing.T) {
	r := NewRegistry(mustParse(t, validCatalogue))
	v := newTestView(t, Config{}, r, fixedSource{"acme": 1}, nil)
	refresh(t, v)
	now := time.Now()
	if n := testing.AllocsPerRun(1000, func() {
		if _, err := v.Lookup("key_live_1", now); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("Lookup allocates %v times per call", n)
	}
}

// gathered returns the value of an unlabelled gauge or counter in reg.
func gathered(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name || len(mf.GetMetric()) != 1 {
			continue
		}
		m := mf.GetMetric()[0]
		if g := m.GetGauge(); g != nil {
			return g.GetValue()
		}
		return m.GetCounter().GetValue()
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

// countingSource counts its reads and fails them all: a refresh that
// needs no usage must not read it.
type countingSource struct{ reads atomic.Int64 }

func (s *countingSource) UnitsByCustomer(context.Context, time.Time, time.Time) (map[string]float64, error) {
	s.reads.Add(1)
	return nil, errors.New("the source was read")
}

// TestRefreshWithoutCustomersReadsNothing: with no customer in the
// catalogue (none configured, as in the benchmark) a refresh publishes an
// empty snapshot without reading usage; once a catalogue with customers is
// swapped in, it reads again.
func TestRefreshWithoutCustomersReadsNothing(t *testing.T) {
	for name, r := range map[string]*Registry{"no catalogue": NewRegistry(nil), "no customers": NewRegistry(&Catalogue{})} {
		t.Run(name, func(t *testing.T) {
			src := &countingSource{}
			v := newTestView(t, Config{}, r, src, nil)
			refresh(t, v)
			if n := src.reads.Load(); n != 0 {
				t.Fatalf("the usage source was read %d times without customers", n)
			}
			if v.AsOf().IsZero() {
				t.Fatal("no snapshot published: readiness would never hold")
			}
			if _, err := v.Lookup("key_live_1", time.Now()); !errors.Is(err, ErrUnknownKey) {
				t.Fatalf("Lookup without customers: %v, want ErrUnknownKey", err)
			}
			r.Swap(mustParse(t, validCatalogue))
			if err := v.Refresh(context.Background()); err == nil || src.reads.Load() != 1 {
				t.Fatalf("with customers the refresh must read usage: err %v, %d reads", err, src.reads.Load())
			}
		})
	}
}
