package web

import (
	"encoding/csv"
	"html"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestPageParamsNamedAll: the pages answer one 400 naming every bad
// parameter, and nothing else changes.
func TestPageParamsNamedAll(t *testing.T) {
	f := newFixture(t, opts{})
	b := f.browser()
	b.signIn(t, tokAdmin)
	customer, key := "/ui/customers/"+f.acme, "/ui/customers/"+f.acme+"/keys/"+f.k1
	cases := []struct {
		path, query string
		names       []string
	}{
		{customer, "from=yesterday&window=week&tz=Mars/Base&group_by=foo", []string{"from", "window", "tz", "group_by"}},
		{customer, "color=red&range=1h&range=24h&route=" + strings.Repeat("r", 2000), []string{"color", "range", "route"}},
		{customer, "route=" + strings.Repeat("r", 129) + "&api_key_id=a,b&status_class=", []string{"route", "api_key_id"}},
		{customer, "from=2026-11-01T00:00:00+01:00", []string{"from"}},
		{customer + "/usage.csv", "gateway=" + strings.Repeat("g", 1025) + "&tz=Local", []string{"gateway", "tz"}},
		{key, "api_key_id=" + f.k2, []string{"api_key_id"}},
		{"/ui/overview", "group_by=route&window=hour&range=5y", []string{"group_by", "window", "range"}},
		{customer, "method=GET%00", []string{"method"}}, // refused by the API's own validation
	}
	for _, c := range cases {
		a := b.get(t, c.path+"?"+c.query)
		if a.code != http.StatusBadRequest {
			t.Errorf("%s?%.80s: %d, want 400", c.path, c.query, a.code)
			continue
		}
		text := html.UnescapeString(a.body)
		for _, n := range c.names {
			if !strings.Contains(text, `parameter "`+n+`"`) {
				t.Errorf("%s?%.80s: the answer does not name %s:\n%.2000s", c.path, c.query, n, text)
			}
		}
		if len(a.body) > 20000 {
			t.Errorf("%s: answer of %d bytes repeats the input", c.path, len(a.body))
		}
		if strings.Contains(c.query, "+01:00") && !strings.Contains(text, "%2B") {
			t.Errorf("no hint to encode '+': %s", text)
		}
	}
	if got := testid(t, b.get(t, customer+"?range=24h").body, "total-requests"); got != "60" {
		t.Errorf("after bad requests the page shows %s requests, want 60", got)
	}
}

var csvHref = regexp.MustCompile(`href="([^"]+)" download id="download-csv"`)

// TestPageFiltersAndZoneEqualAPI: the filters and the time zone of the
// customer and key pages give GET /v1/usage's numbers for the same query,
// the CSV link carries them and equals the API's CSV, and the page's times
// are in the zone.
func TestPageFiltersAndZoneEqualAPI(t *testing.T) {
	f := newFixture(t, opts{})
	b := f.browser()
	b.signIn(t, tokAdmin)
	from, to := f.start.Format(time.RFC3339), f.start.Add(3*time.Hour).Format(time.RFC3339)
	for _, c := range []struct {
		page, key string
		view      url.Values
		want      uint64
	}{
		{"/ui/customers/" + f.acme, "", url.Values{"status_class": {"5xx"}}, 6},
		{"/ui/customers/" + f.acme, "", url.Values{"route": {"/v1/pets/{id},/v1/orders"}, "status_class": {"2xx"}}, 51},
		{"/ui/customers/" + f.acme, "", url.Values{"api_key_id": {f.k2}}, 30},
		{"/ui/customers/" + f.acme, "", url.Values{"gateway": {"gw-1"}, "method": {"GET"}, "tz": {"Asia/Kolkata"}, "window": {"day"}}, 60},
		{"/ui/customers/" + f.acme + "/keys/" + f.k1, f.k1, url.Values{"status_class": {"4xx,5xx"}, "tz": {"America/St_Johns"}}, 9},
		{"/ui/customers/" + f.acme + "/keys/" + f.k1, f.k1, url.Values{"route": {"/v1/orders"}}, 0},
	} {
		view := url.Values{"from": {from}, "to": {to}}
		for k, v := range c.view {
			view[k] = v
		}
		p := b.get(t, c.page+"?"+view.Encode())
		if p.code != http.StatusOK {
			t.Fatalf("%s?%s: %d\n%s", c.page, view.Encode(), p.code, p.body)
		}
		q := url.Values{"customer_id": {f.acme}, "from": {from}, "to": {to}, "window": {"minute"}}
		for k, v := range c.view {
			q[k] = v
		}
		if c.key != "" {
			q.Set("api_key_id", c.key)
		}
		resp := apiUsage(t, f, tokAdmin, q)
		var req uint64
		for _, r := range resp.Rows {
			req += r.Requests
		}
		if req != c.want {
			t.Fatalf("%v: the API itself answered %d requests; the fixture has %d", c.view, req, c.want)
		}
		if c.want > 0 {
			if got := testid(t, p.body, "total-requests"); got != strconv.FormatUint(req, 10) {
				t.Errorf("%s %v: page shows %s requests, the API %d", c.page, c.view, got, req)
			}
		} else if !strings.Contains(p.body, `data-testid="empty"`) {
			t.Errorf("%s %v: no empty state", c.page, c.view)
		}
		// The CSV link carries the filters and the zone; its file is the
		// API's CSV byte for byte.
		m := csvHref.FindStringSubmatch(p.body)
		if m == nil {
			t.Fatalf("no CSV link in %s", c.page)
		}
		link, _ := url.Parse(html.UnescapeString(m[1]))
		for k, v := range c.view {
			if link.Query().Get(k) != v[0] {
				t.Errorf("CSV link %s lacks %s=%s", link, k, v[0])
			}
		}
		got := b.get(t, link.String())
		_, apiCSV := apiGet(t, f, tokAdmin, q, "text/csv")
		if got.code != http.StatusOK || got.body != string(apiCSV) {
			t.Errorf("%s %v: CSV %d differs from the API's:\n%s\n--- API:\n%s", c.page, c.view, got.code, got.body, apiCSV)
		}
		if tz := c.view.Get("tz"); tz != "" && c.want > 0 {
			loc, _ := time.LoadLocation(tz)
			recs, err := csv.NewReader(strings.NewReader(got.body)).ReadAll()
			if err != nil || len(recs) < 2 {
				t.Fatalf("CSV: %v %q", err, got.body)
			}
			ws, err := time.Parse(time.RFC3339, recs[1][0])
			if _, off := ws.Zone(); err != nil || off != offsetAt(loc, ws) {
				t.Errorf("CSV window %s is not in %s", recs[1][0], tz)
			}
			// The page states its range in the zone.
			if want := f.start.In(loc).Format(time.RFC3339); !strings.Contains(html.UnescapeString(p.body), want) {
				t.Errorf("%s: the page does not show from as %s: %s", c.page, want, testid(t, p.body, "freshness"))
			}
			if !strings.Contains(p.body, `value="`+tz+`"`) {
				t.Errorf("%s: the zone field does not keep %s", c.page, tz)
			}
		}
	}
}

func offsetAt(loc *time.Location, t time.Time) int {
	_, off := t.In(loc).Zone()
	return off
}

// TestCustomerSessionCannotWiden: a customer session's filters and
// grouping stay inside its customer.
func TestCustomerSessionCannotWiden(t *testing.T) {
	f := newFixture(t, opts{})
	b := f.browser()
	b.signIn(t, tokAcme)
	own := "/ui/customers/" + f.acme
	for _, q := range []string{"route=/v1/x", "group_by=customer_id", "group_by=api_key_id&gateway=gw-1"} {
		a := b.get(t, own+"?"+q)
		if a.code != http.StatusOK {
			t.Fatalf("%s?%s: %d", own, q, a.code)
		}
		if strings.Contains(a.body, f.globex) || strings.Contains(a.body, f.k3+"</td>") {
			t.Errorf("?%s shows globex's data", q)
		}
		csvA := b.get(t, own+"/usage.csv?"+q)
		if csvA.code != http.StatusOK || strings.Contains(csvA.body, f.globex) || strings.Contains(csvA.body, f.k3) {
			t.Errorf("CSV ?%s: %d %s", q, csvA.code, csvA.body)
		}
	}
	for _, p := range []string{"/ui/customers/" + f.globex + "?route=/v1/x", "/ui/customers/" + f.globex + "/usage.csv?group_by=customer_id",
		"/ui/customers/" + f.globex + "/keys/" + f.k3 + "?status_class=2xx", "/ui/overview?range=24h",
		own + "?api_key_id=" + f.k3, own + "/usage.csv?api_key_id=" + f.k3} {
		if a := b.get(t, p); a.code != http.StatusNotFound || strings.Contains(a.body, "/v1/x") {
			t.Errorf("%s: %d, want 404", p, a.code)
		}
	}
}
