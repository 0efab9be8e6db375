package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

// These tests need no engine: they cover the encoding and conversion code
// both engines share, and the server engine's type mapping.

func TestParamText(t *testing.T) {
	at := time.Date(2024, 1, 2, 3, 4, 5, 678_000_000, time.FixedZone("X", 3600))
	cases := []struct {
		v    any
		want string
	}{
		{"plain", "plain"},
		{`it's`, `it's`},
		{`back\slash`, `back\\slash`},
		{`\N`, `\\N`},
		{"tab\tnew\nline\rcr", `tab\tnew\nline\rcr`},
		{"", ""},
		{42, "42"},
		{int32(-7), "-7"},
		{int64(math.MinInt64), "-9223372036854775808"},
		{uint64(math.MaxUint64), "18446744073709551615"},
		{uint16(599), "599"},
		{1.5, "1.5"},
		{math.NaN(), "nan"},
		{math.Inf(-1), "-inf"},
		{true, "true"},
		{at, "2024-01-02 02:04:05.678000000"},
		{time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC), "2024-01-02 03:04:05"},
		{[]string{"a", "it's", `b\c`, "d\ne"}, `['a','it\'s','b\\c','d\ne']`},
		{[]string{}, "[]"},
	}
	for _, c := range cases {
		got, err := paramText(c.v)
		if err != nil || got != c.want {
			t.Errorf("paramText(%#v) = %q, %v; want %q", c.v, got, err, c.want)
		}
	}
	for _, bad := range []any{"nul\x00", []string{"ok", "\x00"}, nil, struct{}{}, []int{1}} {
		if _, err := paramText(bad); err == nil {
			t.Errorf("paramText(%#v) accepted", bad)
		}
	}
}

func TestEncodeParamsNames(t *testing.T) {
	for _, name := range []string{"x", "_x1", "Customer_ID"} {
		if _, _, err := encodeParams([]Param{P(name, 1)}); err != nil {
			t.Errorf("name %q rejected: %v", name, err)
		}
	}
	for _, name := range []string{"", "1x", "a-b", "a b", "x;DROP", "x}", "é"} {
		if _, _, err := encodeParams([]Param{P(name, 1)}); err == nil {
			t.Errorf("name %q accepted", name)
		}
	}
}

func TestQuoting(t *testing.T) {
	q, err := quoteString("it's \\ \n")
	if err != nil || q != `'it\'s \\ \n'` {
		t.Errorf("quoteString = %q, %v", q, err)
	}
	if _, err := quoteString("a\x00"); err == nil {
		t.Error("quoteString accepted NUL")
	}
	if q, _ := quoteTable("db.ta`ble"); q != "`db`.`ta\\`ble`" {
		t.Errorf("quoteTable = %s", q)
	}
	if q, _ := quoteName("a.b"); q != "`a.b`" {
		t.Errorf("quoteName = %s", q)
	}
	for _, bad := range []string{"", ".t", "db.", "a\x00"} {
		if _, err := quoteTable(bad); err == nil {
			t.Errorf("quoteTable(%q) accepted", bad)
		}
	}
}

func TestAppendJSONValue(t *testing.T) {
	at := time.Date(2024, 5, 6, 7, 8, 9, 123_000_000, time.UTC)
	cases := []struct {
		v    any
		want string
	}{
		{nil, "null"},
		{"a\"b\\c\nd\x00e\x1f", `"a\"b\\c\nd\u0000e\u001f"`},
		{"Grüße 🌍 <&>", `"Grüße 🌍 <&>"`},
		{"\xff\xfe", "\"\xff\xfe\""},
		{[]byte("raw"), `"raw"`},
		{uint64(math.MaxUint64), "18446744073709551615"},
		{-3, "-3"},
		{2.5, "2.5"},
		{math.Inf(1), `"inf"`},
		{true, "true"},
		{at, `"2024-05-06 07:08:09.123000000"`},
		{[]string{"x", "y\n"}, `["x","y\n"]`},
		{map[string]string{"b": "2", "a": "1", "c": "\n"}, `{"a":"1","b":"2","c":"\n"}`},
		{decimal.RequireFromString("1.250000"), `"1.25"`},
		{json.Number("7"), "7"},
	}
	for _, c := range cases {
		var buf bytes.Buffer
		if err := appendJSONValue(&buf, c.v); err != nil || buf.String() != c.want {
			t.Errorf("appendJSONValue(%#v) = %s, %v; want %s", c.v, buf.String(), err, c.want)
		}
		if strings.Contains(buf.String(), "\n") || strings.IndexByte(buf.String(), 0) >= 0 {
			t.Errorf("appendJSONValue(%#v) wrote a raw newline or NUL", c.v)
		}
	}
	var buf bytes.Buffer
	if err := appendJSONValue(&buf, struct{}{}); err == nil {
		t.Error("unsupported type accepted")
	}
}

