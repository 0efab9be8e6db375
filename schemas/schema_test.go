package schemas

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/big"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// The tests in this file keep event.schema.json, the field table of the
// validator and the Event struct from drifting apart.

func loadSchema(t *testing.T) map[string]any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(EventSchema()))
	d.UseNumber()
	var s map[string]any
	if err := d.Decode(&s); err != nil {
		t.Fatalf("event.schema.json: %v", err)
	}
	return s
}

func TestSchemaMatchesFieldTable(t *testing.T) {
	s := loadSchema(t)
	if s["$schema"] != "https://json-schema.org/draft/2020-12/schema" || s["additionalProperties"] != false || s["type"] != "object" {
		t.Errorf("schema header: $schema %v, additionalProperties %v, type %v", s["$schema"], s["additionalProperties"], s["type"])
	}
	props := s["properties"].(map[string]any)

	var tableNames, tableRequired []string
	for _, f := range v1Fields {
		tableNames = append(tableNames, f.name)
		if f.required {
			tableRequired = append(tableRequired, f.name)
		}
	}
	var schemaNames []string
	for name := range props {
		schemaNames = append(schemaNames, name)
	}
	var schemaRequired []string
	for _, r := range s["required"].([]any) {
		schemaRequired = append(schemaRequired, r.(string))
	}
	var tagNames []string
	rt := reflect.TypeFor[Event]()
	for i := range rt.NumField() {
		name, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
		if name == "-" {
			continue // Absent: not a member of the wire format
		}
		tagNames = append(tagNames, name)
	}
	sorted := func(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }
	if !slices.Equal(sorted(schemaNames), sorted(tableNames)) {
		t.Errorf("schema properties %v, validator fields %v", sorted(schemaNames), sorted(tableNames))
	}
	if !slices.Equal(tagNames, tableNames) {
		t.Errorf("Event json tags %v, validator fields %v (same order expected)", tagNames, tableNames)
	}
	if !slices.Equal(sorted(schemaRequired), sorted(tableRequired)) {
		t.Errorf("schema required %v, validator required %v", schemaRequired, tableRequired)
	}
	for i, f := range v1Fields {
		if got, ok := lookupField([]byte(f.name)); !ok || int(got) != i {
			t.Errorf("lookupField(%q) = %v, %v", f.name, got, ok)
		}
		p, _ := props[f.name].(map[string]any)
		if p == nil {
			continue
		}
		if d, _ := p["description"].(string); d == "" {
			t.Errorf("%s: no description", f.name)
		}
		want := any(f.jsonType)
		if !f.required {
			// null means absent for optional fields.
			want = []any{f.jsonType, "null"}
		}
		if !reflect.DeepEqual(p["type"], want) {
			t.Errorf("%s: schema type %v, validator %v", f.name, p["type"], want)
		}
	}
}

func TestSchemaLimitsMatchConstants(t *testing.T) {
	props := loadSchema(t)["properties"].(map[string]any)
	num := func(v float64) string { return big.NewFloat(v).Text('f', -1) }
	tests := []struct {
		field, keyword string
		want           string
	}{
		{"id", "maxLength", num(maxIDBytes)},
		{"api_key_id", "maxLength", num(maxAPIKeyIDBytes)},
		{"customer_id", "maxLength", num(maxNameBytes)},
		{"gateway", "maxLength", num(maxNameBytes)},
		{"route", "maxLength", num(maxRouteBytes)},
		{"status", "minimum", "100"},
		{"status", "maximum", "599"},
		{"latency_ms", "maximum", num(maxLatencyMS)},
		{"request_bytes", "maximum", num(maxByteCount)},
		{"response_bytes", "maximum", num(maxByteCount)},
		{"units", "exclusiveMaximum", num(maxUnits)},
		{"units", "default", "1"},
		{"properties", "maxProperties", num(defaultMaxProperties)},
		{"method", "pattern", fmt.Sprintf("^[A-Za-z]{1,%d}$", maxMethodLen)},
	}
	for _, tt := range tests {
		got := fmt.Sprint(props[tt.field].(map[string]any)[tt.keyword])
		if got != tt.want {
			t.Errorf("%s.%s = %s, validator uses %s", tt.field, tt.keyword, got, tt.want)
		}
	}
	p := props["properties"].(map[string]any)
	if got := p["propertyNames"].(map[string]any)["pattern"]; got != fmt.Sprintf("^[A-Za-z0-9_.:-]{1,%d}$", maxPropertyKeyBytes) {
		t.Errorf("propertyNames pattern %v", got)
	}
	if got := p["additionalProperties"].(map[string]any)["maxLength"]; fmt.Sprint(got) != num(maxPropertyValueBytes) {
		t.Errorf("property value maxLength %v", got)
	}
}

