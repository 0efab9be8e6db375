package aggregate_test

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/store"
)

// testDB is the engine shared by this package's tests: a process can hold
// one embedded engine (one data directory). Tests keep apart by using
// customers of their own; the aggregator's watermark is shared, which is
// harmless because a tick is correct for everyone's data. With
// METERLINE_TEST_CLICKHOUSE_ADDR set, the tests run on that server instead.
var testDB store.Conn

// testDataDir is the embedded engine's data directory (empty on a server).
var testDataDir string

const serverAddrEnv = "METERLINE_TEST_CLICKHOUSE_ADDR"

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	ctx := context.Background()
	cfg := store.Config{Database: fmt.Sprintf("aggregate_test_%d", time.Now().UnixNano())}
	if addr := os.Getenv(serverAddrEnv); addr != "" {
		cfg.Addr = strings.Split(addr, ",")
	} else {
		if os.Getenv(testenv.EnvChdb) == "" {
			return m.Run() // integration tests skip themselves (or fail under CI)
		}
		dir, err := os.MkdirTemp("", "meterline-aggregate-test")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer func() { _ = os.RemoveAll(dir) }()
		cfg.DataDir, testDataDir = dir, dir
	}
	db, err := store.Open(ctx, cfg, quietLog())
	if err != nil {
		fmt.Fprintln(os.Stderr, "opening ClickHouse:", err)
		return 1
	}
	defer func() { _ = db.Close() }()
	if _, err := store.Migrate(ctx, db, store.MigrateOptions{}, quietLog()); err != nil {
		fmt.Fprintln(os.Stderr, "migrating:", err)
		return 1
	}
	testDB = db
	return m.Run()
}

func quietLog() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// requireDB returns the shared engine or skips (fails under CI).
func requireDB(t testing.TB) store.Conn {
	t.Helper()
	if os.Getenv(serverAddrEnv) == "" {
		testenv.Require(t, testenv.EnvChdb)
	}
	if testDB == nil {
		t.Fatal("the ClickHouse engine did not open")
	}
	return testDB
}

// testCtx bounds a test's statements so that a hung engine fails the test.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
