package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/shopspring/decimal"
)

// The embedded engine takes inserts fastest as a file in ClickHouse's Native
// format (columns in binary, nothing to parse) read with INSERT ... FROM
// INFILE: about twice the rate of inline JSON, which must be parsed value by
// value (see BenchmarkInsertEvents). nativeBlock encodes rows for the column
// types Meterline's tables use; a column of another type, or a value that
// does not fit its column, makes the insert fall back to inline JSON.

// errNativeUnsupported makes Insert fall back to inline JSON.
var errNativeUnsupported = errors.New("not encodable as Native")

// errNoMemFile means the platform cannot make an anonymous memory file
// for an insert (see memFile).
var errNoMemFile = errors.New("no memory file on this platform")

type nativeKind int

const (
	nkString nativeKind = iota
	nkUInt8
	nkUInt16
	nkUInt32
	nkUInt64
	nkInt8
	nkInt16
	nkInt32
	nkInt64
	nkFloat32
	nkFloat64
	nkBool
	nkDateTime
	nkDateTime64
	nkDecimal64
	nkMapStringString
	nkArrayString
)

// nativeType is a column type the encoder can write, and the type name put
// in the block header (the engine converts it to the column's type where
// they differ, as for LowCardinality(String) sent as String).
type nativeType struct {
	kind   nativeKind
	header string
	scale  int   // DateTime64 precision or Decimal scale
	bytes  int   // Decimal storage: 4 (precision <= 9) or 8 bytes
	limit  int64 // Decimal: 10^precision, the bound of the scaled value
	// nullable marks Nullable(T): a null map (one byte per row, 1 for
	// NULL) precedes the values, and a nil value is written as T's zero.
	nullable bool
}

var (
	dateTime64Re = regexp.MustCompile(`^DateTime64\((\d)(?:, *'[A-Za-z0-9_/+-]+')?\)$`)
	decimalRe    = regexp.MustCompile(`^Decimal\((\d+), *(\d+)\)$`)
	dateTimeRe   = regexp.MustCompile(`^DateTime(?:\('[A-Za-z0-9_/+-]+'\))?$`)
)

var simpleNativeTypes = map[string]nativeKind{
	"String": nkString, "UInt8": nkUInt8, "UInt16": nkUInt16, "UInt32": nkUInt32, "UInt64": nkUInt64,
	"Int8": nkInt8, "Int16": nkInt16, "Int32": nkInt32, "Int64": nkInt64, "Float32": nkFloat32,
	"Float64": nkFloat64, "Bool": nkBool, "Map(String, String)": nkMapStringString, "Array(String)": nkArrayString,
}

// parseNativeType maps a column type from system.columns to an encoder.
func parseNativeType(t string) (nativeType, bool) {
	if inner, ok := strings.CutPrefix(t, "Nullable("); ok && strings.HasSuffix(inner, ")") {
		nt, ok := parseNativeType(inner[:len(inner)-1])
		if !ok || nt.nullable || nt.kind == nkMapStringString || nt.kind == nkArrayString {
			return nativeType{}, false
		}
		nt.nullable, nt.header = true, t
		return nt, true
	}
	if k, ok := simpleNativeTypes[t]; ok {
		return nativeType{kind: k, header: t}, true
	}
	switch {
	case t == "LowCardinality(String)":
		return nativeType{kind: nkString, header: "String"}, true
	case dateTimeRe.MatchString(t):
		return nativeType{kind: nkDateTime, header: t}, true
	}
	if m := dateTime64Re.FindStringSubmatch(t); m != nil {
		p, _ := strconv.Atoi(m[1])
		return nativeType{kind: nkDateTime64, header: t, scale: p}, true
	}
	if m := decimalRe.FindStringSubmatch(t); m != nil {
		p, _ := strconv.Atoi(m[1])
		s, _ := strconv.Atoi(m[2])
		if p >= 1 && p <= 18 && s <= p {
			width := 8
			if p <= 9 {
				width = 4
			}
			return nativeType{kind: nkDecimal64, header: t, scale: s, bytes: width, limit: int64(math.Pow10(p))}, true
		}
	}
	return nativeType{}, false
}

// nativeBlock encodes rows as one Native block. types are the columns'
// types in columns order.
func nativeBlock(dst []byte, columns []string, types []nativeType, rows [][]any) ([]byte, error) {
	dst = binary.AppendUvarint(dst, uint64(len(columns)))
	dst = binary.AppendUvarint(dst, uint64(len(rows)))
	for j, name := range columns {
		t := types[j]
		dst = appendNativeString(dst, name)
		dst = appendNativeString(dst, t.header)
		var err error
		if dst, err = appendNativeColumn(dst, t, rows, j); err != nil {
			return nil, fmt.Errorf("column %q: %w", name, err)
		}
	}
	return dst, nil
}

