package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// The test process boots ONE embedded engine (libchdb holds one data
// directory per process) in a temporary directory; each test opens its own
// Conn on it with a database of its own. When METERLINE_TEST_CLICKHOUSE_ADDR
// names a server, the engine-independent tests also run against it.

var (
	embeddedDir     string // data directory of the shared embedded engine
	embeddedHold    Conn   // keeps the engine booted for the whole run
	embeddedSkip    string // why embedded tests are skipped, if they are
	preOpenSignals  *signalSnapshot
	testDBCounter   atomic.Int64
	serverAddrEnv   = "METERLINE_TEST_CLICKHOUSE_ADDR"
	testLogger      = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	nonIdentChars   = regexp.MustCompile(`[^a-z0-9_]+`)
	testCtxDeadline = 2 * time.Minute
)

// encryptTestsEnv, when set, runs the shared test engine encrypted at rest
// (a random key, or the one it holds as 64 hex digits), so that every embedded test and benchmark can be
// compared between the two: METERLINE_STORE_TEST_ENCRYPT=1 go test ./store
const encryptTestsEnv = "METERLINE_STORE_TEST_ENCRYPT"

// testEncryption is the shared engine's encryption (nil: off).
var testEncryption *Encryption

// testMaxMemory caps the test engine, which also proves the cap is passed.
const testMaxMemory = 6 << 30

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	if dir := os.Getenv(lockedDirEnv); dir != "" {
		return lockedDirChild(dir)
	}
	if dir := os.Getenv(encryptedChildEnv); dir != "" {
		return encryptedChild(dir)
	}
	dir, err := os.MkdirTemp("", "meterline-store-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }()
	embeddedDir = dir

	preOpenSignals = saveSignals()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if v := os.Getenv(encryptTestsEnv); v != "" {
		// Child processes of this run inherit the key (as hex).
		key, err := hex.DecodeString(v)
		if err != nil || len(key) != 32 {
			key = make([]byte, 32)
			_, _ = rand.Read(key)
			os.Setenv(encryptTestsEnv, hex.EncodeToString(key))
		}
		testEncryption = &Encryption{Keys: []EncryptionKey{{ID: 1, Key: key}}, CurrentKeyID: 1}
	}
	c, err := Open(ctx, Config{DataDir: dir, Database: "hold", MaxMemoryBytes: testMaxMemory, Encryption: testEncryption}, testLogger)
	switch {
	case err == nil:
		embeddedHold = c
		defer func() { _ = c.Close() }()
	case os.Getenv("CI") != "":
		fmt.Fprintf(os.Stderr, "FAIL: CI is set but the embedded ClickHouse engine cannot be opened "+
			"(set CHDB_LIB_PATH to libchdb.so): %v\n", err)
		return 1
	default:
		embeddedSkip = fmt.Sprintf("embedded ClickHouse engine unavailable (set CHDB_LIB_PATH to libchdb.so to run these tests): %v", err)
		fmt.Fprintln(os.Stderr, "SKIP:", embeddedSkip)
	}
	return m.Run()
}

// testCtx returns a context bounded so that a hung engine fails the test.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testCtxDeadline)
	t.Cleanup(cancel)
	return ctx
}

// uniqueDB returns a fresh database name for t.
func uniqueDB(t testing.TB) string {
	name := nonIdentChars.ReplaceAllString(strings.ToLower(t.Name()), "_")
	if len(name) > 40 {
		name = name[:40]
	}
	return fmt.Sprintf("t%d_%s", testDBCounter.Add(1), name)
}

// embeddedConnForTest opens a Conn on the shared engine with its own
// database, or skips the test when the engine is unavailable.
func embeddedConnForTest(t testing.TB, cfg Config) Conn {
	t.Helper()
	if embeddedSkip != "" {
		t.Skip(embeddedSkip)
	}
	cfg.DataDir = embeddedDir
	cfg.Encryption = testEncryption
	if cfg.Database == "" {
		cfg.Database = uniqueDB(t)
	}
	c, err := Open(testCtx(t), cfg, testLogger)
	if err != nil {
		t.Fatalf("open embedded: %v", err)
	}
	t.Cleanup(func() {
		_ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+mustQuote(t, cfg.Database))
		_ = c.Close()
	})
	return c
}

