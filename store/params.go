package store

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Parameter values travel as text, never spliced into SQL: the engine
// parses each value with the type named in its {name:Type} placeholder,
// using ClickHouse's "escaped" text format for top-level values (the same
// for chDB's chdb_query_with_params, and for the server's native-protocol
// parameters, which clickhouse-go additionally wraps in a quoted field).

// escapedTextReplacer encodes a string in ClickHouse's escaped text format:
// the engine decodes backslash sequences, and a raw tab or newline would end
// the value ("isn't parsed completely"), so those are escaped too. A lone
// `\N` would mean NULL; escaping the backslash avoids that as well.
var escapedTextReplacer = strings.NewReplacer(
	`\`, `\\`,
	"\t", `\t`,
	"\n", `\n`,
	"\r", `\r`,
)

// quotedReplacer escapes the inside of a single-quoted ClickHouse literal
// (array elements in a parameter value, and SQL string literals).
var quotedReplacer = strings.NewReplacer(
	`\`, `\\`,
	`'`, `\'`,
	"\t", `\t`,
	"\n", `\n`,
	"\r", `\r`,
)

// errNUL is returned for strings with NUL bytes: C strings end there, and
// no Meterline value legitimately contains one.
var errNUL = errors.New("string contains a NUL byte")

// validParamName reports whether name can appear in {name:Type}. ClickHouse
// accepts identifier characters only; rejecting the rest early gives a
// clearer error than the engine's.
func validParamName(name string) bool {
	if name == "" {
		return false
	}
	for i, r := range name {
		switch {
		case r == '_', r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// formatTime renders t in UTC in the text form DateTime and DateTime64
// columns and parameters parse. Whole seconds are rendered without a
// fraction, because a DateTime parameter rejects one; otherwise all nine
// digits are kept and DateTime64(p) truncates to its precision, as the
// server does with clickhouse-go's binary encoding.
func formatTime(t time.Time) string {
	t = t.UTC()
	if t.Nanosecond() == 0 {
		return t.Format("2006-01-02 15:04:05")
	}
	return t.Format("2006-01-02 15:04:05.000000000")
}

// formatFloat renders f as ClickHouse parses it, including nan and inf.
func formatFloat(f float64) string {
	switch {
	case math.IsNaN(f):
		return "nan"
	case math.IsInf(f, 1):
		return "inf"
	case math.IsInf(f, -1):
		return "-inf"
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// paramText encodes one parameter value as the engine reads it.
func paramText(v any) (string, error) {
	switch x := v.(type) {
	case string:
		if strings.IndexByte(x, 0) >= 0 {
			return "", errNUL
		}
		return escapedTextReplacer.Replace(x), nil
	case int:
		return strconv.FormatInt(int64(x), 10), nil
	case int8:
		return strconv.FormatInt(int64(x), 10), nil
	case int16:
		return strconv.FormatInt(int64(x), 10), nil
	case int32:
		return strconv.FormatInt(int64(x), 10), nil
	case int64:
		return strconv.FormatInt(x, 10), nil
	case uint:
		return strconv.FormatUint(uint64(x), 10), nil
	case uint8:
		return strconv.FormatUint(uint64(x), 10), nil
	case uint16:
		return strconv.FormatUint(uint64(x), 10), nil
	case uint32:
		return strconv.FormatUint(uint64(x), 10), nil
	case uint64:
		return strconv.FormatUint(x, 10), nil
	case float32:
		return formatFloat(float64(x)), nil
	case float64:
		return formatFloat(x), nil
	case bool:
		if x {
			return "true", nil
		}
		return "false", nil
	case time.Time:
		return formatTime(x), nil
	case []string:
		// Array values are parsed as a literal with quoted elements; the
		// outer escaped-text layer does not apply to them.
		var b strings.Builder
		b.WriteByte('[')
		for i, s := range x {
			if strings.IndexByte(s, 0) >= 0 {
				return "", errNUL
			}
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteByte('\'')
			b.WriteString(quotedReplacer.Replace(s))
			b.WriteByte('\'')
		}
		b.WriteByte(']')
		return b.String(), nil
	case nil:
		return "", errors.New("nil is not a supported parameter value")
	default:
		return "", fmt.Errorf("unsupported parameter type %T", v)
	}
}

// encodeParams validates and encodes params into parallel name and value
// slices.
func encodeParams(params []Param) (names, values []string, err error) {
	if len(params) == 0 {
		return nil, nil, nil
	}
	names = make([]string, len(params))
	values = make([]string, len(params))
	for i, p := range params {
		if !validParamName(p.Name) {
			return nil, nil, fmt.Errorf("store: invalid parameter name %q", p.Name)
		}
		t, err := paramText(p.Value)
		if err != nil {
			return nil, nil, fmt.Errorf("store: parameter %q: %w", p.Name, err)
		}
		names[i], values[i] = p.Name, t
	}
	return names, values, nil
}

// quoteString renders s as a single-quoted ClickHouse SQL string literal.
func quoteString(s string) (string, error) {
	if strings.IndexByte(s, 0) >= 0 {
		return "", errNUL
	}
	return "'" + quotedReplacer.Replace(s) + "'", nil
}

// identReplacer escapes the inside of a backquoted identifier.
var identReplacer = strings.NewReplacer(`\`, `\\`, "`", "\\`")

// quoteName renders one identifier in backquotes, so a name is never
// parsed as SQL.
func quoteName(name string) (string, error) {
	if name == "" || strings.IndexByte(name, 0) >= 0 {
		return "", fmt.Errorf("invalid identifier %q", name)
	}
	return "`" + identReplacer.Replace(name) + "`", nil
}

// QuoteName quotes one identifier (a table or column name) for SQL that
// names tables or columns only known at run time: backquoted and escaped,
// so a name is never parsed as SQL. Empty names and NUL bytes are errors.
func QuoteName(name string) (string, error) { return quoteName(name) }

// quoteTable renders "table" or "database.table" with each part quoted.
func quoteTable(name string) (string, error) {
	db, table, ok := strings.Cut(name, ".")
	if !ok {
		return quoteName(name)
	}
	qd, err := quoteName(db)
	if err != nil {
		return "", err
	}
	qt, err := quoteName(table)
	if err != nil {
		return "", err
	}
	return qd + "." + qt, nil
}
