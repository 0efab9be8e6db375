package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"net"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/shopspring/decimal"
)

// Both engines turn each result value into one canonical Go form before it
// reaches Scan, so that a destination behaves the same whichever engine
// produced the row. Canonical forms: nil, string, bool, int64, uint64,
// float64, decimalText, time.Time, []string, map[string]string, []any and
// map[string]any.

// decimalText is a Decimal value kept as its exact decimal text, so that
// billing quantities never pass through a float unless the caller asks.
type decimalText string

// unwrapType strips the wrappers that do not change how a value reads.
func unwrapType(t string) string {
	for {
		t = strings.TrimSpace(t)
		switch {
		case strings.HasPrefix(t, "LowCardinality(") && strings.HasSuffix(t, ")"):
			t = t[len("LowCardinality(") : len(t)-1]
		case strings.HasPrefix(t, "Nullable(") && strings.HasSuffix(t, ")"):
			t = t[len("Nullable(") : len(t)-1]
		default:
			return t
		}
	}
}

// splitType splits "Name(args)" into Name and args.
func splitType(t string) (name, args string) {
	t = unwrapType(t)
	i := strings.IndexByte(t, '(')
	if i < 0 || !strings.HasSuffix(t, ")") {
		return t, ""
	}
	return t[:i], t[i+1 : len(t)-1]
}

// splitTopLevel splits type arguments at commas outside parentheses and
// quotes: "String, Array(UInt8)" → ["String", "Array(UInt8)"].
func splitTopLevel(s string) []string {
	var out []string
	depth, start := 0, 0
	inQuote := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case inQuote:
			if c == '\\' {
				i++
			} else if c == '\'' {
				inQuote = false
			}
		case c == '\'':
			inQuote = true
		case c == '(':
			depth++
		case c == ')':
			depth--
		case c == ',' && depth == 0:
			out = append(out, strings.TrimSpace(s[start:i]))
			start = i + 1
		}
	}
	return append(out, strings.TrimSpace(s[start:]))
}

// isStringType reports whether values of t are text in Go.
func isStringType(t string) bool {
	name, _ := splitType(t)
	switch name {
	case "String", "FixedString", "UUID", "IPv4", "IPv6", "Enum8", "Enum16", "Enum":
		return true
	}
	return false
}

// typeLocation returns the time zone named in a DateTime type, or UTC:
// both engines run with session_timezone UTC, so a DateTime without an
// explicit zone is rendered in UTC.
func typeLocation(args string) (*time.Location, error) {
	for _, a := range splitTopLevel(args) {
		if len(a) >= 2 && a[0] == '\'' && a[len(a)-1] == '\'' {
			return time.LoadLocation(a[1 : len(a)-1])
		}
	}
	return time.UTC, nil
}

// jsonText returns the text of a JSON scalar decoded with UseNumber.
func jsonText(v any) (string, bool) {
	switch x := v.(type) {
	case json.Number:
		return string(x), true
	case string:
		return x, true
	}
	return "", false
}

// normalizeJSON converts a value decoded from JSONCompactEachRow (with
// UseNumber) into its canonical form, guided by the column's ClickHouse type.
func normalizeJSON(v any, chType string) (any, error) {
	if v == nil {
		return nil, nil
	}
	name, args := splitType(chType)
	switch name {
	case "Int8", "Int16", "Int32", "Int64":
		s, ok := jsonText(v)
		if !ok {
			return nil, fmt.Errorf("unexpected %T for %s", v, chType)
		}
		return strconv.ParseInt(s, 10, 64)
	case "UInt8", "UInt16", "UInt32", "UInt64":
		s, ok := jsonText(v)
		if !ok {
			return nil, fmt.Errorf("unexpected %T for %s", v, chType)
		}
		return strconv.ParseUint(s, 10, 64)
	case "Float32", "Float64", "BFloat16":
		s, ok := jsonText(v)
		if !ok {
			return nil, fmt.Errorf("unexpected %T for %s", v, chType)
		}
		return strconv.ParseFloat(s, 64)
	case "Decimal", "Decimal32", "Decimal64", "Decimal128", "Decimal256":
		s, ok := jsonText(v)
		if !ok {
			return nil, fmt.Errorf("unexpected %T for %s", v, chType)
		}
		return decimalText(s), nil
	case "Bool":
		b, ok := v.(bool)
		if !ok {
			return nil, fmt.Errorf("unexpected %T for %s", v, chType)
		}
		return b, nil
	case "DateTime", "DateTime64", "Date", "Date32":
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("unexpected %T for %s", v, chType)
		}
		loc, err := typeLocation(args)
		if err != nil {
			return nil, err
		}
		layout := "2006-01-02 15:04:05.999999999"
		if name == "Date" || name == "Date32" {
			layout = "2006-01-02"
		}
		return time.ParseInLocation(layout, s, loc)
	case "Array":
		list, ok := v.([]any)
		if !ok {
			return nil, fmt.Errorf("unexpected %T for %s", v, chType)
		}
		if isStringType(args) {
			out := make([]string, len(list))
			for i, e := range list {
				s, ok := e.(string)
				if !ok {
					return nil, fmt.Errorf("unexpected element %T for %s", e, chType)
				}
				out[i] = s
			}
			return out, nil
		}
		out := make([]any, len(list))
		for i, e := range list {
			n, err := normalizeJSON(e, args)
			if err != nil {
				return nil, err
			}
			out[i] = n
		}
		return out, nil
	case "Map":
		obj, ok := v.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("unexpected %T for %s", v, chType)
		}
		kv := splitTopLevel(args)
		valueType := ""
		if len(kv) == 2 {
			valueType = kv[1]
		}
		if isStringType(valueType) {
			out := make(map[string]string, len(obj))
			for k, e := range obj {
				s, ok := e.(string)
				if !ok {
					return nil, fmt.Errorf("unexpected value %T for %s", e, chType)
				}
				out[k] = s
			}
			return out, nil
		}
		out := make(map[string]any, len(obj))
		for k, e := range obj {
			n, err := normalizeJSON(e, valueType)
			if err != nil {
				return nil, err
			}
			out[k] = n
		}
		return out, nil
	}
	// Text types, big integers (quoted), enums, UUIDs, IPs: keep the text.
	if s, ok := jsonText(v); ok {
		return s, nil
	}
	return v, nil
}