func TestNormalizeJSON(t *testing.T) {
	n := func(s string) json.Number { return json.Number(s) }
	cases := []struct {
		v      any
		chType string
		want   any
	}{
		{n("-5"), "Int32", int64(-5)},
		{"9223372036854775807", "Int64", int64(math.MaxInt64)},
		{n("18446744073709551615"), "UInt64", uint64(math.MaxUint64)},
		{n("3"), "LowCardinality(Nullable(UInt16))", uint64(3)},
		{"nan", "Float64", math.NaN()},
		{n("1.5"), "Float64", 1.5},
		{n("0.000001"), "Decimal(18, 6)", decimalText("0.000001")},
		{true, "Bool", true},
		{"2024-01-02 03:04:05.678", "DateTime64(3, 'UTC')", time.Date(2024, 1, 2, 3, 4, 5, 678_000_000, time.UTC)},
		{"2024-01-02", "Date", time.Date(2024, 1, 2, 0, 0, 0, 0, time.UTC)},
		{[]any{"a", "b"}, "Array(LowCardinality(String))", []string{"a", "b"}},
		{[]any{n("1"), n("2")}, "Array(UInt8)", []any{uint64(1), uint64(2)}},
		{map[string]any{"k": "v"}, "Map(String, String)", map[string]string{"k": "v"}},
		{map[string]any{"k": n("1")}, "Map(String, UInt64)", map[string]any{"k": uint64(1)}},
		{"x", "LowCardinality(String)", "x"},
		{nil, "Nullable(String)", nil},
	}
	for _, c := range cases {
		got, err := normalizeJSON(c.v, c.chType)
		if err != nil {
			t.Errorf("normalizeJSON(%v, %s): %v", c.v, c.chType, err)
			continue
		}
		if f, ok := c.want.(float64); ok && math.IsNaN(f) {
			if g, ok := got.(float64); !ok || !math.IsNaN(g) {
				t.Errorf("normalizeJSON(%v, %s) = %#v, want NaN", c.v, c.chType, got)
			}
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("normalizeJSON(%v, %s) = %#v, want %#v", c.v, c.chType, got, c.want)
		}
	}
	if _, err := normalizeJSON("x", "Int64"); err == nil {
		t.Error("non-numeric Int64 accepted")
	}
	if _, err := normalizeJSON(n("1"), "DateTime"); err == nil {
		t.Error("numeric DateTime accepted")
	}
}

func TestNormalizeNative(t *testing.T) {
	s := "x"
	var nilStr *string
	cases := []struct {
		v    any
		want any
	}{
		{int8(-1), int64(-1)},
		{uint16(7), uint64(7)},
		{int32(5), int64(5)},
		{float32(1.5), 1.5},
		{decimal.RequireFromString("2.500000"), decimalText("2.5")},
		{&s, "x"},
		{nilStr, nil},
		{map[string]string{"a": "b"}, map[string]string{"a": "b"}},
		{[]string{"a"}, []string{"a"}},
		{[]uint8{1, 2}, []any{uint64(1), uint64(2)}},
		{net.IPv4(10, 0, 0, 1), "10.0.0.1"},
		{map[uint16]int32{1: 2}, map[string]any{"1": int64(2)}},
	}
	for _, c := range cases {
		if got := normalizeNative(c.v); !reflect.DeepEqual(got, c.want) {
			t.Errorf("normalizeNative(%#v) = %#v, want %#v", c.v, got, c.want)
		}
	}
}