// serverConnForTest opens a Conn on the configured server, or returns nil.
func serverConnForTest(t testing.TB) Conn {
	t.Helper()
	addr := os.Getenv(serverAddrEnv)
	if addr == "" {
		return nil
	}
	db := uniqueDB(t)
	cfg := Config{
		Addr:     strings.Split(addr, ","),
		Database: db,
		Username: os.Getenv("METERLINE_TEST_CLICKHOUSE_USER"),
		Password: os.Getenv("METERLINE_TEST_CLICKHOUSE_PASSWORD"),
	}
	c, err := Open(testCtx(t), cfg, testLogger)
	if err != nil {
		t.Fatalf("open server %s: %v", addr, err)
	}
	t.Cleanup(func() {
		_ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+mustQuote(t, db))
		_ = c.Close()
	})
	return c
}

func mustQuote(t testing.TB, name string) string {
	q, err := quoteName(name)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// forEachEngine runs fn on the embedded engine and, when configured, on
// the server, each time with a fresh database.
func forEachEngine(t *testing.T, fn func(t *testing.T, c Conn)) {
	t.Run(EngineEmbedded, func(t *testing.T) {
		fn(t, embeddedConnForTest(t, Config{}))
	})
	t.Run(EngineServer, func(t *testing.T) {
		c := serverConnForTest(t)
		if c == nil {
			t.Skipf("%s not set: no ClickHouse server to test against", serverAddrEnv)
		}
		fn(t, c)
	})
}

// queryOne runs a query expected to return exactly one row.
func queryOne(t testing.TB, c Conn, query string, params []Param, dest ...any) {
	t.Helper()
	rows, err := c.Query(testCtx(t), query, params...)
	if err != nil {
		t.Fatalf("query %q: %v", query, err)
	}
	defer func() { _ = rows.Close() }()
	if !rows.Next() {
		t.Fatalf("query %q: no row (err %v)", query, rows.Err())
	}
	if err := rows.Scan(dest...); err != nil {
		t.Fatalf("query %q: scan: %v", query, err)
	}
	if rows.Next() {
		t.Fatalf("query %q: more than one row", query)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("query %q: %v", query, err)
	}
}

func count(t testing.TB, c Conn, query string, params ...Param) int64 {
	t.Helper()
	var n int64
	queryOne(t, c, query, params, &n)
	return n
}

func mustExec(t testing.TB, c Conn, query string, params ...Param) {
	t.Helper()
	if err := c.Exec(testCtx(t), query, params...); err != nil {
		t.Fatalf("exec %q: %v", query, err)
	}
}

func migrate(t testing.TB, c Conn) {
	t.Helper()
	if _, err := Migrate(testCtx(t), c, MigrateOptions{}, testLogger); err != nil {
		t.Fatalf("migrate: %v", err)
	}
}

// eventColumns are the columns of the events table, in order.
var eventColumns = []string{
	"id", "time", "api_key_id", "customer_id", "gateway", "method", "route", "status",
	"latency_ms", "request_bytes", "response_bytes", "client_ip", "user_agent", "units",
	"properties", "kafka_partition", "kafka_offset", "ingested_at",
}

// eventRow builds a plausible event row.
func eventRow(id string, at time.Time, i int) []any {
	return []any{
		id, at, fmt.Sprintf("key_%d", i%50), fmt.Sprintf("cus_%d", i%10), "eu-1", "GET", "/v1/pets/{id}", 200 + i%5,
		12.5, uint64(100 + i), uint64(2000 + i), "203.0.113.0", "curl/8.5.0", 1.0,
		map[string]string{"plan": "pro", "sdk": "go"}, int32(i % 12), int64(i), at.Add(time.Second),
	}
}

func errIs(err error, target error) bool { return errors.Is(err, target) }

// lockedDirEnv makes the test binary act as a second process that tries to
// open a data directory the parent holds (see TestEmbeddedDirLocked...).
const lockedDirEnv = "METERLINE_STORE_TEST_LOCKED_DIR"

// lockedDirChild exits 0 when opening dir fails with ErrUnavailable.
func lockedDirChild(dir string) int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var enc *Encryption
	if key, err := hex.DecodeString(os.Getenv(encryptTestsEnv)); err == nil && len(key) == 32 {
		enc = &Encryption{Keys: []EncryptionKey{{ID: 1, Key: key}}, CurrentKeyID: 1}
	}
	c, err := Open(ctx, Config{DataDir: dir, Encryption: enc}, nil)
	if err == nil {
		_ = c.Close()
		fmt.Println("opened a directory held by another process")
		return 3
	}
	fmt.Println("open error:", err)
	if !errors.Is(err, ErrUnavailable) {
		return 4
	}
	return 0
}