func appendNativeString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

func appendNativeColumn(dst []byte, t nativeType, rows [][]any, j int) ([]byte, error) {
	le := binary.LittleEndian
	switch t.kind {
	case nkMapStringString:
		return appendNativeMaps(dst, rows, j)
	case nkArrayString:
		return appendNativeArrays(dst, rows, j)
	}
	if t.nullable {
		for i := range rows {
			if rows[i][j] == nil {
				dst = append(dst, 1)
			} else {
				dst = append(dst, 0)
			}
		}
	}
	for i := range rows {
		v := rows[i][j]
		if v == nil && t.nullable {
			v = nativeZero[t.kind]
		}
		switch t.kind {
		case nkString:
			switch x := v.(type) {
			case string:
				dst = appendNativeString(dst, x)
			case []byte:
				dst = appendNativeString(dst, string(x))
			default:
				return nil, mismatch(i, v)
			}
		case nkUInt8, nkUInt16, nkUInt32, nkUInt64:
			u, ok := asUint(v, t.kind)
			if !ok {
				return nil, mismatch(i, v)
			}
			switch t.kind {
			case nkUInt8:
				dst = append(dst, byte(u))
			case nkUInt16:
				dst = le.AppendUint16(dst, uint16(u))
			case nkUInt32:
				dst = le.AppendUint32(dst, uint32(u))
			default:
				dst = le.AppendUint64(dst, u)
			}
		case nkInt8, nkInt16, nkInt32, nkInt64:
			n, ok := asInt(v, t.kind)
			if !ok {
				return nil, mismatch(i, v)
			}
			switch t.kind {
			case nkInt8:
				dst = append(dst, byte(int8(n)))
			case nkInt16:
				dst = le.AppendUint16(dst, uint16(int16(n)))
			case nkInt32:
				dst = le.AppendUint32(dst, uint32(int32(n)))
			default:
				dst = le.AppendUint64(dst, uint64(n))
			}
		case nkFloat32, nkFloat64:
			f, ok := asFloat(v)
			if !ok {
				return nil, mismatch(i, v)
			}
			if t.kind == nkFloat32 {
				dst = le.AppendUint32(dst, math.Float32bits(float32(f)))
			} else {
				dst = le.AppendUint64(dst, math.Float64bits(f))
			}
		case nkBool:
			b, ok := v.(bool)
			if !ok {
				return nil, mismatch(i, v)
			}
			if b {
				dst = append(dst, 1)
			} else {
				dst = append(dst, 0)
			}
		case nkDateTime:
			tm, ok := v.(time.Time)
			if !ok || tm.Unix() < 0 || tm.Unix() > math.MaxUint32 {
				return nil, mismatch(i, v)
			}
			dst = le.AppendUint32(dst, uint32(tm.Unix()))
		case nkDateTime64:
			tm, ok := v.(time.Time)
			if !ok || tm.Year() < 1900 || tm.Year() > 2299 {
				return nil, mismatch(i, v)
			}
			div := int64(math.Pow10(9 - t.scale))
			ticks := tm.Unix()*int64(math.Pow10(t.scale)) + int64(tm.Nanosecond())/div
			dst = le.AppendUint64(dst, uint64(ticks))
		case nkDecimal64:
			n, ok := decimalTicks(v, t.scale)
			if !ok || n >= t.limit || n <= -t.limit {
				return nil, mismatch(i, v)
			}
			if t.bytes == 4 {
				dst = le.AppendUint32(dst, uint32(int32(n)))
			} else {
				dst = le.AppendUint64(dst, uint64(n))
			}
		default:
			return nil, errNativeUnsupported
		}
	}
	return dst, nil
}

// nativeZero is the value written under a NULL of a Nullable column.
var nativeZero = map[nativeKind]any{
	nkString: "", nkUInt8: uint64(0), nkUInt16: uint64(0), nkUInt32: uint64(0), nkUInt64: uint64(0),
	nkInt8: int64(0), nkInt16: int64(0), nkInt32: int64(0), nkInt64: int64(0),
	nkFloat32: float64(0), nkFloat64: float64(0), nkBool: false,
	nkDateTime: time.Unix(0, 0), nkDateTime64: time.Unix(0, 0), nkDecimal64: float64(0),
}

