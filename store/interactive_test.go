//go:build (linux || darwin) && !noembedded

package store

import (
	"context"
	"errors"
	"testing"
	"time"
)

// Interactive reads: their own connections, limits per statement.

// holdInteractive checks out every interactive connection of c until the
// test ends, as reads that run for ever would.
func holdInteractive(t *testing.T, c Conn) {
	t.Helper()
	ec := c.(*embeddedConn)
	for range ec.inter.Conns {
		rc, err := ec.acquire(Interactive(testCtx(t)))
		if err != nil {
			t.Fatalf("acquire an interactive connection: %v", err)
		}
		t.Cleanup(func() { ec.release(rc, false) })
	}
}

// TestInteractiveReadsLeaveInsertsTheirConnections takes every connection
// that reads may use and shows that inserts and background queries still
// run at once, while one more read waits at most QueueTimeout and fails
// with ErrBusy (not a hang).
func TestInteractiveReadsLeaveInsertsTheirConnections(t *testing.T) {
	c := embeddedConnForTest(t, Config{MaxOpenConns: 2, Interactive: InteractiveConfig{Conns: 2, QueueTimeout: 300 * time.Millisecond}})
	mustExec(t, c, "CREATE TABLE ins (x UInt64) ENGINE = MergeTree ORDER BY x")
	holdInteractive(t, c)

	// An insert and a query that would wait for ever if the reads held
	// their connections: bounded by a generous deadline instead.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Insert(ctx, "ins", []string{"x"}, [][]any{{1}, {2}}, InsertOptions{}); err != nil {
		t.Fatalf("insert while every read connection is busy: %v", err)
	}
	rows, err := c.Query(ctx, "SELECT count() FROM ins")
	if err != nil {
		t.Fatalf("background query while every read connection is busy: %v", err)
	}
	_ = rows.Close()

	_, err = c.Query(Interactive(ctx), "SELECT 1")
	if !errors.Is(err, ErrBusy) || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("interactive read with every read connection busy: %v, want ErrBusy", err)
	}
}

// TestInteractiveLimitsStopAReadOnly checks that the limits apply to
// interactive statements, are reported by LimitExceeded, leave the
// connection usable, and do not apply to the same statement outside.
func TestInteractiveLimitsStopAReadOnly(t *testing.T) {
	c := embeddedConnForTest(t, Config{Interactive: InteractiveConfig{Conns: 1, MaxRowsToRead: 1000, MaxExecutionTime: 300 * time.Millisecond}})
	ictx := Interactive(testCtx(t))

	_, err := c.Query(ictx, "SELECT count() FROM numbers(100000)")
	if l, ok := LimitExceeded(err); !ok || l != LimitRows {
		t.Fatalf("read of 100000 rows with max_rows_to_read 1000: %v (limit %q)", err, l)
	}
	if n := count(t, c, "SELECT count() FROM numbers(100000)"); n != 100000 {
		t.Fatalf("background read: %d rows", n)
	}
	// A read that would run for minutes stops after max_execution_time.
	// numbers_mt is not bounded by max_rows_to_read before it starts
	// reading; the time limit stops it.
	_, err = c.Query(ictx, "SELECT sum(sipHash64(number)) FROM system.numbers SETTINGS max_rows_to_read = 0")
	if l, ok := LimitExceeded(err); !ok || l != LimitTime {
		t.Fatalf("endless read with max_execution_time 300ms: %v (limit %q)", err, l)
	}
	// The connection answers the next read with its own result.
	rows, err := c.Query(ictx, "SELECT 7")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var n int64
	if !rows.Next() || rows.Scan(&n) != nil || n != 7 {
		t.Fatalf("read after a stopped read: %d, %v", n, rows.Err())
	}
}

func TestInteractiveSettingsText(t *testing.T) {
	got := InteractiveConfig{MaxExecutionTime: 1500 * time.Millisecond, MaxMemoryBytes: 1 << 30, MaxRowsToRead: 5, MaxThreads: 1}.settings()
	want := [][2]string{{"max_execution_time", "1.5"}, {"timeout_overflow_mode", "throw"}, {"max_memory_usage", "1073741824"},
		{"max_rows_to_read", "5"}, {"read_overflow_mode", "throw"}, {"max_threads", "1"}}
	if len(got) != len(want) {
		t.Fatalf("settings %v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("setting %d: %v, want %v", i, got[i], want[i])
		}
	}
	if s := (InteractiveConfig{}).settings(); len(s) != 0 {
		t.Errorf("no limits configured, settings %v", s)
	}
}

// TestServerInteractiveSlots checks the server engine's share of reads
// without a server: the slot is taken only by interactive statements,
// freed once (done is idempotent, as Rows.Close may run twice), and a read
// over the share waits QueueTimeout, then fails with ErrBusy.
func TestServerInteractiveSlots(t *testing.T) {
	inter := InteractiveConfig{Conns: 1, QueueTimeout: 50 * time.Millisecond, MaxExecutionTime: time.Second}.withDefaults()
	c := &serverConn{inter: inter, readSlots: make(chan struct{}, inter.Conns)}
	ctx := context.Background()
	for range 3 {
		_, done, err := c.interactive(ctx, nil)
		if err != nil {
			t.Fatalf("background statement: %v", err)
		}
		done()
	}
	_, done, err := c.interactive(Interactive(ctx), map[string]any{"insert_deduplication_token": "x"})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.interactive(Interactive(ctx), nil); !errors.Is(err, ErrBusy) {
		t.Fatalf("second read with one slot: %v, want ErrBusy", err)
	}
	if _, d, err := c.interactive(NotInteractive(Interactive(ctx)), nil); err != nil {
		t.Fatalf("NotInteractive statement while the read share is full: %v", err)
	} else {
		d()
	}
	done()
	done()
	_, done2, err := c.interactive(Interactive(ctx), nil)
	if err != nil {
		t.Fatalf("read after the slot was freed: %v", err)
	}
	if _, _, err := c.interactive(Interactive(ctx), nil); !errors.Is(err, ErrBusy) {
		t.Fatalf("a double done freed two slots: %v", err)
	}
	done2()
	if n := serverOptions(Config{MaxOpenConns: 3, Interactive: InteractiveConfig{Conns: 2}}, "db").MaxOpenConns; n != 5 {
		t.Errorf("driver pool %d, want MaxOpenConns + Interactive.Conns = 5", n)
	}
}
