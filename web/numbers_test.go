package web

import (
	"encoding/json"
	"fmt"
	"html"
	"io"
	"math"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meterline/meterline/api"
)

// apiGet calls GET /v1/usage with a bearer token.
func apiGet(t *testing.T, f *fixture, token string, q url.Values, accept string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, f.srv.URL+"/v1/usage?"+q.Encode(), nil)
	req.Header.Set("Authorization", "Bearer "+token)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// TestCustomerPageEqualsAPI: the numbers on the customer and key pages, and
// their CSV, are GET /v1/usage's for the same query.
func TestCustomerPageEqualsAPI(t *testing.T) {
	f := newFixture(t, opts{})
	b := f.browser()
	b.signIn(t, tokAdmin)
	from, to := f.start.Format(time.RFC3339), f.start.Add(3*time.Hour).Format(time.RFC3339)
	for _, c := range []struct {
		page, key        string
		wantReq, wantErr uint64
	}{
		{"/ui/customers/" + f.acme, "", 60, 9},
		{"/ui/customers/" + f.acme + "/keys/" + f.k1, f.k1, 30, 9},
	} {
		view := url.Values{"from": {from}, "to": {to}}
		p := b.get(t, c.page+"?"+view.Encode())
		if p.code != http.StatusOK {
			t.Fatalf("%s: %d\n%s", c.page, p.code, p.body)
		}
		q := url.Values{"customer_id": {f.acme}, "from": {from}, "to": {to}, "window": {"minute"}}
		if c.key != "" {
			q.Set("api_key_id", c.key)
		}
		code, body := apiGet(t, f, tokAdmin, q, "")
		if code != http.StatusOK {
			t.Fatalf("GET /v1/usage: %d %s", code, body)
		}
		var resp api.UsageResponse
		if err := json.Unmarshal(body, &resp); err != nil {
			t.Fatal(err)
		}
		var req, cerr, serr uint64
		var units float64
		for _, r := range resp.Rows {
			req, cerr, serr = req+r.Requests, cerr+r.ClientErrors, serr+r.ServerErrors
			u, _ := r.Units.Float64()
			units += u
		}
		if req != c.wantReq || cerr+serr != c.wantErr {
			t.Fatalf("the API itself answered %d requests, %d errors; the fixture has %d, %d", req, cerr+serr, c.wantReq, c.wantErr)
		}
		for id, want := range map[string]string{
			"total-requests":      strconv.FormatUint(req, 10),
			"total-client-errors": strconv.FormatUint(cerr, 10),
			"total-server-errors": strconv.FormatUint(serr, 10),
			"total-units":         strconv.FormatFloat(units, 'f', -1, 64),
		} {
			if got := testid(t, p.body, id); got != want {
				t.Errorf("%s: %s shows %q, the API %q", c.page, id, got, want)
			}
		}
		if want := `href="` + c.page + `?range=7d"`; !strings.Contains(p.body, want) {
			t.Errorf("%s: no preset link %s", c.page, want)
		}
		// The plan is the limits view's, as GET /v1/limits answers it.
		l, err := f.ui.d.Limits.Lookup(f.k1, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if got := testid(t, p.body, "plan-used"); got != strconv.FormatFloat(l.Used, 'f', -1, 64) || l.Used == 0 {
			t.Errorf("%s: plan-used %q, the view %v", c.page, got, l.Used)
		}
		if got := testid(t, p.body, "plan-reset"); got != l.ResetAt.UTC().Format(time.RFC3339) {
			t.Errorf("%s: plan-reset %q, the view %s", c.page, got, l.ResetAt)
		}
		// Each table under the chart is the API's answer grouped by its
		// one dimension over the range (the page folds one grouped query).
		dims := []string{"route", "method", "status_class"}
		if c.key == "" {
			dims = append(dims, "api_key_id")
		}
		for _, dim := range dims {
			g := url.Values{}
			for k, v := range q {
				g[k] = v
			}
			g.Set("window", "total")
			g.Set("group_by", dim)
			resp := apiUsage(t, f, tokAdmin, g)
			want := map[string][2]uint64{}
			for _, row := range resp.Rows {
				want[row.Group[dim]] = [2]uint64{row.Requests, row.ClientErrors + row.ServerErrors}
			}
			rows := tableRows(t, p.body, "table-"+dim)
			if len(rows) != len(resp.Rows) || len(rows) == 0 {
				t.Errorf("%s: table %s has %d rows, the API %d groups", c.page, dim, len(rows), len(resp.Rows))
			}
			for _, tr := range rows {
				n, _ := strconv.ParseUint(tr[1], 10, 64)
				var ce, se uint64
				fmt.Sscanf(tr[2], "%d / %d", &ce, &se)
				if w := want[tr[0]]; n != w[0] || ce+se != w[1] {
					t.Errorf("%s: table %s row %q shows %d requests, %d errors; the API %v", c.page, dim, tr[0], n, ce+se, w)
				}
			}
		}
		// The chart's CSV is the API's CSV, byte for byte.
		csv := b.get(t, c.page+"/usage.csv?"+view.Encode())
		_, apiCSV := apiGet(t, f, tokAdmin, q, "text/csv")
		if csv.code != http.StatusOK || csv.body != string(apiCSV) || len(apiCSV) < 100 {
			t.Errorf("%s: CSV %d differs from the API's:\n%s\n--- API:\n%s", c.page, csv.code, csv.body, apiCSV)
		}
	}
}

func TestBadInput(t *testing.T) {
	f := newFixture(t, opts{})
	b := f.browser()
	b.signIn(t, tokAdmin)
	page := "/ui/customers/" + f.acme
	for _, q := range []string{"range=5y", "from=yesterday", "range=24h&from=2026-01-01T00:00:00Z", "group_by=ip", "window=week",
		"color=red", "range=1h&range=24h", "from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z"} {
		a := b.get(t, page+"?"+q)
		if a.code != http.StatusBadRequest || testid(t, a.body, "error") == "" {
			t.Errorf("?%s: %d, want 400 with an error", q, a.code)
		}
	}
	big := url.Values{"token": {string(make([]byte, maxFormBytes+1))}, "csrf": {"x"}}
	b2 := f.browser()
	b2.get(t, "/ui/signin")
	if a := b2.do(t, http.MethodPost, "/ui/signin", big); a.code != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized sign-in form: %d, want 413", a.code)
	}
	if a := b2.do(t, http.MethodPost, "/ui/signin", url.Values{"token": {tokAdmin}, "csrf": {"x"}, "admin": {"1"}}); a.code != http.StatusBadRequest {
		t.Errorf("unknown form field: %d, want 400", a.code)
	}
}

