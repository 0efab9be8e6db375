package limits

import (
	"flag"
	"log/slog"
	"os"
	"testing"

	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/store"
)

// engine is the ClickHouse engine shared by this package's tests. Tests
// keep apart by using their own customer ids.
var engine testenv.Engine

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(testenv.RunWithEngine(m, "limits", &engine))
}

// testLog is quiet unless -v.
func testLog() *slog.Logger { return testenv.Log() }

// requireDB returns the shared engine or skips (fails under CI).
func requireDB(t testing.TB) store.Conn { return engine.Require(t) }
