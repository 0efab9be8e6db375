package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/meterline/meterline/internal/testenv"
)

// totalAnswer is a window=total answer of GET /v1/usage.
type totalAnswer struct {
	Rows []struct {
		Group        map[string]string `json:"group"`
		Requests     uint64            `json:"requests"`
		ClientErrors uint64            `json:"client_errors"`
		ServerErrors uint64            `json:"server_errors"`
		Units        json.Number       `json:"units"`
		Latency      *struct {
			P50, P95, P99 float64
		} `json:"latency_ms"`
		IPs uint64 `json:"distinct_client_ips"`
	} `json:"rows"`
}

// tableText reads the body cells of the table with that data-testid.
func tableText(t *testing.T, tab *testenv.Tab, id string) [][]string {
	t.Helper()
	rows, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[[][]string](`Array.from(document.querySelectorAll('[data-testid="`+id+`"] tbody tr')).map(
		tr => Array.from(tr.querySelectorAll('td')).map(td => td.innerText.trim()))`))
	if err != nil {
		t.Fatalf("table %s: %v", id, err)
	}
	return rows
}

// postAnalyticsEvents adds initech's traffic to the stack: 20 requests on
// /v1/search through gateway edge-eu with latencies 5, 10, ... 100 ms and
// 3 of them 429s, and 2 on /v1/orders; it waits until the API counts them.
func postAnalyticsEvents(t *testing.T, s *uiStack) {
	t.Helper()
	at := time.Now().Add(-90 * time.Second).UTC()
	var evs []map[string]any
	for i := range 22 {
		e := event(fmt.Sprintf("ui-i-%d", i), "key_initech")
		e["customer_id"], e["method"], e["gateway"], e["units"] = "initech", "POST", "edge-eu", 0.5
		e["route"], e["latency_ms"], e["status"] = "/v1/search", float64(5*(i+1)), 200
		if i%7 == 3 {
			e["status"] = 429
		}
		if i >= 20 {
			e["route"], e["gateway"] = "/v1/orders", "edge-us"
		}
		e["client_ip"] = fmt.Sprintf("203.0.113.%d", i%4)
		e["time"] = at.Format(time.RFC3339Nano)
		evs = append(evs, e)
	}
	postEvents(t, s.addr, evs)
	testenv.Eventually(t, 90*time.Second, func() error {
		u, err := s.usage("customer_id=initech&window=total&from=" + url.QueryEscape(at.Add(-time.Hour).Format(time.RFC3339)))
		if err != nil {
			return err
		}
		if u.requests() != 22 {
			return fmt.Errorf("initech: %d requests, want 22", u.requests())
		}
		return nil
	})
}

// rangeOf reads the "From X to Y" line of a page.
func rangeOf(t *testing.T, tab *testenv.Tab, id string) (from, to string) {
	t.Helper()
	line := testid(t, tab, id)
	if _, err := fmt.Sscanf(line, "From %s to %s", &from, &to); err != nil {
		t.Fatalf("range line %q: %v", line, err)
	}
	return from, strings.TrimSuffix(to, ",")
}

func latencyText(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }

// TestUIAnalyticsOverviewEqualsAPI: the overview's totals, error rate,
// latency percentiles and top customers, keys and routes are GET
// /v1/usage's all-customer answers (window=total) for the range it states;
// the pipeline health reads the process's own metrics.
func TestUIAnalyticsOverviewEqualsAPI(t *testing.T) {
	s := startUIStack(t, "")
	postAnalyticsEvents(t, s)
	tab := testenv.Browser(t)
	signIn(t, tab, s.base, e2eAdminToken)
	open(t, tab, s.base, "/ui/overview?range=24h", "main")
	from, to := rangeOf(t, tab, "overview-range")
	q := "from=" + url.QueryEscape(from) + "&to=" + url.QueryEscape(to) + "&window=total"

	var all totalAnswer
	if err := getJSON(s.addr, "/v1/usage?"+q, &all); err != nil {
		t.Fatal(err)
	}
	if len(all.Rows) != 1 || all.Rows[0].Requests != 11+5+22 || all.Rows[0].Latency == nil {
		t.Fatalf("the API's all-customer total: %+v; posted 38 requests", all.Rows)
	}
	r := all.Rows[0]
	for id, want := range map[string]string{
		"overview-total-requests": strconv.FormatUint(r.Requests, 10),
		"overview-total-units":    r.Units.String(),
		"overview-client-errors":  strconv.FormatUint(r.ClientErrors, 10),
		"overview-server-errors":  strconv.FormatUint(r.ServerErrors, 10),
		"overview-error-rate":     strconv.FormatFloat(100*float64(r.ClientErrors+r.ServerErrors)/float64(r.Requests), 'f', 2, 64),
		"overview-p50":            latencyText(r.Latency.P50),
		"overview-p95":            latencyText(r.Latency.P95),
		"overview-p99":            latencyText(r.Latency.P99),
		"overview-ips":            strconv.FormatUint(r.IPs, 10),
	} {
		if got := testid(t, tab, id); got != want {
			t.Errorf("overview %s shows %q, the API %q", id, got, want)
		}
	}
	// 5 + 3 of 38 requests were errors (globex's 404s, initech's 429s) and
	// 2 were acme's 500s.
	if r.ClientErrors != 8 || r.ServerErrors != 2 {
		t.Errorf("the API counts %d 4xx and %d 5xx, posted 8 and 2", r.ClientErrors, r.ServerErrors)
	}
	for _, c := range []struct {
		table, groupBy, dim string
		col                 int
		first               string
	}{
		{"top-customers", "customer_id", "customer_id", 1, "initech"},
		{"top-keys", "customer_id,api_key_id", "api_key_id", 2, "key_initech"},
		{"top-routes", "route", "route", 1, "/v1/search"},
	} {
		var g totalAnswer
		if err := getJSON(s.addr, "/v1/usage?"+q+"&group_by="+c.groupBy, &g); err != nil {
			t.Fatal(err)
		}
		want := map[string]uint64{}
		for _, row := range g.Rows {
			want[row.Group[c.dim]] = row.Requests
		}
		rows := tableText(t, tab, c.table)
		if len(rows) != len(g.Rows) || len(rows) == 0 || rows[0][0] != c.first {
			t.Fatalf("%s: rows %v, the API %d groups, want %s first", c.table, rows, len(g.Rows), c.first)
		}
		for _, tr := range rows {
			if n, _ := strconv.ParseUint(tr[c.col], 10, 64); n != want[tr[0]] {
				t.Errorf("%s: %s shows %d requests, the API %d", c.table, tr[0], n, want[tr[0]])
			}
		}
	}
	// The top tables link to the customer and key pages.
	if err := chromedp.Do(tab.Ctx, chromedp.Click(chromedp.CSS(`[data-testid="top-keys"] a[href="/ui/customers/initech/keys/key_initech"]`)),
		chromedp.WaitVisible(chromedp.CSS(`[data-testid="total-requests"]`))); err != nil {
		t.Fatalf("following the top key's link: %v", err)
	}
	if got := testid(t, tab, "total-requests"); got != "22" {
		t.Errorf("the key page of key_initech shows %s requests, want 22", got)
	}

	// Pipeline health: the collector's own count, labelled.
	open(t, tab, s.base, "/ui/overview?range=24h", "main")
	text := pageText(t, tab)
	for _, label := range []string{"Events accepted", "Events rejected", "Kafka consumer lag (messages)", "Dead-lettered events", "Billing worker: last run / state", "Data freshness", "Ingest rate"} {
		if !strings.Contains(text, label) {
			t.Errorf("pipeline health lacks %q:\n%s", label, text)
		}
	}
	if got := testid(t, tab, "health-accepted"); got != "38" {
		t.Errorf("health: events accepted %q, the collector accepted 38", got)
	}
	if got := testid(t, tab, "health-dead-lettered"); got != "0" {
		t.Errorf("health: dead-lettered %q, want 0", got)
	}
	if got := testid(t, tab, "health-billing"); got != "not available in this process" {
		t.Errorf("health: billing %q without a billing configuration", got)
	}
	// The whole page, health included, in one picture.
	if err := chromedp.Do(tab.Ctx, chromedp.EmulateViewport(1280, 1560)); err != nil {
		t.Fatal(err)
	}
	tab.Screenshot(t, "overview")
	if err := chromedp.Do(tab.Ctx, chromedp.EmulateViewport(1280, 800)); err != nil {
		t.Fatal(err)
	}
	noConsoleErrors(t, tab)
}