// appendNativeMaps writes Map(String, String): offsets, then all keys, then
// all values. Keys are sorted, as in the JSON path, so that a retried batch
// is byte-identical and insert deduplication recognises it.
func appendNativeMaps(dst []byte, rows [][]any, j int) ([]byte, error) {
	var off uint64
	sorted := make([][]string, len(rows))
	for i := range rows {
		var m map[string]string
		switch x := rows[i][j].(type) {
		case map[string]string:
			m = x
		case nil:
		default:
			return nil, mismatch(i, x)
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		sorted[i] = keys
		off += uint64(len(keys))
		dst = binary.LittleEndian.AppendUint64(dst, off)
	}
	for _, keys := range sorted {
		for _, k := range keys {
			dst = appendNativeString(dst, k)
		}
	}
	for i, keys := range sorted {
		m, _ := rows[i][j].(map[string]string)
		for _, k := range keys {
			dst = appendNativeString(dst, m[k])
		}
	}
	return dst, nil
}

func appendNativeArrays(dst []byte, rows [][]any, j int) ([]byte, error) {
	var off uint64
	for i := range rows {
		a, ok := rows[i][j].([]string)
		if !ok && rows[i][j] != nil {
			return nil, mismatch(i, rows[i][j])
		}
		off += uint64(len(a))
		dst = binary.LittleEndian.AppendUint64(dst, off)
	}
	for i := range rows {
		a, _ := rows[i][j].([]string)
		for _, s := range a {
			dst = appendNativeString(dst, s)
		}
	}
	return dst, nil
}

func mismatch(row int, v any) error {
	return fmt.Errorf("%w: row %d holds %T", errNativeUnsupported, row, v)
}

var uintMax = map[nativeKind]uint64{nkUInt8: math.MaxUint8, nkUInt16: math.MaxUint16, nkUInt32: math.MaxUint32, nkUInt64: math.MaxUint64}

func asUint(v any, k nativeKind) (uint64, bool) {
	var u uint64
	switch x := v.(type) {
	case uint:
		u = uint64(x)
	case uint8:
		u = uint64(x)
	case uint16:
		u = uint64(x)
	case uint32:
		u = uint64(x)
	case uint64:
		u = x
	case int, int8, int16, int32, int64:
		n, _ := asInt(x, nkInt64)
		if n < 0 {
			return 0, false
		}
		u = uint64(n)
	default:
		return 0, false
	}
	return u, u <= uintMax[k]
}

var intRange = map[nativeKind][2]int64{nkInt8: {math.MinInt8, math.MaxInt8}, nkInt16: {math.MinInt16, math.MaxInt16},
	nkInt32: {math.MinInt32, math.MaxInt32}, nkInt64: {math.MinInt64, math.MaxInt64}}

func asInt(v any, k nativeKind) (int64, bool) {
	var n int64
	switch x := v.(type) {
	case int:
		n = int64(x)
	case int8:
		n = int64(x)
	case int16:
		n = int64(x)
	case int32:
		n = int64(x)
	case int64:
		n = x
	case uint8:
		n = int64(x)
	case uint16:
		n = int64(x)
	case uint32:
		n = int64(x)
	case uint, uint64:
		u, _ := asUint(x, nkUInt64)
		if u > math.MaxInt64 {
			return 0, false
		}
		n = int64(u)
	default:
		return 0, false
	}
	r := intRange[k]
	return n, n >= r[0] && n <= r[1]
}

func asFloat(v any) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, true
	case float32:
		return float64(x), true
	}
	if n, ok := asInt(v, nkInt64); ok {
		return float64(n), true
	}
	return 0, false
}

// decimalTicks returns v × 10^scale as an integer, exactly as the engine
// would parse the value's decimal text; false when v has more digits than
// the scale or does not fit Decimal64.
func decimalTicks(v any, scale int) (int64, bool) {
	var s string
	switch x := v.(type) {
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return 0, false
		}
		s = strconv.FormatFloat(x, 'f', -1, 64)
	case decimal.Decimal:
		s = x.String()
	default:
		n, ok := asInt(v, nkInt64)
		if !ok {
			return 0, false
		}
		s = strconv.FormatInt(n, 10)
	}
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	whole, frac, _ := strings.Cut(s, ".")
	if len(frac) > scale {
		return 0, false
	}
	digits := whole + frac + strings.Repeat("0", scale-len(frac))
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || len(strings.TrimLeft(digits, "0")) > 18 {
		return 0, false
	}
	if neg {
		n = -n
	}
	return n, true
}
