package billing

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/store"
)

// engine is shared by this package's tests; each test uses customers of
// its own (testenv.Unique), so the shared aggregator watermark is harmless.
var engine testenv.Engine

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(testenv.RunWithEngine(m, "billing", &engine))
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// customerSpec is a test customer: its id, and its plan's mode.
type customerSpec struct {
	id, stripe, mode, item string
}

// fixture is a catalogue and mapping of fresh customers on the shared engine.
type fixture struct {
	t         *testing.T
	db        store.Conn
	customers []customerSpec
	cat       *limits.Catalogue
	mapping   *Mapping
	logs      *testenv.SyncBuffer
	seq       int
}

const testEventName = "api_units"

// newFixture makes customers: modes[i] is the plan mode of customer i.
func newFixture(t *testing.T, modes ...string) *fixture {
	t.Helper()
	f := &fixture{t: t, db: engine.Require(t), logs: &testenv.SyncBuffer{}}
	var cat, mp strings.Builder
	cat.WriteString("plans:\n  - id: pm\n    included_units: 1000\n  - id: pu\n    included_units: 1000\ncustomers:\n")
	mp.WriteString("plans:\n  - plan: pm\n    mode: meter_events\n    event_name: " + testEventName + "\n  - plan: pu\n    mode: usage_records\ncustomers:\n")
	for _, mode := range modes {
		id := testenv.Unique("cust")
		c := customerSpec{id: id, stripe: "cus_" + strings.ReplaceAll(id, "-", ""), mode: mode}
		plan := "pm"
		if mode == ModeUsageRecords {
			plan, c.item = "pu", "si_"+strings.ReplaceAll(id, "-", "")
		}
		fmt.Fprintf(&cat, "  - id: %s\n    plan: %s\n    keys: [key-%s]\n", id, plan, id)
		fmt.Fprintf(&mp, "  - id: %s\n    stripe_customer_id: %s\n", id, c.stripe)
		if c.item != "" {
			fmt.Fprintf(&mp, "    subscription_item: %s\n", c.item)
		}
		f.customers = append(f.customers, c)
	}
	var err error
	if f.cat, err = limits.ParseCatalogue([]byte(cat.String())); err != nil {
		t.Fatal(err)
	}
	if f.mapping, err = ParseMapping([]byte(mp.String()), f.cat); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("worker log:\n%s", f.logs.String())
		}
	})
	return f
}

// config is a test configuration: fast retries, short timeouts.
func (f *fixture) config(url string) Config {
	return Config{StripeAPIKey: "sk_test_meterline", StripeAPIURL: url, RequestTimeout: 500 * time.Millisecond,
		RetryMin: 5 * time.Millisecond, RetryMax: 50 * time.Millisecond, MaxRequestsPerSecond: 100, MaxAttempts: 5}.WithDefaults()
}

func (f *fixture) worker(cfg Config) *Worker {
	log := slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return NewWorker(cfg, f.db, f.mapping, limits.NewRegistry(f.cat), NewStripeAPI(cfg), nil, log)
}

// addUsage inserts one raw event per unit value at time at for customer
// c, as the sink would, and runs an aggregator tick so the rollups have it.
func (f *fixture) addUsage(c customerSpec, at time.Time, units ...string) {
	f.t.Helper()
	now := time.Now().UTC()
	var rows [][]any
	for _, u := range units {
		f.seq++
		rows = append(rows, []any{fmt.Sprintf("ev-%s-%d", c.id, f.seq), at.UTC(), "key-" + c.id, c.id, "gw", "GET", "/v1/x",
			uint16(200), 1.0, uint64(1), uint64(1), "", "test", decimal.RequireFromString(u), map[string]string{},
			int32(0), int64(f.seq), now})
	}
	cols := []string{"id", "time", "api_key_id", "customer_id", "gateway", "method", "route", "status",
		"latency_ms", "request_bytes", "response_bytes", "client_ip", "user_agent", "units",
		"properties", "kafka_partition", "kafka_offset", "ingested_at"}
	if err := f.db.Insert(testCtx(f.t), "events", cols, rows, store.InsertOptions{}); err != nil {
		f.t.Fatal(err)
	}
	f.tick()
}

var tickMu sync.Mutex

func (f *fixture) tick() {
	f.t.Helper()
	tickMu.Lock()
	defer tickMu.Unlock()
	a := aggregate.NewAggregator(aggregate.Config{Interval: time.Second, Settle: time.Millisecond}, f.db, nil, testenv.Log())
	if _, err := a.Tick(testCtx(f.t)); err != nil {
		f.t.Fatal(err)
	}
}

// rollups returns the customer's units per window start from the rollups.
func (f *fixture) rollups(c customerSpec) map[int64]decimal.Decimal {
	f.t.Helper()
	u, err := windowUnits(testCtx(f.t), f.db, "usage_hour", []string{c.id}, time.Unix(0, 0), time.Now().Add(time.Hour))
	if err != nil {
		f.t.Fatal(err)
	}
	return u[c.id]
}

// ledger returns the customer's reports.
func (f *fixture) ledger(c customerSpec) []*report {
	f.t.Helper()
	r, err := readReports(testCtx(f.t), f.db, []string{c.id}, time.Unix(0, 0), time.Now().Add(48*time.Hour))
	if err != nil {
		f.t.Fatal(err)
	}
	return r[c.id]
}

// runUntilClean runs the worker until a run leaves nothing open or failed.
func (f *fixture) runUntilClean(w *Worker, maxRuns int) []RunStats {
	f.t.Helper()
	var all []RunStats
	for range maxRuns {
		st, err := w.RunOnce(testCtx(f.t), time.Now())
		if err != nil {
			f.t.Fatal(err)
		}
		all = append(all, st)
		if st.Open == 0 && st.Failed == 0 {
			return all
		}
	}
	f.t.Fatalf("still open or failed after %d runs: %+v", maxRuns, all)
	return nil
}

// hoursAgo is the start of the UTC hour n hours before now.
func hoursAgo(n int) time.Time {
	return time.Now().UTC().Truncate(time.Hour).Add(-time.Duration(n) * time.Hour)
}
