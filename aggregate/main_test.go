package aggregate_test

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

// engine is shared by this package's tests: a process can hold one
// embedded engine (one data directory). Tests keep apart by using customers
// of their own; the aggregator's watermark is shared, which is harmless
// because a tick is correct for everyone's data. With
// METERLINE_TEST_CLICKHOUSE_ADDR set, the tests run on that server instead.
var engine testenv.Engine

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(testenv.RunWithEngine(m, "aggregate", &engine))
}

func quietLog() *slog.Logger { return testenv.Log() }

// requireDB returns the shared engine or skips (fails under CI).
func requireDB(t testing.TB) store.Conn { return engine.Require(t) }

// testCtx bounds a test's statements so that a hung engine fails the test.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
