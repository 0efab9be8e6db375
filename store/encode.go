package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/shopspring/decimal"
)

// appendJSONValue writes v as one JSON value of a JSONCompactEachRow row
// for the embedded engine's inline inserts.
func appendJSONValue(buf *bytes.Buffer, v any) error {
	switch x := v.(type) {
	case nil:
		buf.WriteString("null")
	case string:
		appendJSONString(buf, x)
	case []byte:
		appendJSONString(buf, string(x))
	case bool:
		buf.WriteString(strconv.FormatBool(x))
	case int:
		buf.WriteString(strconv.FormatInt(int64(x), 10))
	case int8:
		buf.WriteString(strconv.FormatInt(int64(x), 10))
	case int16:
		buf.WriteString(strconv.FormatInt(int64(x), 10))
	case int32:
		buf.WriteString(strconv.FormatInt(int64(x), 10))
	case int64:
		buf.WriteString(strconv.FormatInt(x, 10))
	case uint:
		buf.WriteString(strconv.FormatUint(uint64(x), 10))
	case uint8:
		buf.WriteString(strconv.FormatUint(uint64(x), 10))
	case uint16:
		buf.WriteString(strconv.FormatUint(uint64(x), 10))
	case uint32:
		buf.WriteString(strconv.FormatUint(uint64(x), 10))
	case uint64:
		buf.WriteString(strconv.FormatUint(x, 10))
	case float32:
		appendJSONFloat(buf, float64(x))
	case float64:
		appendJSONFloat(buf, x)
	case json.Number:
		buf.WriteString(string(x))
	case decimal.Decimal:
		// Quoted, so the engine parses the exact decimal text.
		appendJSONString(buf, x.String())
	case time.Time:
		appendJSONString(buf, formatTime(x))
	case []string:
		buf.WriteByte('[')
		for i, s := range x {
			if i > 0 {
				buf.WriteByte(',')
			}
			appendJSONString(buf, s)
		}
		buf.WriteByte(']')
	case map[string]string:
		// Sorted keys: ClickHouse keeps a Map's insertion order, so random
		// Go map order would make a retried batch differ from the original
		// and defeat insert deduplication.
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		buf.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				buf.WriteByte(',')
			}
			appendJSONString(buf, k)
			buf.WriteByte(':')
			appendJSONString(buf, x[k])
		}
		buf.WriteByte('}')
	default:
		return fmt.Errorf("unsupported value type %T", v)
	}
	return nil
}

// appendJSONFloat writes a float; nan and inf are not JSON numbers, and
// the engine reads them quoted.
func appendJSONFloat(buf *bytes.Buffer, f float64) {
	s := formatFloat(f)
	if s == "nan" || s == "inf" || s == "-inf" {
		appendJSONString(buf, s)
		return
	}
	buf.WriteString(s)
}

const hexDigits = "0123456789abcdef"

// appendJSONString writes s as a JSON string. Control characters (newline,
// NUL, ...) are always escaped, which is what keeps inline insert data free
// of the blank lines and NUL bytes that end it. Invalid UTF-8 is passed
// through byte for byte (ClickHouse strings are bytes) rather than
// replaced, so what is stored is what the caller gave.
func appendJSONString(buf *bytes.Buffer, s string) {
	buf.WriteByte('"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			if c < utf8.RuneSelf {
				i++
				continue
			}
			_, size := utf8.DecodeRuneInString(s[i:])
			i += size
			continue
		}
		buf.WriteString(s[start:i])
		switch c {
		case '"':
			buf.WriteString(`\"`)
		case '\\':
			buf.WriteString(`\\`)
		case '\n':
			buf.WriteString(`\n`)
		case '\r':
			buf.WriteString(`\r`)
		case '\t':
			buf.WriteString(`\t`)
		default:
			buf.WriteString(`\u00`)
			buf.WriteByte(hexDigits[c>>4])
			buf.WriteByte(hexDigits[c&0xf])
		}
		i++
		start = i
	}
	buf.WriteString(s[start:])
	buf.WriteByte('"')
}
