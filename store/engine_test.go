package store

import (
	"context"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// Tests that run on every engine (embedded always, server when configured).

func TestRoundTripEveryColumnType(t *testing.T) {
	forEachEngine(t, func(t *testing.T, c Conn) {
		migrate(t, c)
		// Recent, or the TTL would expire the rows during the test.
		at := time.Now().UTC().Add(-time.Hour).Truncate(time.Second).Add(891 * time.Millisecond)
		tricky := "it's \"quoted\" \\ back\\slash\nnew line\n\nblank\ttab \u00e9\u4e16\U0001F30D '); DROP TABLE events; --"
		rows := [][]any{
			{"evt-1", at, "key_1", "cus_1", "eu-1", "GET", "/v1/pets/{id}", 200, 12.25, uint64(math.MaxUint64), uint64(0),
				"203.0.113.0", tricky, "123456789012.123456", map[string]string{"plan": "pro", "quote'": "va\"l\nue", "": "empty key"},
				int32(math.MaxInt32), int64(math.MaxInt64), at.Add(1500 * time.Millisecond)},
			{"evt-2", at.Add(time.Millisecond), "key_1", "cus_1", "", "POST", "/v1/x", uint16(599), 0.0, uint64(1), uint64(2),
				"2001:db8::", "", 0.000001, map[string]string{}, int32(-1), int64(-5), at},
		}
		if err := c.Insert(testCtx(t), "events", eventColumns, rows, InsertOptions{}); err != nil {
			t.Fatalf("insert: %v", err)
		}
		rs, err := c.Query(testCtx(t), "SELECT "+strings.Join(eventColumns, ", ")+" FROM events ORDER BY id")
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = rs.Close() }()
		if got := rs.Columns(); !reflect.DeepEqual(got, eventColumns) {
			t.Errorf("columns %v", got)
		}
		type event struct {
			id, apiKey, customer, gateway, method, route string
			tm, ingested                                 time.Time
			status                                       uint16
			latency                                      float64
			reqBytes, respBytes                          uint64
			ip, ua, units                                string
			props                                        map[string]string
			partition                                    int32
			offset                                       int64
		}
		var got []event
		for rs.Next() {
			var e event
			if err := rs.Scan(&e.id, &e.tm, &e.apiKey, &e.customer, &e.gateway, &e.method, &e.route, &e.status,
				&e.latency, &e.reqBytes, &e.respBytes, &e.ip, &e.ua, &e.units, &e.props, &e.partition, &e.offset, &e.ingested); err != nil {
				t.Fatalf("scan: %v", err)
			}
			got = append(got, e)
		}
		if err := rs.Err(); err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 {
			t.Fatalf("got %d rows", len(got))
		}
		e := got[0]
		if !e.tm.Equal(at) || e.tm.Location() != time.UTC || !e.ingested.Equal(at.Add(1500*time.Millisecond)) {
			t.Errorf("times %v %v", e.tm, e.ingested)
		}
		if e.ua != tricky {
			t.Errorf("user agent %q, want %q", e.ua, tricky)
		}
		if e.units != "123456789012.123456" {
			t.Errorf("units %q", e.units)
		}
		if !reflect.DeepEqual(e.props, rows[0][14]) {
			t.Errorf("properties %v", e.props)
		}
		if e.status != 200 || e.latency != 12.25 || e.reqBytes != math.MaxUint64 || e.respBytes != 0 ||
			e.partition != math.MaxInt32 || e.offset != math.MaxInt64 || e.route != "/v1/pets/{id}" {
			t.Errorf("scalars %+v", e)
		}
		e = got[1]
		if e.status != 599 || e.units != "0.000001" || len(e.props) != 0 || e.offset != -5 || e.partition != -1 ||
			!e.tm.Equal(at.Add(time.Millisecond)) || e.ip != "2001:db8::" {
			t.Errorf("second row %+v", e)
		}

		// Generic scanning gives the same Go types on both engines.
		vals := make([]any, len(eventColumns))
		ptrs := make([]any, len(vals))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		queryOne(t, c, "SELECT "+strings.Join(eventColumns, ", ")+" FROM events WHERE id = {id:String}", []Param{P("id", "evt-2")}, ptrs...)
		wantTypes := []any{"", time.Time{}, "", "", "", "", "", uint64(0), float64(0), uint64(0), uint64(0), "", "", "",
			map[string]string{}, int64(0), int64(0), time.Time{}}
		for i, v := range vals {
			if reflect.TypeOf(v) != reflect.TypeOf(wantTypes[i]) {
				t.Errorf("*any for %s: %T, want %T", eventColumns[i], v, wantTypes[i])
			}
		}

		// Mismatched destinations fail clearly.
		var tm time.Time
		var small uint16
		var n int64
		for _, tc := range []struct {
			col  string
			dest any
		}{{"status", &tm}, {"kafka_offset", &small}, {"id", &n}} {
			rows, err := c.Query(testCtx(t), "SELECT "+tc.col+" FROM events WHERE id = 'evt-1'")
			if err != nil {
				t.Fatal(err)
			}
			rows.Next()
			if err := rows.Scan(tc.dest); err == nil || !strings.Contains(err.Error(), tc.col) {
				t.Errorf("scan %s into %T: %v", tc.col, tc.dest, err)
			}
			_ = rows.Close()
		}
	})
}