// TestSchemaAgreesWithValidator runs one corpus through the Go decoder and
// through a small evaluator of the JSON Schema keywords the schema uses, and
// expects the same verdict. The corpus avoids the documented differences
// (byte lengths, the time window, user_agent truncation, IP syntax, invalid
// UTF-8, duplicate keys), which the schema cannot express.
func TestSchemaAgreesWithValidator(t *testing.T) {
	schema := loadSchema(t)
	long := func(n int) string { return `"` + strings.Repeat("a", n) + `"` }
	values := map[string][]string{
		"id":             {`"a"`, long(128), long(129), `""`, `"a\u0001"`, `"a\u0085"`, `"a\u007f"`, `1`, `null`, omit, `"é"`},
		"time":           {`"2026-11-23T15:00:00Z"`, `"2026-11-23t15:00:00.123456789z"`, `"2026-11-23T16:00:00+01:00"`, `"2026-11-23 15:00:00Z"`, `"2026-11-23T15:00:00"`, `"2026-11-23T15:00:00.Z"`, `1`, `null`, omit},
		"api_key_id":     {`"k"`, long(128), long(129), `""`, `"\n"`, `[]`, omit},
		"customer_id":    {`"c"`, `""`, long(128), long(129), `"\t"`, `null`, `true`, omit},
		"gateway":        {`"g"`, long(129), `null`, `{}`},
		"method":         {`"GET"`, `"get"`, `"PROPFIND"`, long(16), long(17), `""`, `"G3T"`, `null`, `1`},
		"route":          {`"/a"`, long(1024), long(1025), `"/\u0000"`, `null`},
		"status":         {`200`, `100`, `599`, `99`, `600`, `200.0`, `2e2`, `200.5`, `"200"`, `true`, `null`, omit},
		"latency_ms":     {`0`, `12.5`, `86400000`, `86400000.5`, `-1`, `"1"`, `null`},
		"request_bytes":  {`0`, `9007199254740992`, `-1`, `1.5`, `1e3`, `"1"`, `null`},
		"response_bytes": {`5`, `1e20`, `null`},
		"units":          {`0`, `1.5`, `999999999999`, `1e12`, `-0.1`, `"1"`, `null`, omit},
		"properties": {`{}`, `null`, `{"a":"b"}`, `{"a b":"c"}`, `{"":"c"}`, `{` + long(64) + `:"x"}`, `{` + long(65) + `:"x"}`,
			`{"k":1}`, `{"k":null}`, `{"k":` + long(256) + `}`, `{"k":` + long(257) + `}`, `{"k":"\u0007"}`, `[]`, `"x"`},
		"client_ip":  {`null`, `5`},
		"user_agent": {`"x"`, `null`, `5`},
		"foo":        {`1`, `null`, `"x"`},
	}
	n := 0
	for field, vs := range values {
		for _, v := range vs {
			body := evJSON(map[string]string{field: v})
			_, err := Options{}.DecodeEvent([]byte(body), testRef)
			var doc any
			d := json.NewDecoder(strings.NewReader(body))
			d.UseNumber()
			if err := d.Decode(&doc); err != nil {
				t.Fatalf("%s: %v", body, err)
			}
			problem := evalSchema(schema, doc, "")
			if (err == nil) != (problem == "") {
				t.Errorf("%s = %s: validator says %v, schema says %q", field, v, err, problem)
			}
			n++
		}
	}
	if n < 100 {
		t.Fatalf("only %d cases", n)
	}
}