// TestUIAnalyticsFiltersEqualAPI sets the filter and time-zone controls of
// the customer page in chromium: the URL keeps them (a reload shows the
// same), the numbers and the CSV equal GET /v1/usage's filtered query.
func TestUIAnalyticsFiltersEqualAPI(t *testing.T) {
	s := startUIStack(t, "")
	tab := testenv.Browser(t)
	signIn(t, tab, s.base, e2eAdminToken)
	open(t, tab, s.base, "/ui/customers/acme?range=24h", "main")
	if got := testid(t, tab, "total-requests"); got != "11" {
		t.Fatalf("unfiltered: %s requests, want 11", got)
	}
	err := chromedp.Do(tab.Ctx,
		chromedp.SetValue(chromedp.CSS(`#f-status`), "5xx"),
		chromedp.SetValue(chromedp.CSS(`#f-key`), "key_acme_a"),
		chromedp.SendKeys(chromedp.CSS(`#tz`), "Europe/Berlin"),
		chromedp.Click(chromedp.CSS(`#apply`)),
		chromedp.WaitVisible(chromedp.CSS(`main`)),
	)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		if loc := location(t, tab, s.base); !strings.Contains(loc, "status_class=5xx") {
			return fmt.Errorf("still at %s", loc)
		}
		return nil
	})
	loc := location(t, tab, s.base)
	for _, want := range []string{"status_class=5xx", "api_key_id=key_acme_a", "tz=Europe%2FBerlin"} {
		if !strings.Contains(loc, want) {
			t.Fatalf("the URL %s does not keep %s", loc, want)
		}
	}
	from, to := rangeOf(t, tab, "freshness")
	if !strings.HasSuffix(from, "+01:00") && !strings.HasSuffix(from, "+02:00") {
		t.Errorf("the range is not shown in Europe/Berlin: %s", from)
	}
	window := "hour"
	apiQ := "customer_id=acme&api_key_id=key_acme_a&status_class=5xx&tz=Europe/Berlin&window=" + window +
		"&from=" + url.QueryEscape(from) + "&to=" + url.QueryEscape(to)
	u, err := s.usage(apiQ)
	if err != nil {
		t.Fatal(err)
	}
	if u.requests() != 2 {
		t.Fatalf("the API's filtered query: %d requests, posted 2 500s on key_acme_a", u.requests())
	}
	if got := testid(t, tab, "total-requests"); got != "2" {
		t.Errorf("filtered page: %s requests, the API 2", got)
	}
	if got := testid(t, tab, "total-server-errors"); got != "2" {
		t.Errorf("filtered page: %s 5xx, want 2", got)
	}
	link := csvLink(t, tab, s.base)
	for _, want := range []string{"status_class=5xx", "api_key_id=key_acme_a", "tz=Europe%2FBerlin"} {
		if !strings.Contains(link, want) {
			t.Errorf("the CSV link %s lacks %s", link, want)
		}
	}
	status, body := fetchStatus(t, tab, "GET", link, "")
	if status != http.StatusOK {
		t.Fatalf("%s: %d %s", link, status, body)
	}
	gotReq, gotUnits := csvTotals(t, body)
	if gotReq != u.requests() || gotUnits != u.units(t) {
		t.Errorf("CSV %d requests %v units, the API %d %v", gotReq, gotUnits, u.requests(), u.units(t))
	}
	if !strings.Contains(body, "+01:00") && !strings.Contains(body, "+02:00") {
		t.Errorf("CSV windows not in Europe/Berlin:\n%s", body)
	}
	// The state is the URL: a reload shows the same.
	open(t, tab, s.base, loc, "main")
	if got := testid(t, tab, "total-requests"); got != "2" {
		t.Errorf("after a reload: %s requests", got)
	}
	status5, err := chromedp.Run(tab.Ctx, chromedp.Value(chromedp.CSS(`#f-status`)))
	if err != nil {
		t.Fatal(err)
	}
	key, err := chromedp.Run(tab.Ctx, chromedp.Value(chromedp.CSS(`#f-key`)))
	if err != nil {
		t.Fatal(err)
	}
	if status5 != "5xx" || key != "key_acme_a" {
		t.Errorf("after a reload the controls show status %q key %q", status5, key)
	}
	if hasChartLibrary(t, tab) {
		if err := chromedp.Do(tab.Ctx, chromedp.WaitVisible(chromedp.CSS("main .chart canvas"))); err != nil {
			t.Fatalf("filtered page: no chart drawn: %v", err)
		}
	}
	tab.Screenshot(t, "customer-filtered")
	noConsoleErrors(t, tab)
}

// TestUIAnalyticsCustomerCannotWiden: a customer's portal session cannot
// reach another customer through filters, group_by or the overview.
func TestUIAnalyticsCustomerCannotWiden(t *testing.T) {
	s := startUIStack(t, "")
	operator := testenv.Browser(t)
	tab := operator.Incognito(t)
	if err := chromedp.Do(tab.Ctx, chromedp.Navigate(s.portalLink(t, "acme")), chromedp.WaitVisible(chromedp.CSS("main"))); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{
		"/ui/customers/acme?group_by=customer_id",
		"/ui/customers/acme?route=%2Fv1%2Fpets%2F%7Bid%7D&status_class=4xx",
		"/ui/customers/acme/usage.csv?group_by=customer_id&range=24h",
	} {
		status, body := fetchStatus(t, tab, "GET", path, "")
		if status != http.StatusOK || strings.Contains(body, "globex") {
			t.Errorf("%s: %d, and globex's data or name in:\n%s", path, status, body)
		}
	}
	// acme's 404s: none (globex's 5 requests are the only 4xx).
	open(t, tab, s.base, "/ui/customers/acme?route=%2Fv1%2Fpets%2F%7Bid%7D&status_class=4xx", "main")
	if text := pageText(t, tab); !strings.Contains(text, "No usage in this range.") {
		t.Errorf("acme filtered to 4xx shows usage:\n%s", text)
	}
	for _, path := range []string{
		"/ui/overview",
		"/ui/overview?range=24h",
		"/ui/customers/globex?status_class=4xx",
		"/ui/customers/globex/usage.csv?group_by=customer_id",
		"/ui/customers/acme?api_key_id=key_globex", // another customer's key is no filter of acme's
		"/ui/customers/acme/usage.csv?api_key_id=key_globex",
	} {
		status, body := fetchStatus(t, tab, "GET", path, "")
		if status != http.StatusNotFound || strings.Contains(body, "key_globex") || strings.Contains(body, "window_start") {
			t.Errorf("%s: %d, want 404 without data", path, status)
		}
	}
	// (The refused fetches above are logged by the console as 404s.)
}