func TestDedupTokenAndFinal(t *testing.T) {
	forEachEngine(t, func(t *testing.T, c Conn) {
		migrate(t, c)
		at := time.Now().UTC().Add(-time.Hour).Truncate(time.Millisecond)
		batch := make([][]any, 100)
		for i := range batch {
			batch[i] = eventRow(fmt.Sprintf("d-%03d", i), at.Add(time.Duration(i)*time.Millisecond), i)
			batch[i][14] = map[string]string{"a": "1", "b": "2", "c": "3", "d": "4", "e": "5"}
		}
		for range 2 {
			if err := c.Insert(testCtx(t), "events", eventColumns, batch, InsertOptions{DedupToken: "batch-1"}); err != nil {
				t.Fatal(err)
			}
		}
		if n := count(t, c, "SELECT count() FROM events"); n != 100 {
			t.Fatalf("same token twice stored %d rows, want 100", n)
		}
		// A redelivery in a different batch (new token) is stored again and
		// collapses only by ReplacingMergeTree: FINAL reads one row per id.
		if err := c.Insert(testCtx(t), "events", eventColumns, batch[:30], InsertOptions{DedupToken: "batch-2"}); err != nil {
			t.Fatal(err)
		}
		if n := count(t, c, "SELECT count() FROM events"); n != 130 {
			t.Errorf("raw count %d, want 130", n)
		}
		if n := count(t, c, "SELECT count() FROM events FINAL"); n != 100 {
			t.Errorf("FINAL count %d, want 100", n)
		}
		mustExec(t, c, "OPTIMIZE TABLE events FINAL")
		if n := count(t, c, "SELECT count() FROM events"); n != 100 {
			t.Errorf("count after merge %d, want 100", n)
		}
	})
}

