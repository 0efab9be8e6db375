package api

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/meterline/meterline/ingest"
	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/store"
)

// testDB is the embedded engine of this test process (one per process).
var testDB store.Conn

func TestMain(m *testing.M) {
	flag.Parse()
	code := func() int {
		if os.Getenv(testenv.EnvChdb) == "" {
			return m.Run()
		}
		dir, err := os.MkdirTemp("", "meterline-api-test")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		ctx := context.Background()
		db, err := store.Open(ctx, store.Config{DataDir: dir, Database: "api_test"}, quiet())
		if err != nil {
			fmt.Fprintln(os.Stderr, "opening the embedded engine:", err)
			return 1
		}
		defer db.Close()
		if _, err := store.Migrate(ctx, db, store.MigrateOptions{}, quiet()); err != nil {
			fmt.Fprintln(os.Stderr, "migrating:", err)
			return 1
		}
		testDB = db
		return m.Run()
	}()
	os.Exit(code)
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func requireDB(t testing.TB) store.Conn {
	t.Helper()
	testenv.Require(t, testenv.EnvChdb)
	if testDB == nil {
		t.Fatal("the embedded engine did not open")
	}
	return testDB
}

// ev is one raw event row for the tests.
type ev struct {
	id, key, customer, route string
	at                       time.Time
	status                   uint16
	units                    float64
	latency                  float64
	ip                       string
}

// insertRaw writes events to the raw table as the sink would.
func insertRaw(t testing.TB, db store.Conn, evs []ev) {
	t.Helper()
	rows := make([][]any, len(evs))
	now := time.Now().UTC()
	for i, e := range evs {
		rows[i] = []any{e.id, e.at, e.key, e.customer, "gw-1", "GET", e.route, e.status, e.latency,
			uint64(100), uint64(1000), e.ip, "ua", e.units, map[string]string{}, int32(0), int64(i), now}
	}
	if err := db.Insert(context.Background(), ingest.EventsTable, ingest.EventColumns, rows, store.InsertOptions{}); err != nil {
		t.Fatal(err)
	}
}
