package schemas

import "unicode/utf8"

// This file is a small JSON scanner. It checks the RFC 8259 grammar and
// records where object members lie without building any values, so that the
// decoder can look at each field's raw text and allocate only the strings it
// keeps. Nesting is tracked on an explicit stack rather than by recursion:
// hostile bodies nested a million levels deep cost memory proportional to
// their size, never Go stack.

// syntaxError is a violation of the JSON grammar at a byte offset of the
// scanned buffer.
type syntaxError struct {
	off int
	msg string
}

// member is one "key": value pair of an object, as offsets into the buffer.
type member struct {
	keyStart, keyEnd int // the key's text without its quotes
	valStart, valEnd int // the value's JSON text
	keyEsc, valEsc   bool
}

// kind is the first byte of the value, enough to tell its JSON type.
func (m *member) kind(data []byte) byte { return data[m.valStart] }

// strPlain marks bytes that may appear in a JSON string without further
// thought; the rest end the string, start an escape or are forbidden.
var strPlain = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func skipSpace(data []byte, i int) int {
	for i < len(data) && isSpace(data[i]) {
		i++
	}
	return i
}

// skipBOM skips a UTF-8 byte order mark, which RFC 8259 lets parsers ignore
// and which some Windows tools still write.
func skipBOM(data []byte) int {
	if len(data) >= 3 && data[0] == 0xEF && data[1] == 0xBB && data[2] == 0xBF {
		return 3
	}
	return 0
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func hexVal(c byte) rune {
	switch {
	case c >= '0' && c <= '9':
		return rune(c - '0')
	case c >= 'a' && c <= 'f':
		return rune(c - 'a' + 10)
	default:
		return rune(c - 'A' + 10)
	}
}

// scanString scans the string starting at data[i] == '"' and returns the
// offset after its closing quote and whether it holds escapes.
func scanString(data []byte, i int) (int, bool, *syntaxError) {
	esc := false
	i++
	for i < len(data) {
		c := data[i]
		if strPlain[c] {
			i++
			continue
		}
		switch {
		case c == '"':
			return i + 1, esc, nil
		case c == '\\':
			esc = true
			if i+1 >= len(data) {
				return 0, false, &syntaxError{i, "unterminated string"}
			}
			switch data[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(data) || !isHex(data[i+2]) || !isHex(data[i+3]) || !isHex(data[i+4]) || !isHex(data[i+5]) {
					return 0, false, &syntaxError{i, `invalid \u escape in string`}
				}
				i += 6
			default:
				return 0, false, &syntaxError{i, "invalid escape in string"}
			}
		default:
			return 0, false, &syntaxError{i, "control character in string (must be escaped)"}
		}
	}
	return 0, false, &syntaxError{i, "unterminated string"}
}

// scanNumber scans the number starting at data[i]. What follows the number
// is the caller's business, so "12x" fails one level up.
func scanNumber(data []byte, i int) (int, *syntaxError) {
	start := i
	if data[i] == '-' {
		i++
	}
	switch {
	case i < len(data) && data[i] == '0':
		i++
	case i < len(data) && data[i] >= '1' && data[i] <= '9':
		for i < len(data) && isDigit(data[i]) {
			i++
		}
	default:
		return 0, &syntaxError{start, "invalid number"}
	}
	if i < len(data) && data[i] == '.' {
		i++
		d := i
		for i < len(data) && isDigit(data[i]) {
			i++
		}
		if i == d {
			return 0, &syntaxError{start, "invalid number: no digits after the decimal point"}
		}
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		i++
		if i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		d := i
		for i < len(data) && isDigit(data[i]) {
			i++
		}
		if i == d {
			return 0, &syntaxError{start, "invalid number: no digits in the exponent"}
		}
	}
	return i, nil
}

func scanLiteral(data []byte, i int, lit string) (int, *syntaxError) {
	if len(data)-i < len(lit) || string(data[i:i+len(lit)]) != lit {
		return 0, &syntaxError{i, "invalid literal (expected " + lit + ")"}
	}
	return i + len(lit), nil
}

// scanKey scans `"key" :` at data[i] (after optional space) and returns the
// offset after the colon.
func scanKey(data []byte, i int) (int, *syntaxError) {
	i = skipSpace(data, i)
	if i >= len(data) || data[i] != '"' {
		return 0, &syntaxError{i, "expected a string key"}
	}
	i, _, err := scanString(data, i)
	if err != nil {
		return 0, err
	}
	i = skipSpace(data, i)
	if i >= len(data) || data[i] != ':' {
		return 0, &syntaxError{i, "expected ':' after object key"}
	}
	return i + 1, nil
}

// skipValue checks the value at data[i] (after optional space) and returns
// the offset after it.
func skipValue(data []byte, i int) (int, *syntaxError) {
	var stackBuf [32]byte
	stack := stackBuf[:0]
	var err *syntaxError
	for {
		i = skipSpace(data, i)
		if i >= len(data) {
			return 0, &syntaxError{i, "unexpected end of input, expected a value"}
		}
		switch c := data[i]; {
		case c == '{' || c == '[':
			closer := byte(']')
			if c == '{' {
				closer = '}'
			}
			j := skipSpace(data, i+1)
			if j < len(data) && data[j] == closer {
				i = j + 1
				break
			}
			stack = append(stack, c)
			if c == '{' {
				if i, err = scanKey(data, j); err != nil {
					return 0, err
				}
			} else {
				i = j
			}
			continue
		case c == '"':
			if i, _, err = scanString(data, i); err != nil {
				return 0, err
			}
		case c == '-' || isDigit(c):
			if i, err = scanNumber(data, i); err != nil {
				return 0, err
			}
		case c == 't':
			if i, err = scanLiteral(data, i, "true"); err != nil {
				return 0, err
			}
		case c == 'f':
			if i, err = scanLiteral(data, i, "false"); err != nil {
				return 0, err
			}
		case c == 'n':
			if i, err = scanLiteral(data, i, "null"); err != nil {
				return 0, err
			}
		default:
			return 0, &syntaxError{i, "invalid character " + quoteByte(c) + ", expected a value"}
		}
		// A value ended: close every container that ends here, then go on
		// with the next element of the innermost open one.
		for {
			if len(stack) == 0 {
				return i, nil
			}
			i = skipSpace(data, i)
			if i >= len(data) {
				return 0, &syntaxError{i, "unexpected end of input in an unclosed object or array"}
			}
			top := stack[len(stack)-1]
			if data[i] == ',' {
				if top == '{' {
					if i, err = scanKey(data, i+1); err != nil {
						return 0, err
					}
				} else {
					i++
				}
				break
			}
			if top == '{' && data[i] == '}' || top == '[' && data[i] == ']' {
				i++
				stack = stack[:len(stack)-1]
				continue
			}
			if top == '{' {
				return 0, &syntaxError{i, "invalid character " + quoteByte(data[i]) + ", expected ',' or '}'"}
			}
			return 0, &syntaxError{i, "invalid character " + quoteByte(data[i]) + ", expected ',' or ']'"}
		}
	}
}

// parseObject scans the object at data[i] == '{', appends its members to ms
// and returns them with the offset after the object. Only the first limit
// members are recorded (tooMany reports the rest), so an object with a
// million keys costs a scan, not a million-entry slice; the whole object is
// still checked so that the scan can continue after it.
func parseObject(data []byte, i int, ms []member, limit int) (_ []member, end int, tooMany bool, _ *syntaxError) {
	n := 0
	i = skipSpace(data, i+1)
	if i < len(data) && data[i] == '}' {
		return ms, i + 1, false, nil
	}
	for {
		if i >= len(data) || data[i] != '"' {
			return ms, 0, false, &syntaxError{i, "expected a string key"}
		}
		var m member
		var err *syntaxError
		m.keyStart = i + 1
		if i, m.keyEsc, err = scanString(data, i); err != nil {
			return ms, 0, false, err
		}
		m.keyEnd = i - 1
		i = skipSpace(data, i)
		if i >= len(data) || data[i] != ':' {
			return ms, 0, false, &syntaxError{i, "expected ':' after object key"}
		}
		i = skipSpace(data, i+1)
		m.valStart = i
		if i < len(data) && data[i] == '"' {
			i, m.valEsc, err = scanString(data, i)
		} else {
			i, err = skipValue(data, i)
		}
		if err != nil {
			return ms, 0, false, err
		}
		m.valEnd = i
		if n < limit {
			ms = append(ms, m)
		} else {
			tooMany = true
		}
		n++
		i = skipSpace(data, i)
		if i >= len(data) {
			return ms, 0, false, &syntaxError{i, "unexpected end of input in an unclosed object"}
		}
		switch data[i] {
		case ',':
			i = skipSpace(data, i+1)
		case '}':
			return ms, i + 1, tooMany, nil
		default:
			return ms, 0, false, &syntaxError{i, "invalid character " + quoteByte(data[i]) + ", expected ',' or '}'"}
		}
	}
}

// unescape appends the decoded content of a JSON string (without quotes,
// already checked by scanString) to dst. An unpaired surrogate is written as
// its 3-byte WTF-8 form, which is not valid UTF-8, so that the text checks
// reject it instead of silently turning it into U+FFFD.
func unescape(dst, raw []byte) []byte {
	for i := 0; i < len(raw); {
		c := raw[i]
		if c != '\\' {
			j := i + 1
			for j < len(raw) && raw[j] != '\\' {
				j++
			}
			dst = append(dst, raw[i:j]...)
			i = j
			continue
		}
		switch raw[i+1] {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r := hex4(raw[i+2:])
			i += 6
			if r >= 0xD800 && r < 0xDC00 && i+6 <= len(raw) && raw[i] == '\\' && raw[i+1] == 'u' {
				if lo := hex4(raw[i+2:]); lo >= 0xDC00 && lo < 0xE000 {
					dst = utf8.AppendRune(dst, 0x10000+(r-0xD800)<<10+(lo-0xDC00))
					i += 6
					continue
				}
			}
			if r >= 0xD800 && r < 0xE000 {
				dst = append(dst, byte(0xE0|r>>12), byte(0x80|(r>>6)&0x3F), byte(0x80|r&0x3F))
			} else {
				dst = utf8.AppendRune(dst, r)
			}
			continue
		default: // '"', '\\', '/'
			dst = append(dst, raw[i+1])
		}
		i += 2
	}
	return dst
}

func hex4(b []byte) rune {
	return hexVal(b[0])<<12 | hexVal(b[1])<<8 | hexVal(b[2])<<4 | hexVal(b[3])
}

func quoteByte(c byte) string {
	if c >= 0x20 && c < 0x7F {
		return "'" + string(rune(c)) + "'"
	}
	const hexDigits = "0123456789abcdef"
	return "0x" + string([]byte{hexDigits[c>>4], hexDigits[c&0xF]})
}