// hostileStrings are values that would break naive SQL splicing.
var hostileStrings = []string{
	"'); DROP TABLE hostile; --",
	"it's", `it\'s`, `\`, `\\`, `a\b`, `\N`, `\0`, "'", "''", `"`, "`",
	"line1\nline2", "\n", "\n\n", "\t", "\r\n", "{v:String}", "$1", "?", "",
	"\u00e9\u4e16\U0001F30D", "x' OR '1'='1", "\\'; SELECT 1; --",
}

func testHostileParams(t *testing.T, c Conn) {
	mustExec(t, c, "CREATE TABLE hostile (s String) ENGINE = MergeTree ORDER BY tuple()")
	for _, v := range hostileStrings {
		mustExec(t, c, "INSERT INTO hostile SELECT {v:String}", P("v", v))
		var got string
		var n int64
		queryOne(t, c, "SELECT {v:String}, (SELECT count() FROM hostile WHERE s = {v:String})", []Param{P("v", v)}, &got, &n)
		if got != v || n < 1 {
			t.Errorf("param %q came back as %q (matches %d)", v, got, n)
		}
	}
	var arr []string
	queryOne(t, c, "SELECT {a:Array(String)}", []Param{P("a", hostileStrings)}, &arr)
	if !reflect.DeepEqual(arr, hostileStrings) {
		t.Errorf("array param came back as %q", arr)
	}
	if err := c.Exec(testCtx(t), "INSERT INTO hostile SELECT {v:String}", P("v", "nul\x00byte")); err == nil || !strings.Contains(err.Error(), "NUL") {
		t.Errorf("NUL param: %v", err)
	}
	if n := count(t, c, "SELECT count() FROM hostile"); n != int64(len(hostileStrings)) {
		t.Errorf("table holds %d rows, want %d", n, len(hostileStrings))
	}
	// Typed parameters of every supported kind.
	at := time.Date(2024, 2, 29, 23, 59, 58, 123_000_000, time.UTC)
	var (
		i64 int64
		u64 uint64
		u16 uint16
		i32 int32
		f   float64
		b   bool
		tm  time.Time
	)
	queryOne(t, c, "SELECT {a:Int64}, {b:UInt64}, {c:UInt16}, {d:Int32}, {e:Float64}, {f:Bool}, {g:DateTime64(3, 'UTC')}",
		[]Param{P("a", int64(math.MinInt64)), P("b", uint64(math.MaxUint64)), P("c", 599), P("d", int32(-7)), P("e", 0.1), P("f", true), P("g", at)},
		&i64, &u64, &u16, &i32, &f, &b, &tm)
	if i64 != math.MinInt64 || u64 != math.MaxUint64 || u16 != 599 || i32 != -7 || f != 0.1 || !b || !tm.Equal(at) {
		t.Errorf("typed params: %v %v %v %v %v %v %v", i64, u64, u16, i32, f, b, tm)
	}
	// A value that does not parse as its type is an error, not a splice.
	if err := c.Exec(testCtx(t), "SELECT {n:Int64}", P("n", "1; DROP TABLE hostile")); err == nil {
		t.Error("non-numeric Int64 parameter accepted")
	}
	if n := count(t, c, "SELECT count() FROM hostile"); n != int64(len(hostileStrings)) {
		t.Errorf("table damaged: %d rows", n)
	}
}

func TestHostileParams(t *testing.T) {
	forEachEngine(t, testHostileParams)
}

func TestQueryErrorsAndContext(t *testing.T) {
	forEachEngine(t, func(t *testing.T, c Conn) {
		err := c.Exec(testCtx(t), "SELECT * FROM no_such_table")
		var qe *QueryError
		if !errors.As(err, &qe) || qe.Code != 60 || errors.Is(err, ErrUnavailable) {
			t.Errorf("unknown table: %#v", err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := c.Exec(ctx, "SELECT 1"); !errors.Is(err, context.Canceled) {
			t.Errorf("canceled exec: %v", err)
		}
		if _, err := c.Query(ctx, "SELECT 1"); !errors.Is(err, context.Canceled) {
			t.Errorf("canceled query: %v", err)
		}
		if err := c.Ping(testCtx(t)); err != nil {
			t.Errorf("ping: %v", err)
		}
		mustExec(t, c, "CREATE TABLE ins (a String, b UInt16) ENGINE = MergeTree ORDER BY a")
		if err := c.Insert(testCtx(t), "ins", []string{"a", "b"}, [][]any{{"x"}}, InsertOptions{}); err == nil {
			t.Error("short row accepted")
		}
		if err := c.Insert(testCtx(t), "ins", []string{"a", "b"}, [][]any{{"x", struct{}{}}}, InsertOptions{}); err == nil {
			t.Error("unsupported value accepted")
		}
		if err := c.Insert(testCtx(t), "ins", []string{"a", "b"}, [][]any{{"x", 1}}, InsertOptions{DedupToken: "a\x00"}); err == nil {
			t.Error("NUL token accepted")
		}
		if err := c.Insert(testCtx(t), "ins", []string{"a", "b"}, nil, InsertOptions{}); err != nil {
			t.Errorf("empty insert: %v", err)
		}
		if n := count(t, c, "SELECT count() FROM ins"); n != 0 {
			t.Errorf("failed inserts stored %d rows", n)
		}
	})
}

func TestParallelQueries(t *testing.T) {
	forEachEngine(t, func(t *testing.T, c Conn) {
		mustExec(t, c, "CREATE TABLE par (g UInt32, i UInt32) ENGINE = MergeTree ORDER BY (g, i)")
		const workers, rounds = 8, 10
		var wg sync.WaitGroup
		errs := make(chan error, workers*rounds)
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for r := range rounds {
					rows := make([][]any, 50)
					for i := range rows {
						rows[i] = []any{w, r*50 + i}
					}
					if err := c.Insert(context.Background(), "par", []string{"g", "i"}, rows, InsertOptions{}); err != nil {
						errs <- err
						return
					}
					rs, err := c.Query(context.Background(), "SELECT {w:UInt32} * 1000 + count(), sum(i) FROM par WHERE g = {w:UInt32}", P("w", w))
					if err != nil {
						errs <- err
						return
					}
					var got, sum int64
					if !rs.Next() {
						errs <- fmt.Errorf("no row: %v", rs.Err())
						_ = rs.Close()
						return
					}
					if err := rs.Scan(&got, &sum); err != nil {
						errs <- err
					}
					_ = rs.Close()
					n := int64((r + 1) * 50)
					if got != int64(w)*1000+n || sum != n*(n-1)/2 {
						errs <- fmt.Errorf("worker %d round %d: got %d/%d", w, r, got, sum)
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if n := count(t, c, "SELECT count() FROM par"); n != workers*rounds*50 {
			t.Errorf("count %d", n)
		}
	})
}

func TestTTLDropsOldEvents(t *testing.T) {
	forEachEngine(t, func(t *testing.T, c Conn) {
		migrate(t, c)
		now := time.Now().UTC().Truncate(time.Millisecond)
		old := now.AddDate(0, -13, 0)
		rows := [][]any{
			eventRow("old-1", old, 1), eventRow("old-2", old.Add(time.Hour), 2),
			eventRow("new-1", now.Add(-24*time.Hour), 3), eventRow("new-2", now.Add(-time.Minute), 4),
		}
		if err := c.Insert(testCtx(t), "events", eventColumns, rows, InsertOptions{}); err != nil {
			t.Fatal(err)
		}
		mustExec(t, c, "OPTIMIZE TABLE events FINAL")
		rs, err := c.Query(testCtx(t), "SELECT id FROM events ORDER BY id")
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = rs.Close() }()
		var ids []string
		for rs.Next() {
			var id string
			if err := rs.Scan(&id); err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
		if strings.Join(ids, ",") != "new-1,new-2" {
			t.Errorf("after TTL merge: %v, want new-1,new-2", ids)
		}
	})
}

func TestMigrations(t *testing.T) {
	forEachEngine(t, func(t *testing.T, c Conn) {
		st, err := Status(testCtx(t), c)
		if err != nil {
			t.Fatal(err)
		}
		if len(st) == 0 || st[0].Name != "0001_events.sql" || st[0].Applied {
			t.Fatalf("status before: %+v", st)
		}
		applied, err := Migrate(testCtx(t), c, MigrateOptions{}, testLogger)
		if err != nil {
			t.Fatal(err)
		}
		if len(applied) != len(st) || applied[0].Version != 1 || applied[0].Name != "0001_events.sql" {
			t.Fatalf("applied %+v", applied)
		}
		again, err := Migrate(testCtx(t), c, MigrateOptions{}, testLogger)
		if err != nil || len(again) != 0 {
			t.Fatalf("second run applied %+v, %v", again, err)
		}
		st, err = Status(testCtx(t), c)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range st {
			if !s.Applied || s.Changed || s.AppliedAt.IsZero() {
				t.Errorf("status after: %+v", s)
			}
		}
		var ddl string
		queryOne(t, c, "SHOW CREATE TABLE events", nil, &ddl)
		for _, want := range []string{"ReplacingMergeTree", "PARTITION BY toYYYYMM(time)",
			"ORDER BY (customer_id, api_key_id, time, id)", "TTL toDateTime(time) + toIntervalMonth(12)",
			"non_replicated_deduplication_window = 10000", "Map(String, String)", "Decimal(18, 6)"} {
			if !strings.Contains(ddl, want) {
				t.Errorf("SHOW CREATE TABLE lacks %q:\n%s", want, ddl)
			}
		}
		if n := count(t, c, "SELECT count() FROM schema_migrations"); n != int64(len(applied)) {
			t.Errorf("schema_migrations has %d rows", n)
		}
	})
}
