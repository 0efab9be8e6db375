package ingest

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/store"
)

// testDB is the embedded engine shared by the tests of this package: one
// process can hold one engine. Tests keep apart by using their own api keys.
var testDB store.Conn

func TestMain(m *testing.M) {
	flag.Parse()
	code := func() int {
		if os.Getenv(testenv.EnvChdb) == "" {
			return m.Run() // integration tests skip themselves (or fail under CI)
		}
		dir, err := os.MkdirTemp("", "meterline-ingest-test")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		ctx := context.Background()
		db, err := store.Open(ctx, store.Config{DataDir: dir, Database: "ingest_test"}, quietLog())
		if err != nil {
			fmt.Fprintln(os.Stderr, "opening the embedded engine:", err)
			return 1
		}
		defer db.Close()
		if _, err := store.Migrate(ctx, db, store.MigrateOptions{RawRetentionMonths: 12}, quietLog()); err != nil {
			fmt.Fprintln(os.Stderr, "migrating:", err)
			return 1
		}
		testDB = db
		return m.Run()
	}()
	os.Exit(code)
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
	testenv.Require(t, testenv.EnvChdb)
	if testDB == nil {
		t.Fatal("the embedded engine did not open")
	}
	return testDB
}

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