// TestOverviewEqualsAPI: the overview's totals, latency and top tables
// are GET /v1/usage's all-customer answers (window=total) for the range
// the page states.
func TestOverviewEqualsAPI(t *testing.T) {
	f := newFixture(t, opts{})
	b := f.browser()
	b.signIn(t, tokAdmin)
	p := b.get(t, "/ui/overview?range=24h")
	if p.code != http.StatusOK {
		t.Fatalf("overview: %d\n%s", p.code, p.body)
	}
	to := f.clock.now().UTC().Truncate(time.Minute).Add(time.Minute)
	q := url.Values{"from": {to.Add(-24 * time.Hour).Format(time.RFC3339)}, "to": {to.Format(time.RFC3339)}, "window": {"total"}}
	all := apiUsage(t, f, tokAdmin, q)
	if len(all.Rows) != 1 || all.Rows[0].Requests < 90 {
		t.Fatalf("the API answered %+v; the fixture alone has 90 requests", all.Rows)
	}
	r := all.Rows[0]
	units, _ := r.Units.Float64()
	for id, want := range map[string]string{
		"overview-total-requests": strconv.FormatUint(r.Requests, 10),
		"overview-client-errors":  strconv.FormatUint(r.ClientErrors, 10),
		"overview-server-errors":  strconv.FormatUint(r.ServerErrors, 10),
		"overview-total-units":    strconv.FormatFloat(units, 'f', -1, 64),
		"overview-error-rate":     strconv.FormatFloat(100*float64(r.ClientErrors+r.ServerErrors)/float64(r.Requests), 'f', 2, 64),
		"overview-p50":            strconv.FormatFloat(r.LatencyMS.P50, 'f', 1, 64),
		"overview-p95":            strconv.FormatFloat(r.LatencyMS.P95, 'f', 1, 64),
		"overview-p99":            strconv.FormatFloat(r.LatencyMS.P99, 'f', 1, 64),
		"overview-ips":            strconv.FormatUint(r.DistinctClientIPs, 10),
	} {
		if got := testid(t, p.body, id); got != want {
			t.Errorf("overview %s %q, the API %q", id, got, want)
		}
	}
	// The top tables: the API's grouped rows, most requests first.
	for _, c := range []struct{ table, groupBy, dim string }{
		{"top-customers", "customer_id", "customer_id"}, {"top-keys", "customer_id,api_key_id", "api_key_id"}, {"top-routes", "route", "route"},
	} {
		g := url.Values{}
		for k, v := range q {
			g[k] = v
		}
		g.Set("group_by", c.groupBy)
		resp := apiUsage(t, f, tokAdmin, g)
		want := map[string]uint64{}
		for _, row := range resp.Rows {
			want[row.Group[c.dim]] += row.Requests
		}
		rows := tableRows(t, p.body, c.table)
		if len(rows) != min(len(resp.Rows), 10) {
			t.Errorf("%s: %d rows, the API %d groups", c.table, len(rows), len(resp.Rows))
		}
		col := 1
		if c.table == "top-keys" {
			col = 2
		}
		if c.table == "top-keys" {
			// A key row links to its key page when the key is this
			// fixture's (the shared store also holds other tests' keys,
			// which this fixture's catalogue does not know).
			for _, tr := range rows {
				if len(tr) > 1 && tr[1] == f.acme {
					if href := `href="/ui/customers/` + url.PathEscape(tr[1]) + `/keys/` + url.PathEscape(tr[0]) + `"`; !strings.Contains(p.body, href) {
						t.Errorf("the top key %s of %s does not link to its key page (%s)", tr[0], tr[1], href)
					}
				}
			}
		}
		var prev uint64 = math.MaxUint64
		for _, tr := range rows {
			if tr[0] == "(no customer)" || tr[0] == "(no route)" {
				tr[0] = ""
			}
			n, _ := strconv.ParseUint(tr[col], 10, 64)
			if n != want[tr[0]] || n > prev {
				t.Errorf("%s: %s shows %d requests (after %d), the API %d", c.table, tr[0], n, prev, want[tr[0]])
			}
			prev = n
		}
	}
	// Beyond 24 hours the overview counts no distinct networks over every
	// customer (an exact union that grows with the range) and says where
	// the figure is.
	week := b.get(t, "/ui/overview?range=7d")
	if week.code != http.StatusOK || strings.Contains(week.body, `data-testid="overview-ips"`) || !strings.Contains(week.body, `data-testid="overview-ips-note"`) {
		t.Errorf("overview over 7 days: %d; want no distinct-network figure and the note", week.code)
	}
	// Customer sessions get no overview.
	c := f.browser()
	c.signIn(t, tokAcme)
	if a := c.get(t, "/ui/overview?range=24h"); a.code != http.StatusNotFound || strings.Contains(a.body, f.globex) {
		t.Errorf("customer session: overview %d", a.code)
	}
}

