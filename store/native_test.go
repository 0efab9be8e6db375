//go:build !noembedded

package store

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

// dump returns a table's rows as ClickHouse prints them, in order.
func dump(t *testing.T, c Conn, table string) string {
	t.Helper()
	rows, err := c.Query(testCtx(t), "SELECT toString(tuple(*)) FROM "+table+" ORDER BY k")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return strings.Join(out, "\n")
}

// TestNativeInsertMatchesJSON inserts the same rows, covering every column
// type the Native encoder writes and edge values, once as a Native file and
// once as inline JSON: the tables must hold exactly the same data.
func TestNativeInsertMatchesJSON(t *testing.T) {
	c := embeddedConnForTest(t, Config{})
	ec := c.(*embeddedConn)
	const cols = `(k UInt32, s String, lc LowCardinality(String), u8 UInt8, u16 UInt16, u64 UInt64, i8 Int8, i32 Int32,
 i64 Int64, f32 Float32, f64 Float64, b Bool, dt DateTime('UTC'), dt64 DateTime64(3, 'UTC'), dt6 DateTime64(6),
 d Decimal(18, 6), d2 Decimal(9, 2), m Map(String, String), a Array(String))`
	for _, tbl := range []string{"nat", "js"} {
		mustExec(t, c, "CREATE TABLE "+tbl+" "+cols+" ENGINE = MergeTree ORDER BY k")
	}
	columns := []string{"k", "s", "lc", "u8", "u16", "u64", "i8", "i32", "i64", "f32", "f64", "b", "dt", "dt64", "dt6", "d", "d2", "m", "a"}
	at := time.Date(2026, 11, 23, 17, 4, 5, 123_456_789, time.UTC)
	rows := [][]any{
		{uint32(1), "plain", "GET", uint8(255), uint16(65535), uint64(1<<64 - 1), int8(-128), int32(-5), int64(-1 << 62),
			float32(1.5), 3.141592653589793, true, at, at, at, 1.000001, decimal.RequireFromString("-12345.67"),
			map[string]string{"z": "1", "a": "2"}, []string{"x", "y"}},
		{uint32(2), "quote ' back\\slash \"dq\" \n newline \x00 nul ünïcode", "", uint8(0), 7, uint64(0), int8(127), int32(0),
			int64(0), float32(0), -0.0, false, time.Unix(0, 0).UTC(), time.Date(1969, 12, 31, 23, 59, 59, 999_000_000, time.UTC),
			at, 0.0, 0, map[string]string{}, []string{}},
		{uint32(3), strings.Repeat("long ", 2000), "POST", uint8(1), uint16(1), uint64(42), int8(0), int32(2147483647),
			int64(9223372036854775807), float32(-2.25), 1e300, true, at.Add(time.Hour), at.Add(time.Millisecond), at,
			999999.999999, 1234567.89, nil, nil},
	}
	ec.jsonInserts = false
	if err := c.Insert(testCtx(t), "nat", columns, rows, InsertOptions{}); err != nil {
		t.Fatal(err)
	}
	ec.jsonInserts = true
	if err := c.Insert(testCtx(t), "js", columns, rows, InsertOptions{}); err != nil {
		t.Fatal(err)
	}
	ec.jsonInserts = false
	nat, js := dump(t, c, "nat"), dump(t, c, "js")
	if nat != js || nat == "" {
		t.Fatalf("Native and JSON inserts differ:\nnative: %s\njson:   %s", nat, js)
	}
	if !strings.Contains(nat, "1.000001") || !strings.Contains(nat, "-12345.67") || !strings.Contains(nat, "'a':'2','z':'1'") {
		t.Fatalf("unexpected values: %s", nat)
	}
}

// TestNativeNullableMatchesJSON: Nullable columns written as Native (the
// encoder itself, no fallback) hold the same NULLs and values as inline
// JSON: a nil is NULL, not the type's zero.
func TestNativeNullableMatchesJSON(t *testing.T) {
	c := embeddedConnForTest(t, Config{})
	ec := c.(*embeddedConn)
	const cols = `(k UInt32, f Nullable(Float64), u Nullable(UInt64), s Nullable(String), t Nullable(DateTime64(3, 'UTC')))`
	for _, tbl := range []string{"nnat", "njs"} {
		mustExec(t, c, "CREATE TABLE "+tbl+" "+cols+" ENGINE = MergeTree ORDER BY k")
	}
	columns := []string{"k", "f", "u", "s", "t"}
	at := time.Date(2026, 11, 23, 17, 4, 5, 123_000_000, time.UTC)
	rows := [][]any{
		{uint32(1), 12.5, uint64(7), "x", at},
		{uint32(2), nil, nil, nil, nil},
		{uint32(3), 0.0, uint64(0), "", at},
	}
	var types []nativeType
	for _, typ := range []string{"UInt32", "Nullable(Float64)", "Nullable(UInt64)", "Nullable(String)", "Nullable(DateTime64(3, 'UTC'))"} {
		nt, ok := parseNativeType(typ)
		if !ok {
			t.Fatalf("parseNativeType(%q) not supported", typ)
		}
		types = append(types, nt)
	}
	if err := ec.insertNative(testCtx(t), "nnat", columns, types, rows, InsertOptions{}); err != nil {
		t.Fatalf("native insert: %v", err)
	}
	ec.jsonInserts = true
	if err := c.Insert(testCtx(t), "njs", columns, rows, InsertOptions{}); err != nil {
		t.Fatal(err)
	}
	ec.jsonInserts = false
	nat, js := dump(t, c, "nnat"), dump(t, c, "njs")
	if nat != js {
		t.Fatalf("Native and JSON inserts differ:\nnative: %s\njson:   %s", nat, js)
	}
	if want := "(2,NULL,NULL,NULL,NULL)"; !strings.Contains(nat, want) || !strings.Contains(nat, "(3,0,0,'',") {
		t.Fatalf("stored %s, want NULLs in row 2 and zeros in row 3", nat)
	}
}

