package api

import (
	"encoding/csv"
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"
)

// usage GETs a usage path and decodes the answer, failing unless 200.
func (f *fixture) usage(t *testing.T, token, path string) UsageResponse {
	t.Helper()
	code, body := f.get(t, token, path)
	if code != 200 {
		t.Fatalf("%s: %d %s", path, code, body)
	}
	var r UsageResponse
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// byGroup sums requests per group value of dim ("" sums all rows).
func byGroup(r UsageResponse, dims ...string) map[string]uint64 {
	out := map[string]uint64{}
	for _, row := range r.Rows {
		var k []string
		for _, d := range dims {
			k = append(k, row.Group[d])
		}
		out[strings.Join(k, "/")] += row.Requests
	}
	return out
}

func TestUsageFilters(t *testing.T) {
	f := newFixture(t)
	cases := []struct {
		name   string
		params []string
		want   uint64
	}{
		{"route", []string{"customer_id", acme, "route", "/v1/pets/{id}"}, 30},
		{"two routes", []string{"customer_id", acme, "route", "/v1/pets/{id},/v1/orders"}, 60},
		{"status class", []string{"customer_id", acme, "status_class", "5xx"}, 6},
		{"classes and route", []string{"customer_id", acme, "status_class", "4xx,5xx", "route", "/v1/pets/{id}"}, 9},
		{"method and gateway", []string{"customer_id", acme, "method", "GET", "gateway", "gw-1"}, 60},
		{"no such gateway", []string{"customer_id", acme, "gateway", "gw-2"}, 0},
		{"key and class", []string{"api_key_id", k1, "status_class", "2xx"}, 21},
		{"quotes match nothing", []string{"customer_id", acme, "route", "' OR '1'='1"}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, w := range []string{"hour", "total"} {
				r := f.usage(t, tokAdmin, f.usagePath(append(c.params, "window", w)...))
				if got := byGroup(r)[""]; got != c.want {
					t.Errorf("window=%s: %d requests, want %d", w, got, c.want)
				}
				if w == "total" && len(r.Rows) > 1 {
					t.Errorf("window=total: %d rows, want at most one", len(r.Rows))
				}
			}
		})
	}
	// Repeated parameters are the same as comma-separated ones.
	a := f.usage(t, tokAdmin, f.usagePath("customer_id", acme, "window", "total")+"&status_class=4xx&status_class=5xx")
	b := f.usage(t, tokAdmin, f.usagePath("customer_id", acme, "window", "total", "status_class", "4xx,5xx"))
	if byGroup(a)[""] != 9 || byGroup(b)[""] != 9 {
		t.Errorf("repeated %v, comma-separated %v: want 9 each", byGroup(a), byGroup(b))
	}
	// The CSV of a filtered query has the JSON's numbers.
	code, body := f.get(t, tokFinance, f.usagePath("customer_id", acme, "window", "total", "route", "/v1/orders", "group_by", "api_key_id"), "Accept", "text/csv")
	recs, err := csv.NewReader(strings.NewReader(body)).ReadAll()
	if code != 200 || err != nil || len(recs) != 2 || recs[1][1] != k2 || recs[1][2] != "30" {
		t.Fatalf("filtered CSV: %d %v %q", code, err, recs)
	}
}