// apiUsage calls GET /v1/usage and decodes a 200 answer.
func apiUsage(t *testing.T, f *fixture, token string, q url.Values) api.UsageResponse {
	t.Helper()
	code, body := apiGet(t, f, token, q, "")
	var resp api.UsageResponse
	if err := json.Unmarshal(body, &resp); code != http.StatusOK || err != nil {
		t.Fatalf("GET /v1/usage?%s: %d %s", q.Encode(), code, body)
	}
	return resp
}

var (
	rowRE  = regexp.MustCompile(`(?s)<tr>(.*?)</tr>`)
	cellRE = regexp.MustCompile(`(?s)<td[^>]*>(.*?)</td>`)
	tagRE  = regexp.MustCompile(`<[^>]+>`)
)

// tableRows returns the text of the body cells of the table with that
// data-testid.
func tableRows(t *testing.T, body, id string) [][]string {
	t.Helper()
	i := strings.Index(body, `data-testid="`+id+`"`)
	if i < 0 {
		t.Fatalf("no table %s in the page", id)
	}
	tb := body[i:]
	tb = tb[strings.Index(tb, "<tbody>"):strings.Index(tb, "</tbody>")]
	var out [][]string
	for _, m := range rowRE.FindAllStringSubmatch(tb, -1) {
		var cells []string
		for _, c := range cellRE.FindAllStringSubmatch(m[1], -1) {
			cells = append(cells, html.UnescapeString(strings.TrimSpace(tagRE.ReplaceAllString(c[1], ""))))
		}
		out = append(out, cells)
	}
	return out
}