// TestNativeFallsBackToJSON: a column type without a Native encoder, or a
// value that does not fit its column, sends the insert as JSON (whose
// errors and coercions are the engine's), and a table changed after its
// types were cached is still inserted into correctly.
func TestNativeFallsBackToJSON(t *testing.T) {
	c := embeddedConnForTest(t, Config{})
	mustExec(t, c, "CREATE TABLE fb (k UInt32, ip IPv6, n Nullable(String)) ENGINE = MergeTree ORDER BY k")
	if err := c.Insert(testCtx(t), "fb", []string{"k", "ip", "n"}, [][]any{{uint32(1), "::1", nil}}, InsertOptions{}); err != nil {
		t.Fatalf("unsupported column types: %v", err)
	}
	mustExec(t, c, "CREATE TABLE fv (k UInt32, d Decimal(18, 2), s String) ENGINE = MergeTree ORDER BY k")
	// 1.234 has more digits than the scale and "7" is a string for a
	// number: both go as JSON, where the engine decides.
	if err := c.Insert(testCtx(t), "fv", []string{"k", "d", "s"}, [][]any{{"7", 1.234, "x"}}, InsertOptions{}); err != nil {
		t.Fatalf("mismatched values: %v", err)
	}
	if got := dump(t, c, "fv"); got != "(7,1.23,'x')" && got != "(7,1.234,'x')" {
		t.Fatalf("fallback stored %s", got)
	}
	mustExec(t, c, "ALTER TABLE fv ADD COLUMN n UInt16")
	if err := c.Insert(testCtx(t), "fv", []string{"k", "d", "s", "n"}, [][]any{{uint32(8), 2.5, "y", uint16(9)}}, InsertOptions{}); err != nil {
		t.Fatalf("insert after ALTER: %v", err)
	}
	if got := dump(t, c, "fv"); !strings.Contains(got, "(8,2.5,'y',9)") {
		t.Fatalf("after ALTER: %s", got)
	}
}

func TestParseNativeType(t *testing.T) {
	for typ, want := range map[string]bool{
		"String": true, "LowCardinality(String)": true, "DateTime('UTC')": true, "DateTime": true,
		"DateTime64(3, 'UTC')": true, "DateTime64(6)": true, "Decimal(18, 6)": true, "Decimal(38, 6)": false,
		"Map(String, String)": true, "Map(String, UInt64)": false, "Nullable(String)": true, "IPv6": false,
		"Nullable(Float64)": true, "Nullable(UInt64)": true, "Nullable(Map(String, String))": false, "Nullable(IPv6)": false,
		"AggregateFunction(uniqExact, String)": false, "LowCardinality(Nullable(String))": false,
	} {
		if _, ok := parseNativeType(typ); ok != want {
			t.Errorf("parseNativeType(%q) = %v, want %v", typ, ok, want)
		}
	}
	for v, want := range map[any]int64{1.5: 1500000, 0.000001: 1, -2.0: -2000000, int64(3): 3000000} {
		if got, ok := decimalTicks(v, 6); !ok || got != want {
			t.Errorf("decimalTicks(%v) = %d %v, want %d", v, got, ok, want)
		}
	}
	for _, v := range []any{1.0000001, 1e13, "1", nil} {
		if _, ok := decimalTicks(v, 6); ok {
			t.Errorf("decimalTicks(%v) accepted", v)
		}
	}
}

// TestNativeDecimalPrecision: a value with more digits than the column's
// precision is not squeezed into the Native block; the JSON path lets the
// engine refuse it, as it always did.
func TestNativeDecimalPrecision(t *testing.T) {
	c := embeddedConnForTest(t, Config{})
	mustExec(t, c, "CREATE TABLE dp (k UInt32, d Decimal(9, 2)) ENGINE = MergeTree ORDER BY k")
	if err := c.Insert(testCtx(t), "dp", []string{"k", "d"}, [][]any{{uint32(1), 9999999.99}, {uint32(2), -9999999.99}}, InsertOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.Insert(testCtx(t), "dp", []string{"k", "d"}, [][]any{{uint32(3), 10000000.0}}, InsertOptions{}); err == nil {
		t.Fatal("a value beyond Decimal(9, 2) was stored")
	}
	if got := dump(t, c, "dp"); got != "(1,9999999.99)\n(2,-9999999.99)" {
		t.Fatalf("stored %q", got)
	}
}

// TestStaleInsertFilesRemoved: files a killed process left behind are
// removed once they are old; a fresh one (a live insert) is kept.
func TestStaleInsertFilesRemoved(t *testing.T) {
	dir := t.TempDir()
	old, fresh := dir+"/meterline-insert-1.native", dir+"/meterline-insert-2.native"
	other := dir + "/unrelated.native"
	for _, p := range []string{old, fresh, other} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	past := time.Now().Add(-time.Hour)
	for _, p := range []string{old, other} {
		if err := os.Chtimes(p, past, past); err != nil {
			t.Fatal(err)
		}
	}
	removeStaleInsertFiles(dir, 10*time.Minute, testLogger)
	for p, want := range map[string]bool{old: false, fresh: true, other: true} {
		if _, err := os.Stat(p); (err == nil) != want {
			t.Errorf("%s exists=%v, want %v", p, err == nil, want)
		}
	}
}
