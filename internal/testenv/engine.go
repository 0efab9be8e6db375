package testenv

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meterline/meterline/store"
)

// EnvClickHouse names a ClickHouse server (host:port[,host:port]) that the
// engine-backed tests use instead of the embedded engine.
const EnvClickHouse = "METERLINE_TEST_CLICKHOUSE_ADDR"

// Engine is the ClickHouse engine shared by one test package: a process can
// hold one embedded engine (one data directory), so TestMain opens it once
// and tests keep apart by using keys and customers of their own.
type Engine struct {
	DB      store.Conn
	DataDir string // the embedded engine's directory; empty on a server
}

// RunWithEngine is the body of a TestMain: it opens the engine (a ClickHouse
// server when EnvClickHouse is set, else the embedded engine in a temporary
// directory), applies the migrations into a fresh database named after pkg,
// runs the tests and closes everything. Without either engine the tests run
// anyway: the ones that need it skip themselves (or fail under CI) through
// Require.
func RunWithEngine(m *testing.M, pkg string, e *Engine) int {
	ctx := context.Background()
	cfg := store.Config{Database: fmt.Sprintf("%s_test_%d", pkg, time.Now().UnixNano())}
	if addr := os.Getenv(EnvClickHouse); addr != "" {
		cfg.Addr = strings.Split(addr, ",")
	} else {
		if os.Getenv(EnvChdb) == "" {
			return m.Run()
		}
		dir, err := os.MkdirTemp("", "meterline-"+pkg+"-test")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		cfg.DataDir, e.DataDir = dir, dir
	}
	db, err := store.Open(ctx, cfg, Log())
	if err != nil {
		fmt.Fprintln(os.Stderr, "opening ClickHouse:", err)
		return 1
	}
	defer db.Close()
	if _, err := store.Migrate(ctx, db, store.MigrateOptions{}, Log()); err != nil {
		fmt.Fprintln(os.Stderr, "migrating:", err)
		return 1
	}
	e.DB = db
	return m.Run()
}

// Require returns the engine or skips the test (fails it under CI).
func (e *Engine) Require(t testing.TB) store.Conn {
	t.Helper()
	if os.Getenv(EnvClickHouse) == "" {
		Require(t, EnvChdb)
	}
	if e.DB == nil {
		t.Fatal("the ClickHouse engine did not open")
	}
	return e.DB
}

// Log is quiet unless the tests run with -v.
func Log() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// Count runs a query that answers one number (a count, a sum) and returns
// it; 0 when the query answers no row. Any error fails the test.
func Count(t testing.TB, db store.Conn, query string, params ...store.Param) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rows, err := db.Query(ctx, query, params...)
	if err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	defer rows.Close()
	var n uint64
	for rows.Next() {
		if err := rows.Scan(&n); err != nil {
			t.Fatalf("%s: %v", query, err)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}
