//go:build (linux || darwin) && !noembedded

package store

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"
)

// Tests of the embedded engine's own pitfalls.

func TestEmbeddedStaleOutputIsCleared(t *testing.T) {
	// One connection, so the failing and the following query share it.
	c := embeddedConnForTest(t, Config{MaxOpenConns: 1})
	// Fails after tens of thousands of rows were produced.
	_, err := c.Query(testCtx(t), "SELECT number, throwIf(number = 70000) FROM numbers(100000)")
	var qe *QueryError
	if !errors.As(err, &qe) || qe.Code != 395 {
		t.Fatalf("failing query: %v", err)
	}
	var n int64
	queryOne(t, c, "SELECT 42", nil, &n)
	if n != 42 {
		t.Errorf("got %d", n)
	}
	// Same after a failing Exec and a failing Insert.
	mustExec(t, c, "CREATE TABLE s (x UInt8) ENGINE = MergeTree ORDER BY x")
	if err := c.Exec(testCtx(t), "INSERT INTO s SELECT throwIf(number = 70000) FROM numbers(100000)"); err == nil {
		t.Fatal("failing insert-select succeeded")
	}
	if err := c.Insert(testCtx(t), "s", []string{"x"}, [][]any{{1}, {"not a number"}}, InsertOptions{}); err == nil {
		t.Fatal("bad insert succeeded")
	}
	queryOne(t, c, "SELECT 43", nil, &n)
	if n != 43 {
		t.Errorf("got %d", n)
	}
}

func TestEmbeddedSetParamFallback(t *testing.T) {
	c := embeddedConnForTest(t, Config{MaxOpenConns: 2})
	c.(*embeddedConn).forceSetParams = true
	testHostileParams(t, c)
}

func TestEmbeddedSecondPathFails(t *testing.T) {
	if embeddedSkip != "" {
		t.Skip(embeddedSkip)
	}
	other := t.TempDir()
	c, err := Open(testCtx(t), Config{DataDir: other}, testLogger)
	if err == nil {
		_ = c.Close()
		t.Fatal("second data directory opened")
	}
	if !strings.Contains(err.Error(), "already open at") || !strings.Contains(err.Error(), other) {
		t.Errorf("unclear error: %v", err)
	}
	if errors.Is(err, ErrUnavailable) {
		t.Error("configuration error marked retryable")
	}
	// The first engine is unaffected.
	var n int64
	queryOne(t, embeddedHold, "SELECT 1", nil, &n)
}

func TestEmbeddedOpenNeedsDataDir(t *testing.T) {
	if _, err := Open(testCtx(t), Config{}, nil); err == nil || !strings.Contains(err.Error(), "DataDir") {
		t.Errorf("open without DataDir: %v", err)
	}
}

// recoverNilDeref dereferences a nil pointer in a new goroutine and
// returns what recover() saw there.
func recoverNilDeref() any {
	done := make(chan any, 1)
	go func() {
		defer func() { done <- recover() }()
		var p *struct{ x int }
		done <- p.x // faults: SIGSEGV must reach Go's handler
	}()
	select {
	case r := <-done:
		return r
	case <-time.After(10 * time.Second):
		return "timeout: the goroutine hung (engine signal handler?)"
	}
}

// divSink keeps the division by zero from being optimised away.
var divSink int

func TestEmbeddedKeepsGoSignalHandlers(t *testing.T) {
	// Open a few more connections in parallel: every connect reinstalls
	// the engine's handlers.
	c := embeddedConnForTest(t, Config{MaxOpenConns: 4})
	errs := make(chan error, 4)
	for range 4 {
		go func() { errs <- c.Exec(testCtx(t), "SELECT sleep(0.05)") }()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	r := recoverNilDeref()
	if re, ok := r.(runtime.Error); !ok || !strings.Contains(re.Error(), "nil pointer") {
		t.Fatalf("nil dereference after Open: recovered %v", r)
	}
	// Integer division by zero traps (SIGFPE on amd64).
	func() {
		defer func() {
			if re, ok := recover().(runtime.Error); !ok || !strings.Contains(re.Error(), "divide by zero") {
				t.Errorf("division by zero: recovered %v", re)
			}
		}()
		zero := 0
		divSink = 1 / zero
	}()
	if runtime.GOOS == "linux" {
		cur := saveSignals()
		for sig := 1; sig <= lastStandardSignal; sig++ {
			if preOpenSignals.ok[sig] && cur.acts[sig] != preOpenSignals.acts[sig] {
				t.Errorf("signal %d handler differs from before Open", sig)
			}
		}
	}
}

func TestEmbeddedCloseWaitsAndSharesEngine(t *testing.T) {
	c := embeddedConnForTest(t, Config{})
	// A second Conn on the same directory and database shares the engine.
	c2, err := Open(testCtx(t), Config{DataDir: embeddedDir, Database: "hold", Encryption: testEncryption}, testLogger)
	if err != nil {
		t.Fatal(err)
	}
	if err := c2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c2.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	if err := c2.Ping(testCtx(t)); !errors.Is(err, ErrUnavailable) {
		t.Errorf("ping after close: %v", err)
	}
	// The engine is still up for the others.
	if err := c.Ping(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

func TestEmbeddedMemoryCap(t *testing.T) {
	c := embeddedConnForTest(t, Config{})
	var v string
	queryOne(t, c, "SELECT value FROM system.server_settings WHERE name = 'max_server_memory_usage'", nil, &v)
	if v != fmt.Sprint(testMaxMemory) {
		t.Errorf("max_server_memory_usage = %s, want %d", v, testMaxMemory)
	}
}

func TestEmbeddedDirLockedByOtherProcessIsUnavailable(t *testing.T) {
	if embeddedSkip != "" {
		t.Skip(embeddedSkip)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), lockedDirEnv+"="+embeddedDir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("second process: %v\n%s", err, out)
	}
	t.Logf("second process:\n%s", out)
	if !strings.Contains(string(out), "open error:") {
		t.Errorf("second process output:\n%s", out)
	}
}