// normalizeNative converts a value scanned by clickhouse-go into its
// canonical form.
func normalizeNative(v any) any {
	switch x := v.(type) {
	case nil:
		return nil
	case string:
		return x
	case bool:
		return x
	case int:
		return int64(x)
	case int8:
		return int64(x)
	case int16:
		return int64(x)
	case int32:
		return int64(x)
	case int64:
		return x
	case uint:
		return uint64(x)
	case uint8:
		return uint64(x)
	case uint16:
		return uint64(x)
	case uint32:
		return uint64(x)
	case uint64:
		return x
	case float32:
		return float64(x)
	case float64:
		return x
	case decimal.Decimal:
		return decimalText(x.String())
	case time.Time:
		return x
	case []string:
		return x
	case map[string]string:
		return x
	case *big.Int:
		if x == nil {
			return nil
		}
		return x.String()
	case big.Int:
		return x.String()
	case net.IP:
		return x.String()
	case netip.Addr:
		return x.String()
	}
	rv := reflect.ValueOf(v)
	if k := rv.Kind(); k == reflect.Pointer || k == reflect.Interface {
		// Nullable columns scan into pointers.
		if rv.IsNil() {
			return nil
		}
		return normalizeNative(rv.Elem().Interface())
	}
	// UUIDs, IPs and enums print as their ClickHouse text.
	if s, ok := v.(fmt.Stringer); ok {
		return s.String()
	}
	switch rv.Kind() {
	case reflect.Slice, reflect.Array:
		if rv.Kind() == reflect.Slice && rv.Type().Elem().Kind() == reflect.String {
			out := make([]string, rv.Len())
			for i := range out {
				out[i] = rv.Index(i).String()
			}
			return out
		}
		out := make([]any, rv.Len())
		for i := range out {
			out[i] = normalizeNative(rv.Index(i).Interface())
		}
		return out
	case reflect.Map:
		if rv.Type().Key().Kind() == reflect.String && rv.Type().Elem().Kind() == reflect.String {
			out := make(map[string]string, rv.Len())
			for it := rv.MapRange(); it.Next(); {
				out[it.Key().String()] = it.Value().String()
			}
			return out
		}
		out := make(map[string]any, rv.Len())
		for it := rv.MapRange(); it.Next(); {
			out[fmt.Sprint(normalizeNative(it.Key().Interface()))] = normalizeNative(it.Value().Interface())
		}
		return out
	}
	return v
}

// scanError describes a failed conversion of one column.
func scanError(col string, src, dest any, detail string) error {
	msg := fmt.Sprintf("store: scan column %q: cannot store %T into %T", col, src, dest)
	if detail != "" {
		msg += ": " + detail
	}
	return fmt.Errorf("%s", msg)
}

// toInt64 converts a canonical numeric value to int64 exactly.
func toInt64(v any) (int64, bool, string) {
	switch x := v.(type) {
	case int64:
		return x, true, ""
	case uint64:
		if x > math.MaxInt64 {
			return 0, false, "value out of range"
		}
		return int64(x), true, ""
	case string:
		// Big integer types and quoted 64-bit integers arrive as text.
		n, err := strconv.ParseInt(x, 10, 64)
		if err != nil {
			return 0, false, "not an integer"
		}
		return n, true, ""
	}
	return 0, false, ""
}