func TestAssign(t *testing.T) {
	at := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	var (
		s   string
		i64 int64
		i   int
		i32 int32
		u64 uint64
		u16 uint16
		f   float64
		b   bool
		tm  time.Time
		m   map[string]string
		ss  []string
		a   any
	)
	ok := []struct {
		dest any
		v    any
		want any
	}{
		{&s, "x", "x"},
		{&s, decimalText("1.5"), "1.5"},
		{&s, uint64(3), "3"},
		{&s, nil, ""},
		{&i64, uint64(9), int64(9)},
		{&i64, "12", int64(12)},
		{&i, int64(-4), -4},
		{&i32, int64(math.MaxInt32), int32(math.MaxInt32)},
		{&u64, int64(5), uint64(5)},
		{&u16, uint64(599), uint16(599)},
		{&f, decimalText("0.25"), 0.25},
		{&f, uint64(2), 2.0},
		{&b, true, true},
		{&b, uint64(1), true},
		{&tm, at, at},
		{&m, map[string]string{"a": "b"}, map[string]string{"a": "b"}},
		{&ss, []string{"a"}, []string{"a"}},
		{&a, decimalText("1.5"), "1.5"},
		{&a, uint64(1), uint64(1)},
	}
	for _, c := range ok {
		if err := assign("c", c.dest, c.v); err != nil {
			t.Errorf("assign(%T, %#v): %v", c.dest, c.v, err)
			continue
		}
		if got := reflect.ValueOf(c.dest).Elem().Interface(); !reflect.DeepEqual(got, c.want) {
			t.Errorf("assign(%T, %#v) stored %#v, want %#v", c.dest, c.v, got, c.want)
		}
	}
	bad := []struct {
		dest any
		v    any
	}{
		{&i64, uint64(math.MaxUint64)},
		{&i64, 1.5},
		{&i64, "abc"},
		{&i32, int64(math.MaxInt32 + 1)},
		{&u64, int64(-1)},
		{&u16, uint64(70000)},
		{&f, "x"},
		{&b, uint64(2)},
		{&tm, "2024-01-02"},
		{&m, []string{"a"}},
		{&ss, map[string]string{}},
		{&s, []string{"a"}},
		{new(float32), 1.0},
	}
	for _, c := range bad {
		err := assign("col", c.dest, c.v)
		if err == nil {
			t.Errorf("assign(%T, %#v) accepted", c.dest, c.v)
		} else if !strings.Contains(err.Error(), `"col"`) {
			t.Errorf("error does not name the column: %v", err)
		}
	}
}