func TestUsageAllCustomersAndScopes(t *testing.T) {
	f := newFixture(t)
	for _, tok := range []string{tokAdmin, tokFinance} {
		r := f.usage(t, tok, f.usagePath("window", "total", "group_by", "customer_id,api_key_id"))
		if r.CustomerID != "" || r.APIKeyID != "" {
			t.Errorf("all customers answered for %q/%q", r.CustomerID, r.APIKeyID)
		}
		got := byGroup(r, "customer_id", "api_key_id")
		for k, want := range map[string]uint64{acme + "/" + k1: 30, acme + "/" + k2: 30, globex + "/" + k3: 30} {
			if got[k] != want {
				t.Errorf("%s: %s = %d, want %d", tok, k, got[k], want)
			}
		}
		for _, row := range r.Rows {
			if !row.WindowStart.Equal(f.start) {
				t.Errorf("total row starts at %s, want %s", row.WindowStart, f.start)
			}
		}
	}
	// Whole-range distinct IPs count each address once over the range
	// (acme has two, in every hour).
	r := f.usage(t, tokAdmin, f.usagePath("customer_id", acme, "window", "total"))
	if len(r.Rows) != 1 || r.Rows[0].Requests != 60 || r.Rows[0].DistinctClientIPs != 2 || r.Rows[0].LatencyMS == nil {
		t.Fatalf("acme total: %+v", r.Rows)
	}

	// A customer token never widens to another customer: not by leaving
	// customer_id out, by grouping by customer, by a filter, or by a key.
	for _, c := range []struct {
		name   string
		params []string
	}{
		{"no customer_id", []string{"window", "total"}},
		{"group_by customer_id", []string{"window", "total", "group_by", "customer_id"}},
		{"group_by customer and key", []string{"window", "day", "group_by", "customer_id,api_key_id"}},
		{"filter on globex's route", []string{"window", "total", "route", "/v1/x", "group_by", "customer_id"}},
		{"globex's key", []string{"window", "total", "api_key_id", k3, "group_by", "customer_id"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := f.usage(t, tokAcme, f.usagePath(c.params...))
			if r.CustomerID != acme {
				t.Errorf("answered for customer %q", r.CustomerID)
			}
			for _, row := range r.Rows {
				if cu, ok := row.Group["customer_id"]; ok && cu != acme {
					t.Errorf("row of customer %q", cu)
				}
			}
			if c.name == "filter on globex's route" || c.name == "globex's key" {
				if len(r.Rows) != 0 {
					t.Errorf("rows %+v, want none", r.Rows)
				}
			} else if byGroup(r)[""] != 60 {
				t.Errorf("%d requests, want acme's 60", byGroup(r)[""])
			}
		})
	}
	for _, c := range []struct {
		token, path string
		code        int
		msg         string
	}{
		{tokAcme, f.usagePath("customer_id", globex, "group_by", "customer_id"), 403, "may not read customer"},
		{tokAcme, f.usagePath("customer_id", globex, "route", "/v1/x", "window", "total"), 403, "may not read customer"},
		{tokIngest, f.usagePath("window", "total"), 403, "lacks a scope"},
		{"", f.usagePath("window", "total"), 401, "bearer"},
	} {
		if code, body := f.get(t, c.token, c.path); code != c.code || !strings.Contains(body, c.msg) {
			t.Errorf("%s: %d %s, want %d with %q", c.path, code, body, c.code, c.msg)
		}
	}
}

// TestUsageEveryBadParameter: one 400 names every bad parameter.
func TestUsageEveryBadParameter(t *testing.T) {
	f := newFixture(t)
	var e struct{ Error string }
	check := func(t *testing.T, token, rawQuery string, names ...string) string {
		t.Helper()
		code, body := f.get(t, token, "/v1/usage?"+rawQuery)
		if code != 400 {
			t.Fatalf("%s: %d %s, want 400", rawQuery, code, body)
		}
		if err := json.Unmarshal([]byte(body), &e); err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if !strings.Contains(e.Error, `parameter "`+n+`"`) {
				t.Errorf("%s: %q does not name %s", rawQuery, e.Error, n)
			}
		}
		if len(body) > 2000 {
			t.Errorf("message of %d bytes", len(body))
		}
		return e.Error
	}
	check(t, tokAdmin, "from=yesterday&window=week&tz=Mars/Base&group_by=foo", "from", "window", "tz", "group_by")
	check(t, tokAcme, "from=yesterday&window=week&tz=Mars/Base&group_by=foo", "from", "window", "tz", "group_by")
	long := strings.Repeat("r", 10<<10)
	check(t, tokAdmin, "from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z&route="+long+"&method=GET%00&sql=1&window=day&window=hour&customer_id=a&customer_id=b",
		"route", "method", "sql", "window", "customer_id")
	// An unencoded '+' in an offset arrives as a space.
	msg := check(t, tokAdmin, "customer_id="+acme+"&from=2026-11-01T00:00:00+01:00&to=2026-11-02T00:00:00+01:00", "from", "to")
	if !strings.Contains(msg, "%2B") || !strings.Contains(msg, "2026-11-01T00:00:00%2B01:00") {
		t.Errorf("no hint to encode '+': %q", msg)
	}
	// Encoded, the same times are accepted.
	r := f.usage(t, tokAdmin, "/v1/usage?customer_id="+url.QueryEscape(acme)+"&from="+url.QueryEscape(f.start.In(time.FixedZone("", 3600)).Format(time.RFC3339))+
		"&to="+url.QueryEscape(f.start.Add(3*time.Hour).In(time.FixedZone("", 3600)).Format(time.RFC3339))+"&window=total")
	if byGroup(r)[""] != 60 {
		t.Errorf("encoded offsets: %v", byGroup(r))
	}
	// Nothing changed.
	if got := byGroup(f.usage(t, tokAdmin, f.usagePath("customer_id", acme, "window", "total")))[""]; got != 60 {
		t.Errorf("after bad requests acme has %d requests, want 60", got)
	}
}