// toUint64 converts a canonical numeric value to uint64 exactly.
func toUint64(v any) (uint64, bool, string) {
	switch x := v.(type) {
	case uint64:
		return x, true, ""
	case int64:
		if x < 0 {
			return 0, false, "negative value"
		}
		return uint64(x), true, ""
	case string:
		n, err := strconv.ParseUint(x, 10, 64)
		if err != nil {
			return 0, false, "not an unsigned integer"
		}
		return n, true, ""
	}
	return 0, false, ""
}

// assign stores the canonical value v into dest.
func assign(col string, dest any, v any) error {
	switch d := dest.(type) {
	case *any:
		if dt, ok := v.(decimalText); ok {
			*d = string(dt)
		} else {
			*d = v
		}
		return nil
	case *string:
		switch x := v.(type) {
		case nil:
			*d = ""
		case string:
			*d = x
		case decimalText:
			*d = string(x)
		case int64:
			*d = strconv.FormatInt(x, 10)
		case uint64:
			*d = strconv.FormatUint(x, 10)
		case float64:
			*d = formatFloat(x)
		case bool:
			*d = strconv.FormatBool(x)
		case time.Time:
			*d = formatTime(x)
		default:
			return scanError(col, v, dest, "")
		}
		return nil
	case *int64, *int, *int32:
		if v == nil {
			reflect.ValueOf(dest).Elem().SetZero()
			return nil
		}
		n, ok, why := toInt64(v)
		if !ok {
			return scanError(col, v, dest, why)
		}
		switch d := d.(type) {
		case *int64:
			*d = n
		case *int:
			if n < math.MinInt || n > math.MaxInt {
				return scanError(col, v, dest, "value out of range")
			}
			*d = int(n)
		case *int32:
			if n < math.MinInt32 || n > math.MaxInt32 {
				return scanError(col, v, dest, "value out of range")
			}
			*d = int32(n)
		}
		return nil
	case *uint64, *uint16:
		if v == nil {
			reflect.ValueOf(dest).Elem().SetZero()
			return nil
		}
		n, ok, why := toUint64(v)
		if !ok {
			return scanError(col, v, dest, why)
		}
		switch d := d.(type) {
		case *uint64:
			*d = n
		case *uint16:
			if n > math.MaxUint16 {
				return scanError(col, v, dest, "value out of range")
			}
			*d = uint16(n)
		}
		return nil
	case *float64:
		switch x := v.(type) {
		case nil:
			*d = 0
		case float64:
			*d = x
		case int64:
			*d = float64(x)
		case uint64:
			*d = float64(x)
		case decimalText:
			f, err := strconv.ParseFloat(string(x), 64)
			if err != nil {
				return scanError(col, v, dest, err.Error())
			}
			*d = f
		default:
			return scanError(col, v, dest, "")
		}
		return nil
	case *bool:
		switch x := v.(type) {
		case nil:
			*d = false
		case bool:
			*d = x
		case int64, uint64:
			// UInt8 is ClickHouse's traditional boolean.
			n, _, _ := toInt64(x)
			if n != 0 && n != 1 {
				return scanError(col, v, dest, "not 0 or 1")
			}
			*d = n == 1
		default:
			return scanError(col, v, dest, "")
		}
		return nil
	case *time.Time:
		switch x := v.(type) {
		case nil:
			*d = time.Time{}
		case time.Time:
			*d = x
		default:
			return scanError(col, v, dest, "")
		}
		return nil
	case *map[string]string:
		switch x := v.(type) {
		case nil:
			*d = nil
		case map[string]string:
			*d = x
		default:
			return scanError(col, v, dest, "")
		}
		return nil
	case *[]string:
		switch x := v.(type) {
		case nil:
			*d = nil
		case []string:
			*d = x
		default:
			return scanError(col, v, dest, "")
		}
		return nil
	}
	return fmt.Errorf("store: scan column %q: unsupported destination %T", col, dest)
}

// scanRow assigns the current row's values to dest; both engines' Rows use it.
func scanRow(cols []string, cur []any, dest []any) error {
	if cur == nil {
		return errors.New("store: Scan called without a successful Next")
	}
	if len(dest) != len(cur) {
		return fmt.Errorf("store: Scan got %d destinations for %d columns", len(dest), len(cur))
	}
	for i, d := range dest {
		if err := assign(cols[i], d, cur[i]); err != nil {
			return err
		}
	}
	return nil
}
