package ingest

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/store"
)

// engine is the ClickHouse engine shared by this package's tests.
var engine testenv.Engine

func TestMain(m *testing.M) {
	flag.Parse()
	if os.Getenv(leaseChildEnv) != "" {
		os.Exit(runLeaseChild()) // a lease member in its own process, for TestLeaseFailsOverAfterKill
	}
	os.Exit(testenv.RunWithEngine(m, "ingest", &engine))
}

func quietLog() *slog.Logger { return testenv.Log() }

// requireDB returns the shared engine or skips (fails under CI).
func requireDB(t testing.TB) store.Conn { return engine.Require(t) }

// countStored returns rows (physical) and deduplicated rows (FINAL) and
// distinct ids stored for an api key.
func countStored(t testing.TB, db store.Conn, apiKey string) (rows, final, distinct uint64) {
	t.Helper()
	ctx := context.Background()
	q := func(sql string) uint64 {
		r, err := db.Query(ctx, sql, store.P("k", apiKey))
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		defer r.Close()
		var n uint64
		for r.Next() {
			if err := r.Scan(&n); err != nil {
				t.Fatal(err)
			}
		}
		if err := r.Err(); err != nil {
			t.Fatal(err)
		}
		return n
	}
	rows = q("SELECT count() FROM events WHERE api_key_id = {k:String}")
	final = q("SELECT count() FROM events FINAL WHERE api_key_id = {k:String}")
	distinct = q("SELECT uniqExact(id) FROM events WHERE api_key_id = {k:String}")
	return
}

func waitFor(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	testenv.Eventually(t, timeout, f)
}