// evalSchema is a minimal JSON Schema evaluator for the keywords used by
// event.schema.json; "format" is an annotation in draft 2020-12 and ignored.
func evalSchema(s map[string]any, v any, path string) string {
	if ty, ok := s["type"]; ok {
		types, _ := ty.([]any)
		if types == nil {
			types = []any{ty}
		}
		if !slices.ContainsFunc(types, func(t any) bool { return hasType(v, t.(string)) }) {
			return path + ": wrong type"
		}
	}
	if alts, ok := s["anyOf"].([]any); ok {
		okOne := false
		for _, sub := range alts {
			if evalSchema(sub.(map[string]any), v, path) == "" {
				okOne = true
			}
		}
		if !okOne {
			return path + ": anyOf"
		}
	}
	switch v := v.(type) {
	case string:
		n := utf8.RuneCountInString(v)
		if m, ok := s["minLength"].(json.Number); ok && n < atoi(m) {
			return path + ": minLength"
		}
		if m, ok := s["maxLength"].(json.Number); ok && n > atoi(m) {
			return path + ": maxLength"
		}
		if p, ok := s["pattern"].(string); ok && !ecmaRegexp(p).MatchString(v) {
			return path + ": pattern"
		}
	case json.Number:
		x := rat(v)
		if m, ok := s["minimum"].(json.Number); ok && x.Cmp(rat(m)) < 0 {
			return path + ": minimum"
		}
		if m, ok := s["maximum"].(json.Number); ok && x.Cmp(rat(m)) > 0 {
			return path + ": maximum"
		}
		if m, ok := s["exclusiveMaximum"].(json.Number); ok && x.Cmp(rat(m)) >= 0 {
			return path + ": exclusiveMaximum"
		}
	case map[string]any:
		for _, r := range asSlice(s["required"]) {
			if _, ok := v[r.(string)]; !ok {
				return path + "." + r.(string) + ": required"
			}
		}
		if m, ok := s["maxProperties"].(json.Number); ok && len(v) > atoi(m) {
			return path + ": maxProperties"
		}
		props, _ := s["properties"].(map[string]any)
		for k, x := range v {
			if pn, ok := s["propertyNames"].(map[string]any); ok {
				if p := evalSchema(pn, k, path+"."+k); p != "" {
					return p
				}
			}
			if sub, ok := props[k]; ok {
				if p := evalSchema(sub.(map[string]any), x, path+"."+k); p != "" {
					return p
				}
				continue
			}
			switch ap := s["additionalProperties"].(type) {
			case bool:
				if !ap {
					return path + "." + k + ": additional property"
				}
			case map[string]any:
				if p := evalSchema(ap, x, path+"."+k); p != "" {
					return p
				}
			}
		}
	}
	return ""
}

func hasType(v any, t string) bool {
	switch v := v.(type) {
	case nil:
		return t == "null"
	case bool:
		return t == "boolean"
	case string:
		return t == "string"
	case map[string]any:
		return t == "object"
	case []any:
		return t == "array"
	case json.Number:
		return t == "number" || t == "integer" && rat(v).IsInt()
	}
	return false
}

func rat(n json.Number) *big.Rat {
	r, ok := new(big.Rat).SetString(string(n))
	if !ok {
		panic("bad number " + string(n))
	}
	return r
}

func atoi(n json.Number) int {
	i, err := n.Int64()
	if err != nil {
		panic(err)
	}
	return int(i)
}

func asSlice(v any) []any { s, _ := v.([]any); return s }

// ecmaRegexp compiles an ECMA-262 pattern of the kind the schema uses: Go's
// syntax differs only in how it spells \uXXXX.
func ecmaRegexp(p string) *regexp.Regexp {
	return regexp.MustCompile(regexp.MustCompile(`\\u([0-9A-Fa-f]{4})`).ReplaceAllString(p, `\x{$1}`))
}