func TestConvertForColumn(t *testing.T) {
	at := time.Now()
	ok := []struct {
		chType string
		v      any
		want   any
	}{
		{"UInt16", 200, uint16(200)},
		{"UInt64", 5, uint64(5)},
		{"Int32", int64(-3), int32(-3)},
		{"Int64", 7, int64(7)},
		{"UInt8", true, uint8(1)},
		{"Float64", 3, 3.0},
		{"Float32", 1.5, float32(1.5)},
		{"Decimal(18, 6)", 1.5, decimal.NewFromFloat(1.5)},
		{"Decimal(18, 6)", "0.000001", decimal.RequireFromString("0.000001")},
		{"Decimal(18, 6)", 2, decimal.NewFromInt(2)},
		{"LowCardinality(String)", "x", "x"},
		{"String", []byte("b"), []byte("b")},
		{"DateTime64(3, 'UTC')", at, at},
		{"Array(String)", []string{"a"}, []string{"a"}},
		{"Nullable(UInt16)", nil, nil},
		{"Bool", false, false},
	}
	for _, c := range ok {
		got, err := convertForColumn(c.chType, c.v)
		if err != nil {
			t.Errorf("convertForColumn(%s, %#v): %v", c.chType, c.v, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("convertForColumn(%s, %#v) = %#v (%T), want %#v", c.chType, c.v, got, got, c.want)
		}
	}
	bad := []struct {
		chType string
		v      any
	}{
		{"UInt16", 70000},
		{"UInt16", -1},
		{"Int8", 200},
		{"UInt64", "5"},
		{"Int64", 1.5},
		{"String", 5},
		{"DateTime64(3, 'UTC')", "2024-01-01"},
		{"Bool", 1},
		{"Decimal(18, 6)", "abc"},
		{"Array(String)", []int{1}},
	}
	for _, c := range bad {
		if _, err := convertForColumn(c.chType, c.v); err == nil {
			t.Errorf("convertForColumn(%s, %#v) accepted", c.chType, c.v)
		}
	}
}

func TestSortedMapOrder(t *testing.T) {
	m := map[string]string{"z": "1", "a": "2", "m": "3"}
	v, err := convertForColumn("Map(String, String)", m)
	if err != nil {
		t.Fatal(err)
	}
	it := v.(*sortedMap).Iterator()
	var keys []string
	for it.Next() {
		keys = append(keys, it.Key().(string))
		if it.Value().(string) != m[it.Key().(string)] {
			t.Errorf("value mismatch for %v", it.Key())
		}
	}
	if strings.Join(keys, ",") != "a,m,z" {
		t.Errorf("keys in order %v", keys)
	}
}

func TestClassifyServerError(t *testing.T) {
	if err := classifyServerError(&net.OpError{Op: "dial", Err: errors.New("refused")}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("dial error not unavailable: %v", err)
	}
	qe := &QueryError{Code: 60, Message: "unknown table"}
	if errors.Is(qe, ErrUnavailable) {
		t.Error("UNKNOWN_TABLE classified as unavailable")
	}
	if !errors.Is(&QueryError{Code: 241}, ErrUnavailable) {
		t.Error("MEMORY_LIMIT_EXCEEDED not unavailable")
	}
	if err := engineError("Code: 252. DB::Exception: Too many parts"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("engineError code not parsed: %#v", err)
	}
}

func TestSplitStatements(t *testing.T) {
	sql := `-- header; with a semicolon;
CREATE TABLE a (s String DEFAULT 'x;
y;') ENGINE = Memory;
/* block;
comment; */
INSERT INTO a VALUES ('it''s;'), ('back\';') ; -- trailing comment
SELECT ";" AS ` + "`c;`" + `;  
SELECT 1; SELECT 2
-- only a comment;
`
	got := splitStatements(sql)
	want := []string{
		"-- header; with a semicolon;\nCREATE TABLE a (s String DEFAULT 'x;\ny;') ENGINE = Memory",
		"/* block;\ncomment; */\nINSERT INTO a VALUES ('it''s;'), ('back\\';')",
		"-- trailing comment\nSELECT \";\" AS `c;`",
		"SELECT 1; SELECT 2\n-- only a comment;",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("splitStatements:\n got %q\nwant %q", got, want)
	}
	if got := splitStatements("-- nothing\n/* at all */\n"); len(got) != 0 {
		t.Errorf("comments only: %q", got)
	}
}

func TestSplitType(t *testing.T) {
	name, args := splitType("LowCardinality(Nullable(DateTime64(3, 'UTC')))")
	if name != "DateTime64" || args != "3, 'UTC'" {
		t.Errorf("splitType = %q %q", name, args)
	}
	if got := splitTopLevel("String, Map(String, Array(UInt8)), 'a,b'"); len(got) != 3 || got[1] != "Map(String, Array(UInt8))" {
		t.Errorf("splitTopLevel = %q", got)
	}
}

func TestServerUnreachableIsUnavailable(t *testing.T) {
	// Nothing listens on port 1 of the loopback address.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Open(ctx, Config{Addr: []string{"127.0.0.1:1"}, DialTimeout: time.Second}, nil)
	if !errors.Is(err, ErrUnavailable) {
		t.Errorf("unreachable server: %v", err)
	}
}

func TestServerParamsContext(t *testing.T) {
	if _, err := withParams(context.Background(), []Param{P("bad name", 1)}); err == nil {
		t.Error("bad parameter name accepted")
	}
	ctx, err := withParams(context.Background(), []Param{P("s", "a\tb\n"), P("n", 3)})
	if err != nil || ctx == nil {
		t.Fatal(err)
	}
	ctx, err = withParams(context.Background(), nil)
	if err != nil || ctx != context.Background() {
		t.Error("no params should keep the context")
	}
}
