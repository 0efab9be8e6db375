package web

import (
	"context"
	"encoding/json"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/api"
	"github.com/meterline/meterline/store"
)

// liveJSON is live.json as the page's script reads it.
type liveJSON struct {
	Usage  api.UsageResponse `json:"usage"`
	Totals struct {
		Requests     uint64  `json:"requests"`
		ClientErrors uint64  `json:"client_errors"`
		ServerErrors uint64  `json:"server_errors"`
		Units        float64 `json:"units"`
		ErrorRate    string  `json:"error_rate"`
	} `json:"totals"`
	Limit      *limits.Limit `json:"limit"`
	LimitError string        `json:"limit_error"`
}

// TestLiveDataEqualsAPI: live.json carries GET /v1/usage's answer for the
// page's query grouped by status_class, totals summed from it, and the
// limits view's answer for the plan, on the customer and the key page.
func TestLiveDataEqualsAPI(t *testing.T) {
	f := newFixture(t, opts{})
	b := f.browser()
	b.signIn(t, tokAcme)
	from, to := f.start.Format(time.RFC3339), f.start.Add(3*time.Hour).Format(time.RFC3339)
	for _, c := range []struct {
		base, key         string
		wantReq, want5xx  uint64
		wantUnits         float64
		wantClassRequests map[string]uint64
	}{
		{"/ui/customers/" + f.acme, "", 60, 6, 3 * (10*1.5 + 10*2), map[string]uint64{"2xx": 51, "4xx": 3, "5xx": 6}},
		{"/ui/customers/" + f.acme + "/keys/" + f.k1, f.k1, 30, 6, 3 * 10 * 1.5, map[string]uint64{"2xx": 21, "4xx": 3, "5xx": 6}},
	} {
		view := url.Values{"from": {from}, "to": {to}, "window": {"hour"}}
		a := b.get(t, c.base+"/live.json?"+view.Encode())
		if a.code != http.StatusOK || !strings.HasPrefix(a.header.Get("Content-Type"), "application/json") {
			t.Fatalf("%s/live.json: %d %q %s", c.base, a.code, a.header.Get("Content-Type"), a.body)
		}
		var live liveJSON
		if err := json.Unmarshal([]byte(a.body), &live); err != nil {
			t.Fatal(err)
		}
		q := url.Values{"customer_id": {f.acme}, "from": {from}, "to": {to}, "window": {"hour"}, "group_by": {"status_class"}}
		if c.key != "" {
			q.Set("api_key_id", c.key)
		}
		code, body := apiGet(t, f, tokAcme, q, "")
		if code != http.StatusOK {
			t.Fatalf("GET /v1/usage: %d %s", code, body)
		}
		var want api.UsageResponse
		if err := json.Unmarshal(body, &want); err != nil {
			t.Fatal(err)
		}
		gotRows, _ := json.Marshal(live.Usage.Rows)
		wantRows, _ := json.Marshal(want.Rows)
		if string(gotRows) != string(wantRows) || len(want.Rows) < 3 {
			t.Errorf("%s: live rows differ from /v1/usage's:\n%s\n--- API:\n%s", c.base, gotRows, wantRows)
		}
		byClass := map[string]uint64{}
		for _, r := range live.Usage.Rows {
			byClass[r.Group["status_class"]] += r.Requests
		}
		if fmt.Sprint(byClass) != fmt.Sprint(c.wantClassRequests) {
			t.Errorf("%s: requests by class %v, the fixture has %v", c.base, byClass, c.wantClassRequests)
		}
		if live.Totals.Requests != c.wantReq || live.Totals.ServerErrors != c.want5xx || live.Totals.Units != c.wantUnits {
			t.Errorf("%s: totals %+v, want %d requests, %d 5xx, %v units", c.base, live.Totals, c.wantReq, c.want5xx, c.wantUnits)
		}
		l, err := f.ui.d.Limits.Lookup(f.k1, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if live.Limit == nil || live.Limit.Used != l.Used || live.Limit.Included != l.Included || live.Limit.CustomerID != f.acme || l.Used == 0 {
			t.Errorf("%s: limit %+v (%s), the view %+v", c.base, live.Limit, live.LimitError, l)
		}
		// The page's live mode points its script at this endpoint, and
		// its charts at CSVs that are the API's for the same query.
		p := b.get(t, c.base+"?"+view.Encode()+"&live=1")
		if p.code != http.StatusOK {
			t.Fatalf("%s?live=1: %d %s", c.base, p.code, p.body)
		}
		for _, want := range []string{`data-live="` + c.base + `/live.json?`, `data-live-ms="2000"`, `aria-pressed="true"`, `name="live" value="1"`} {
			if !strings.Contains(p.body, want) {
				t.Errorf("%s?live=1: no %s", c.base, want)
			}
		}
		for id, group := range map[string]string{"status-csv": "status_class", "latency-csv": ""} {
			href := attr(t, p.body, id, "href")
			if strings.Contains(href, "live=") {
				t.Errorf("%s: %s %q carries the live toggle", c.base, id, href)
			}
			csv := b.get(t, href)
			aq := url.Values{"customer_id": {f.acme}, "from": {from}, "to": {to}, "window": {"hour"}}
			if c.key != "" {
				aq.Set("api_key_id", c.key)
			}
			if group != "" {
				aq.Set("group_by", group)
			}
			_, apiCSV := apiGet(t, f, tokAcme, aq, "text/csv")
			if csv.code != http.StatusOK || csv.body != string(apiCSV) || !strings.Contains(csv.body, "latency_p99_ms") {
				t.Errorf("%s: %s (%s) %d differs from the API's CSV:\n%s\n--- API:\n%s", c.base, id, href, csv.code, csv.body, apiCSV)
			}
		}
		// No inline script or style on the page (the CSP forbids them).
		if regexp.MustCompile(`(?i)\sstyle=|<script>|<script [^>]*>[^<]`).MatchString(p.body) {
			t.Errorf("%s: inline script or style in the page", c.base)
		}
	}
}

// attr returns an attribute of the element with that data-testid.
func attr(t *testing.T, body, id, name string) string {
	t.Helper()
	m := regexp.MustCompile(`<[^>]*` + name + `="([^"]*)"[^>]*data-testid="` + regexp.QuoteMeta(id) + `"`).FindStringSubmatch(body)
	if m == nil {
		m = regexp.MustCompile(`<[^>]*data-testid="` + regexp.QuoteMeta(id) + `"[^>]*` + name + `="([^"]*)"`).FindStringSubmatch(body)
	}
	if m == nil {
		t.Fatalf("no %s on data-testid=%q", name, id)
	}
	return html.UnescapeString(m[1])
}

// TestLiveScope: a customer's session gets "not found" for another
// customer's live data and page (which carries the alerts), under either
// customer; a session-less request is sent to sign in.
func TestLiveScope(t *testing.T) {
	f := newFixture(t, opts{})
	_, _, pr := portalLink(t, f, tokAdmin, `{"customer_id":"`+f.acme+`"}`)
	portal := f.browser()
	portal.get(t, exchangePath(t, pr.URL))
	token := f.browser()
	token.signIn(t, tokAcme)
	for name, b := range map[string]*browser{"portal": portal, "customer token": token} {
		for _, path := range []string{
			"/ui/customers/" + f.globex + "/live.json",
			"/ui/customers/" + f.globex + "/keys/" + f.k3 + "/live.json",
			"/ui/customers/" + f.acme + "/keys/" + f.k3 + "/live.json",
			"/ui/customers/" + f.globex + "/live.json?range=1h&live=1",
			"/ui/customers/" + f.globex + "?live=1",
			"/ui/customers/" + url.PathEscape(strings.Repeat("g", 129)) + "/live.json",
			"/ui/customers/" + f.acme + "/keys/" + url.PathEscape("<script>alert(1)</script>") + "/live.json",
			"/ui/customers/" + url.PathEscape(f.acme+"' OR 1=1 --") + "/live.json",
		} {
			a := b.get(t, path)
			if a.code != http.StatusNotFound {
				t.Errorf("%s session: GET %s answered %d, want 404", name, path, a.code)
			}
			if strings.Contains(a.body, f.k3) || strings.Contains(a.body, `"rows"`) || strings.Contains(a.body, "/v1/x") {
				t.Errorf("%s session: GET %s shows the other customer's data:\n%s", name, path, a.body)
			}
		}
		if a := b.get(t, "/ui/customers/"+f.acme+"/live.json"); a.code != http.StatusOK {
			t.Errorf("%s session: own live.json %d %s", name, a.code, a.body)
		}
	}
	anon := f.browser()
	if a := anon.get(t, "/ui/customers/"+f.acme+"/live.json"); a.code != http.StatusSeeOther || strings.Contains(a.body, `"rows"`) {
		t.Errorf("no session: live.json %d, want 303 to sign in", a.code)
	}
}

// TestLiveBadParams: malformed, repeated, unknown, oversized and
// contradictory parameters are a 400 naming the parameter, on live.json
// and on the page's live toggle; a good request afterwards still works.
func TestLiveBadParams(t *testing.T) {
	f := newFixture(t, opts{})
	b := f.browser()
	b.signIn(t, tokAdmin)
	live := "/ui/customers/" + f.acme + "/live.json"
	for _, c := range []struct{ q, names string }{
		{"range=1h&range=24h", "range"},
		{"live=1&live=1", "live"},
		{"live=yes", "live"},
		{"group_by=route", "group_by"},
		{"group_by=status_class&group_by=route", "group_by"},
		{"colour=red", "colour"},
		{"from=" + strings.Repeat("9", 10000), "from"},
		{"range=" + url.QueryEscape("<script>alert(1)</script>"), "range"},
		{"from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", "from"},
		{"window=fortnight", "window"},
	} {
		a := b.get(t, live+"?"+c.q)
		var e struct {
			Error string `json:"error"`
		}
		_ = json.Unmarshal([]byte(a.body), &e)
		if a.code != http.StatusBadRequest || !strings.Contains(e.Error, c.names) || len(a.body) > 1024 || strings.Contains(a.body, "<script>") {
			t.Errorf("live.json?%.60s: %d %.200s, want 400 naming %s", c.q, a.code, a.body, c.names)
		}
	}
	for _, q := range []string{"live=0", "live=true", "live=1&live=1"} {
		if a := b.get(t, "/ui/customers/"+f.acme+"?"+q); a.code != http.StatusBadRequest || !strings.Contains(testid(t, a.body, "error"), "live") {
			t.Errorf("page ?%s: %d, want 400 naming live", q, a.code)
		}
	}
	if a := b.get(t, live+"?range=24h&live=1&group_by=status_class"); a.code != http.StatusOK {
		t.Fatalf("good live.json after bad ones: %d %s", a.code, a.body)
	}
}

// TestPlanCardAlerts: the plan card lists the plan's alert thresholds
// (reached ones marked) and the customer's latest deliveries read from
// alert_deliveries through limits.RecentDeliveries, never another
// customer's, never the webhook URL or an answer's text.
func TestPlanCardAlerts(t *testing.T) {
	f := newFixture(t, opts{})
	db := engine.Require(t)
	const hook = "https://hooks.example.com/acme-secret-path-0123"
	reg := f.ui.d.Registry.(*limits.Registry)
	cat, err := limits.ParseCatalogue([]byte(fmt.Sprintf(`plans:
  - {id: starter, included_units: 100, hard_limit: 200, alert_thresholds: [1.5, 0.8, 1.0]}
customers:
  - {id: %s, plan: starter, alert_webhook: %q, keys: [%s, %s]}
  - {id: %s, plan: starter, keys: [%s]}
`, f.acme, hook, f.k1, f.k2, f.globex, f.k3)))
	if err != nil {
		t.Fatal(err)
	}
	reg.Swap(cat)
	f.ui.d.Deliveries = func(ctx context.Context, customer string, n int) ([]limits.Delivery, error) {
		return limits.RecentDeliveries(ctx, db, customer, n)
	}
	period := time.Date(f.clock.now().UTC().Year(), f.clock.now().UTC().Month(), 1, 0, 0, 0, 0, time.UTC)
	at := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
	row := func(cust string, th float64, attempt int, at time.Time, status int, outcome, errText string) []any {
		return []any{limits.DeliveryID(cust, period, th), cust, "starter", period, th, uint16(attempt), at, uint16(status), outcome, errText, int64(1), "test"}
	}
	cols := []string{"delivery_id", "customer_id", "plan_id", "period_start", "threshold", "attempt", "attempted_at", "status_code", "outcome", "error", "lease_generation", "sender"}
	if err := db.Insert(context.Background(), limits.AlertDeliveriesTable, cols, [][]any{
		row(f.acme, 0.8, 1, at, 0, "sending", ""),
		row(f.acme, 0.8, 1, at.Add(time.Second), 503, "retrying", "HTTP 503: "+hook),
		row(f.acme, 0.8, 2, at.Add(time.Minute), 200, "delivered", ""),
		row(f.acme, 1.0, 1, at.Add(2*time.Minute), 0, "failed", "dial tcp: connection refused"),
		row(f.globex, 0.8, 1, at.Add(3*time.Minute), 418, "failed", "globex-only"),
	}, store.InsertOptions{}); err != nil {
		t.Fatal(err)
	}
	b := f.browser()
	b.signIn(t, tokAcme)
	p := b.get(t, "/ui/customers/"+f.acme)
	if p.code != http.StatusOK {
		t.Fatalf("customer page: %d %s", p.code, p.body)
	}
	th := section(t, p.body, "alert-thresholds", "</ul>")
	// acme used 105 of 100 units: 80 % and 100 % are reached, 150 % not.
	for _, want := range []string{`<li class="crossed">80 % (80 units): reached</li>`, `<li class="crossed">100 % (100 units): reached</li>`, `<li>150 % (150 units)</li>`} {
		if !strings.Contains(th, want) {
			t.Errorf("thresholds %s: no %s", th, want)
		}
	}
	if strings.Index(th, "80 %") > strings.Index(th, "100 %") {
		t.Errorf("thresholds not in ascending order: %s", th)
	}
	if got := testid(t, p.body, "alert-sending"); !strings.Contains(got, "webhook") {
		t.Errorf("alert-sending %q", got)
	}
	ds := section(t, p.body, "alert-deliveries", "</table>")
	var got []string
	for _, m := range regexp.MustCompile(`<tr><td><time[^>]*>([^<]*)</time></td><td>([^<]*)</td><td[^>]*>([^<]*)</td><td>([^<]*)</td></tr>`).FindAllStringSubmatch(ds, -1) {
		got = append(got, strings.Join(m[1:], " | "))
	}
	ft := func(d time.Duration) string { return at.Add(d).Format("2006-01-02 15:04") }
	want := []string{
		ft(2*time.Minute) + " | 100 % | failed | no answer",
		ft(time.Minute) + " | 80 % | delivered | 200",
		ft(time.Second) + " | 80 % | retrying | 503",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("deliveries\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, secret := range []string{hook, "hooks.example.com", "acme-secret-path", "globex-only", "connection refused", "418"} {
		if strings.Contains(p.body, secret) {
			t.Errorf("the customer's page shows %q", secret)
		}
	}

	// Alerts off in the process, and a customer without a webhook.
	f.ui.d.AlertsOn = func() bool { return false }
	if got := testid(t, b.get(t, "/ui/customers/"+f.acme).body, "alert-sending"); !strings.Contains(got, "turned off") {
		t.Errorf("alerts off: %q", got)
	}
	admin := f.browser()
	admin.signIn(t, tokAdmin)
	g := admin.get(t, "/ui/customers/"+f.globex)
	if got := testid(t, g.body, "alert-sending"); !strings.Contains(got, "No alert webhook") {
		t.Errorf("globex: %q", got)
	}
	if strings.Contains(g.body, f.acme) || !strings.Contains(g.body, "418") {
		t.Errorf("globex's card shows acme's deliveries or misses its own:\n%s", section(t, g.body, "alert-deliveries", "</table>"))
	}
	// The reader failing is shown, not hidden.
	f.ui.d.Deliveries = func(context.Context, string, int) ([]limits.Delivery, error) {
		return nil, fmt.Errorf("store: unavailable")
	}
	if e := b.get(t, "/ui/customers/"+f.acme); e.code != http.StatusOK || !strings.Contains(e.body, "alert deliveries could not be read") {
		t.Errorf("failing reader: %d, no visible error", e.code)
	}
}

// section returns the page from the element with that data-testid to end.
func section(t *testing.T, body, id, end string) string {
	t.Helper()
	i := strings.Index(body, `data-testid="`+id+`"`)
	if i < 0 {
		t.Fatalf("no data-testid=%q in the page:\n%s", id, body)
	}
	j := strings.Index(body[i:], end)
	if j < 0 {
		t.Fatalf("no %s after %s", end, id)
	}
	return body[i : i+j]
}
