package api

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/meterline/meterline/ingest"
	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/store"
)

// engine is the ClickHouse engine shared by this package's tests.
var engine testenv.Engine

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(testenv.RunWithEngine(m, "api", &engine))
}

func quiet() *slog.Logger { return testenv.Log() }

func requireDB(t testing.TB) store.Conn { return engine.Require(t) }

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
