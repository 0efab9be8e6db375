package limits

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"

	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/store"
)

// testDB is the embedded engine shared by the tests of this package (one
// process holds one engine). Tests keep apart by using their own customer
// ids.
var testDB store.Conn

func TestMain(m *testing.M) {
	flag.Parse()
	code := func() int {
		if os.Getenv(testenv.EnvChdb) == "" {
			return m.Run() // the ClickHouse tests skip themselves (or fail under CI)
		}
		dir, err := os.MkdirTemp("", "meterline-limits-test")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		ctx := context.Background()
		db, err := store.Open(ctx, store.Config{DataDir: dir, Database: "limits_test"}, testLog())
		if err != nil {
			fmt.Fprintln(os.Stderr, "opening the embedded engine:", err)
			return 1
		}
		defer db.Close()
		if _, err := store.Migrate(ctx, db, store.MigrateOptions{RawRetentionMonths: 12}, testLog()); err != nil {
			fmt.Fprintln(os.Stderr, "migrating:", err)
			return 1
		}
		testDB = db
		return m.Run()
	}()
	os.Exit(code)
}

// testLog is quiet unless -v.
func testLog() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
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
