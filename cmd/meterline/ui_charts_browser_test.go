package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/fetch"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/meterline/meterline/internal/testenv"
)

// alertReceiver is a real webhook receiver: it takes the first alert and
// refuses every later one with 410 (recorded as failed).
type alertReceiver struct {
	srv *httptest.Server
	mu  sync.Mutex
	n   int
}

func newAlertReceiver(t *testing.T) *alertReceiver {
	rc := &alertReceiver{}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		rc.mu.Lock()
		rc.n++
		n := rc.n
		rc.mu.Unlock()
		if n > 1 {
			w.WriteHeader(http.StatusGone)
		}
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *alertReceiver) count() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.n
}

// startChartsStack is startUIStack with usage alerts on (a signing secret
// from the environment's secret file, thresholds 50/80/100 % on the plan,
// acme's webhook on a local receiver) and more of acme's events spread
// over the last eight hours: redirects, client and server errors, with
// latencies, and enough units (826 of 1000) to cross 50 % and 80 %.
func startChartsStack(t *testing.T) (*uiStack, *alertReceiver) {
	t.Helper()
	secret := filepath.Join(t.TempDir(), "webhook-secret")
	if err := os.WriteFile(secret, []byte("ui-charts-webhook-secret-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("METERLINE_LIMITS_WEBHOOK_SECRET_FILE", secret)
	s := startUIStack(t, "")
	rc := newAlertReceiver(t)
	cfg, err := os.ReadFile(s.cfg)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`catalogue_file: (\S+)`).FindSubmatch(cfg)
	if m == nil {
		t.Fatalf("no catalogue_file in\n%s", cfg)
	}
	before, _ := metric(s.addr, `meterline_registry_reloads_total{result="success"}`)
	if err := os.WriteFile(string(m[1]), []byte(`plans:
  - {id: starter, included_units: 1000, hard_limit: 2000, alert_thresholds: [0.5, 0.8, 1.0]}
customers:
  - {id: acme, plan: starter, alert_webhook: "`+rc.srv.URL+`/hooks/acme", keys: [key_acme_a, key_acme_b]}
  - {id: globex, plan: starter, keys: [key_globex]}
  - {id: initech, plan: starter, keys: [key_initech]}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 60*time.Second, func() error {
		if n, _ := metric(s.addr, `meterline_registry_reloads_total{result="success"}`); n <= before {
			return fmt.Errorf("catalogue not reloaded yet (%v successful reloads)", n)
		}
		return nil
	})

	now := time.Now().UTC()
	statuses := []int{200, 200, 201, 200, 301, 304, 404, 429, 200, 503}
	var evs []map[string]any
	for i := range 40 {
		e := event(fmt.Sprintf("ui-chart-%d", i), "key_acme_a")
		e["customer_id"] = "acme"
		e["status"] = statuses[i%len(statuses)]
		e["units"] = 20
		e["latency_ms"] = float64(5 + (i*37)%120)
		e["time"] = now.Add(-time.Duration(i%8)*time.Hour - time.Duration(i)*time.Minute - 5*time.Minute).Format(time.RFC3339Nano)
		if i%3 == 0 {
			e["api_key_id"] = "key_acme_b"
			e["route"] = "/v1/orders"
		}
		evs = append(evs, e)
	}
	postEvents(t, s.addr, evs)
	from := now.Add(-9 * time.Hour).Truncate(time.Hour).Format(time.RFC3339)
	testenv.Eventually(t, 90*time.Second, func() error {
		u, err := s.usage("customer_id=acme&window=hour&from=" + from)
		if err != nil {
			return err
		}
		if got := u.requests(); got != 51 {
			return fmt.Errorf("acme: %d requests in /v1/usage, want 51", got)
		}
		return nil
	})
	// The limits view sees 826 units and the alerter sends 50 % and 80 %.
	testenv.Eventually(t, 90*time.Second, func() error {
		if n := rc.count(); n < 2 {
			return fmt.Errorf("%d alerts received, want 2", n)
		}
		return nil
	})
	return s, rc
}

// tableRows reads a table's rows (header first) by its data-testid,
// waiting for it to exist.
func tableRows(t *testing.T, tab *testenv.Tab, id string) [][]string {
	t.Helper()
	sel := `[data-testid="` + id + `"]`
	if err := chromedp.Do(tab.Ctx, chromedp.WaitReady(chromedp.CSS(sel))); err != nil {
		t.Fatalf("table %s: %v", id, err)
	}
	rows, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[[][]string](`Array.from(document.querySelectorAll('`+sel+` tr')).map(tr => Array.from(tr.cells).map(c => c.textContent.trim()))`))
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

// colourPixels counts the status chart's canvas pixels of exactly one
// colour (r, g, b), opaque.
func colourPixels(t *testing.T, tab *testenv.Tab, r, g, b int) int {
	t.Helper()
	n, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[int](fmt.Sprintf(`(() => {
  const c = document.querySelector('.chart[data-kind="status"] canvas');
  if (!c) { return -1; }
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) { if (d[i] === %d && d[i+1] === %d && d[i+2] === %d && d[i+3] === 255) { n++; } }
  return n;
})()`, r, g, b)))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// apiCSV is GET /v1/usage with Accept: text/csv.
func apiCSV(t *testing.T, addr, query string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/v1/usage?"+query, nil)
	req.Header.Set("Authorization", "Bearer "+e2eAdminToken)
	req.Header.Set("Accept", "text/csv")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/usage (CSV): %d %s", resp.StatusCode, b)
	}
	return string(b)
}

type latencyRow struct {
	WindowStart time.Time `json:"window_start"`
	Requests    uint64    `json:"requests"`
	LatencyMS   *struct {
		P50 float64 `json:"p50"`
		P95 float64 `json:"p95"`
		P99 float64 `json:"p99"`
	} `json:"latency_ms"`
	Group map[string]string `json:"group"`
}

func usageRows(t *testing.T, addr, query string) []latencyRow {
	t.Helper()
	var u struct {
		Rows []latencyRow `json:"rows"`
	}
	if err := getJSON(addr, "/v1/usage?"+query, &u); err != nil {
		t.Fatal(err)
	}
	return u.Rows
}

// TestUIChartsEqualTheAPI opens the customer and key pages in chromium:
// the stacked chart's data sums per status class to GET /v1/usage's
// totals by status_class, its units to the API's units; the latency
// chart's values are the API's p50/p95/p99 per window; each chart's CSV
// is the API's CSV for the same query; toggling a legend entry takes its
// colour off the canvas; a customer without usage gets the empty state;
// the plan card lists the thresholds and the deliveries the alerter made,
// without the webhook's address. Screenshots: customer, key,
// customer-phone, portal.
func TestUIChartsEqualTheAPI(t *testing.T) {
	s, rc := startChartsStack(t)
	tab := testenv.Browser(t)
	signIn(t, tab, s.base, e2eAdminToken)
	if !hasChartLibrary(t, tab) {
		t.Skip("the chart library is not installed (deploy/install.sh uplot)")
	}

	for _, pg := range []struct{ name, path, scope string }{
		{"customer", "/ui/customers/acme", "customer_id=acme"},
		{"key", "/ui/customers/acme/keys/key_acme_a", "api_key_id=key_acme_a"},
	} {
		open(t, tab, s.base, pg.path, `.chart[data-kind="status"] canvas`)
		q := pg.scope + "&" + pageQuery(t, tab)

		// Stacked requests and units, as the chart's data table lists them.
		rows := tableRows(t, tab, "status-data")
		head := rows[0]
		sums := map[string]uint64{}
		var units float64
		for _, r := range rows[1:] {
			for i, h := range head {
				switch {
				case h == "units":
					u, err := strconv.ParseFloat(r[i], 64)
					if err != nil {
						t.Fatalf("units %q: %v", r[i], err)
					}
					units += u
				case strings.HasSuffix(h, "xx"):
					n, err := strconv.ParseUint(r[i], 10, 64)
					if err != nil {
						t.Fatalf("%s %q: %v", h, r[i], err)
					}
					sums[h] += n
				}
			}
		}
		want := map[string]uint64{}
		for _, r := range usageRows(t, s.addr, q+"&group_by=status_class") {
			want[r.Group["status_class"]] += r.Requests
		}
		for _, c := range []string{"2xx", "3xx", "4xx", "5xx"} {
			if _, ok := want[c]; !ok {
				want[c] = 0
			}
		}
		if fmt.Sprint(sums) != fmt.Sprint(want) || want["3xx"] == 0 || want["5xx"] == 0 {
			t.Fatalf("%s: the chart's requests by class %v, the API's %v", pg.path, sums, want)
		}
		api, err := s.usage(q)
		if err != nil {
			t.Fatal(err)
		}
		if units != api.units(t) {
			t.Fatalf("%s: the chart's units %v, the API's %v", pg.path, units, api.units(t))
		}

		// Latency: the chart's values per window are the API's.
		lat := tableRows(t, tab, "latency-data")
		apiLat := usageRows(t, s.addr, q)
		if len(lat)-1 != len(apiLat) || len(apiLat) < 3 {
			t.Fatalf("%s: latency chart has %d windows, the API %d", pg.path, len(lat)-1, len(apiLat))
		}
		for i, r := range apiLat {
			got := lat[i+1]
			if got[0] != r.WindowStart.UTC().Format(time.RFC3339) || r.LatencyMS == nil {
				t.Fatalf("%s: latency row %v, API window %s latency %v", pg.path, got, r.WindowStart, r.LatencyMS)
			}
			for j, v := range []float64{r.LatencyMS.P50, r.LatencyMS.P95, r.LatencyMS.P99} {
				f, err := strconv.ParseFloat(got[j+1], 64)
				if err != nil || f != v {
					t.Fatalf("%s: window %s: %s shows %q, the API %v", pg.path, got[0], lat[0][j+1], got[j+1], v)
				}
			}
		}

		// Each chart's CSV is the API's CSV for the same query.
		for id, extra := range map[string]string{"status-csv": "&group_by=status_class", "latency-csv": ""} {
			href, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[string](`document.querySelector('[data-testid="`+id+`"]').getAttribute('href')`))
			if err != nil {
				t.Fatal(err)
			}
			status, body := fetchStatus(t, tab, "GET", href, "")
			if want := apiCSV(t, s.addr, q+extra); status != http.StatusOK || body != want {
				t.Fatalf("%s: %s (%s) %d differs from the API's CSV:\n%s\n--- API:\n%s", pg.path, id, href, status, body, want)
			}
		}
		if pg.name == "customer" {
			// The card: thresholds and the two deliveries, newest first.
			if th := testid(t, tab, "alert-thresholds"); !strings.Contains(th, "50 % (500 units): reached") ||
				!strings.Contains(th, "80 % (800 units): reached") || strings.Contains(th, "100 % (1000 units): reached") {
				t.Fatalf("thresholds %q", th)
			}
			d := tableRows(t, tab, "alert-deliveries")
			if len(d) != 3 || d[1][1] != "80 %" || d[1][2] != "failed" || d[1][3] != "410" || d[2][1] != "50 %" || d[2][2] != "delivered" || d[2][3] != "200" {
				t.Fatalf("deliveries %v", d)
			}
		}
		html, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[string](`document.documentElement.outerHTML`))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(html, "/hooks/acme") || strings.Contains(html, "ui-charts-webhook-secret") {
			t.Fatalf("%s shows the webhook's address or secret", pg.path)
		}
		fullPage(t, tab, 1280)
		tab.Screenshot(t, pg.name)
		viewport(t, tab, 1280, 800)
	}

	// The legend toggles a series: 5xx's colour (Okabe-Ito vermillion,
	// #D55E00) leaves the canvas and comes back.
	open(t, tab, s.base, "/ui/customers/acme", `.chart[data-kind="status"] canvas`)
	if n := colourPixels(t, tab, 0xD5, 0x5E, 0x00); n <= 0 {
		t.Fatalf("5xx bars: %d pixels of their colour before the toggle", n)
	}
	legend := legendEntry(t, tab, "5xx")
	if err := chromedp.Do(tab.Ctx, chromedp.Click(chromedp.CSS(legend))); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		off, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[bool](`document.querySelector('`+strings.TrimSuffix(legend, " > th")+`').classList.contains('u-off')`))
		if err != nil || !off {
			return fmt.Errorf("legend entry not off (%v)", err)
		}
		if n := colourPixels(t, tab, 0xD5, 0x5E, 0x00); n != 0 {
			return fmt.Errorf("%d pixels of 5xx's colour after hiding it", n)
		}
		return nil
	})
	if n := colourPixels(t, tab, 0x00, 0x9E, 0x73); n <= 0 {
		t.Fatalf("hiding 5xx hid 2xx too (%d pixels)", n)
	}
	if err := chromedp.Do(tab.Ctx, chromedp.Click(chromedp.CSS(legend))); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if n := colourPixels(t, tab, 0xD5, 0x5E, 0x00); n <= 0 {
			return fmt.Errorf("5xx not drawn again after showing it (%d pixels)", n)
		}
		return nil
	})

	// A customer without usage: explicit empty states, no canvas.
	open(t, tab, s.base, "/ui/customers/initech", `[data-testid="status-empty"]`)
	if got := testid(t, tab, "status-empty"); got != "No requests in this range." {
		t.Fatalf("empty state %q", got)
	}
	if got := testid(t, tab, "latency-empty"); got != "No requests in this range." {
		t.Fatalf("latency empty state %q", got)
	}
	if n, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[int](`document.querySelectorAll('.chart canvas').length`)); err != nil || n != 0 {
		t.Fatalf("empty range: %d canvases (%v)", n, err)
	}

	// At a phone's width the legend wraps inside the card.
	viewport(t, tab, 390, 844)
	open(t, tab, s.base, "/ui/customers/acme", `.chart[data-kind="status"] canvas`)
	over, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[string](`(() => {
  for (const el of document.querySelectorAll('.chart .u-legend, .chart canvas, .card')) {
    const r = el.getBoundingClientRect();
    if (r.right > document.documentElement.clientWidth + 1) { return el.className + " ends at " + r.right; }
  }
  return "";
})()`))
	if err != nil || over != "" {
		t.Fatalf("at 390 px: %s (%v)", over, err)
	}
	fullPage(t, tab, 390)
	tab.Screenshot(t, "customer-phone")
	viewport(t, tab, 1280, 800)

	// The customer portal: acme's own page, charts drawn.
	portal := tab.Incognito(t)
	if err := chromedp.Do(portal.Ctx, chromedp.Navigate(s.portalLink(t, "acme")), chromedp.WaitVisible(chromedp.CSS(`.chart[data-kind="latency"] canvas`))); err != nil {
		t.Fatal(err)
	}
	// The customer's own session sees its deliveries, not the webhook.
	if d := tableRows(t, portal, "alert-deliveries"); len(d) != 3 {
		t.Fatalf("portal deliveries %v", d)
	}
	if h, err := chromedp.Run(portal.Ctx, chromedp.Evaluate[string](`document.documentElement.outerHTML`)); err != nil ||
		strings.Contains(h, "/hooks/acme") || strings.Contains(h, rcHost(rc)) {
		t.Fatalf("the portal page shows the webhook's address (%v)", err)
	}
	fullPage(t, portal, 1280)
	portal.Screenshot(t, "portal")
	noConsoleErrors(t, portal)
	noConsoleErrors(t, tab)
}

// rcHost is the receiver's host:port.
func rcHost(rc *alertReceiver) string { return strings.TrimPrefix(rc.srv.URL, "http://") }

// legendEntry is the selector of the status chart's legend entry label.
func legendEntry(t *testing.T, tab *testenv.Tab, label string) string {
	t.Helper()
	i, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[int](`Array.from(document.querySelectorAll('.chart[data-kind="status"] .u-legend tr.u-series')).findIndex(tr => tr.querySelector('.u-label').textContent === `+strconv.Quote(label)+`)`))
	if err != nil || i < 0 {
		t.Fatalf("no legend entry %s (%v)", label, err)
	}
	return fmt.Sprintf(`.chart[data-kind="status"] .u-legend tr.u-series:nth-child(%d) > th`, i+1)
}

func viewport(t *testing.T, tab *testenv.Tab, w, h int64) {
	t.Helper()
	if err := chromedp.Do(tab.Ctx, chromedp.EmulateViewport(w, h)); err != nil {
		t.Fatal(err)
	}
}

// fullPage waits until every chart has loaded, makes the viewport as tall
// as the page (at most 3000 px), so a screenshot shows all of it, and
// waits until the charts have been redrawn at that size.
func fullPage(t *testing.T, tab *testenv.Tab, w int64) {
	t.Helper()
	testenv.Eventually(t, 30*time.Second, func() error {
		n, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[int](`document.querySelectorAll('.chart .loading').length`))
		if err != nil || n != 0 {
			return fmt.Errorf("%d charts still loading (%v)", n, err)
		}
		return nil
	})
	h, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[int64](`document.documentElement.scrollHeight`))
	if err != nil {
		t.Fatal(err)
	}
	viewport(t, tab, w, min(max(h, 800), 3000))
	testenv.Eventually(t, 10*time.Second, func() error {
		bad, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[string](`Array.from(document.querySelectorAll('.chart')).filter(c => c.querySelector('canvas') && Math.abs(c.querySelector('.uplot').offsetWidth - Math.max(280, c.clientWidth)) > 1).map(c => c.dataset.kind).join()`))
		if err != nil || bad != "" {
			return fmt.Errorf("charts not yet resized: %q (%v)", bad, err)
		}
		return nil
	})
}

// TestUILiveModeFollowsNewEvents opens the customer page in live mode,
// posts events through the collector and waits until the page, without a
// reload, shows the totals and the plan's usage that the API answers; a
// hidden tab pauses (the page's visibility is overridden by the test, as
// headless chromium has no other tab to switch to), showing it again
// resumes; an ended session shows as an error.
func TestUILiveModeFollowsNewEvents(t *testing.T) {
	s := startUIStack(t, "")
	tab := testenv.Browser(t)
	signIn(t, tab, s.base, e2eAdminToken)
	if !hasChartLibrary(t, tab) {
		t.Skip("the chart library is not installed (deploy/install.sh uplot)")
	}
	open(t, tab, s.base, "/ui/customers/acme?range=1h&live=1", `[data-testid="live-state"]`)
	waitText(t, tab, "live-state", "Live: updated at")
	marker := "page-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if _, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[bool](`window.__page = "`+marker+`"; true`)); err != nil {
		t.Fatal(err)
	}
	before := testid(t, tab, "total-requests")

	post := func(prefix string, n int) {
		var evs []map[string]any
		for i := range n {
			e := event(fmt.Sprintf("%s-%d", prefix, i), "key_acme_b")
			e["customer_id"] = "acme"
			e["status"] = []int{200, 404, 503}[i%3]
			e["units"] = 5
			e["time"] = time.Now().UTC().Format(time.RFC3339Nano)
			evs = append(evs, e)
		}
		postEvents(t, s.addr, evs)
	}
	// follow waits until the page shows the API's totals for the range it
	// states, and the API's plan usage, with want requests.
	follow := func(want uint64) {
		t.Helper()
		testenv.Eventually(t, 60*time.Second, func() error {
			q := "customer_id=acme&" + pageQuery(t, tab)
			u, err := s.usage(q)
			if err != nil {
				return err
			}
			var lim struct {
				Used json.Number `json:"used"`
			}
			if err := getJSON(s.addr, "/v1/limits/key_acme_a", &lim); err != nil {
				return err
			}
			got := testid(t, tab, "total-requests")
			if u.requests() != want || got != strconv.FormatUint(want, 10) {
				return fmt.Errorf("page shows %s requests, the API %d, want %d", got, u.requests(), want)
			}
			if used := testid(t, tab, "plan-used"); used != lim.Used.String() {
				return fmt.Errorf("page shows %s units used, /v1/limits %s", used, lim.Used)
			}
			meter, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[float64](`document.querySelector('[data-testid="plan-meter"]').value`))
			if f, _ := lim.Used.Float64(); err != nil || meter != f {
				return fmt.Errorf("gauge at %v, /v1/limits %s (%v)", meter, lim.Used, err)
			}
			// The chart's data follows too.
			rows := tableRows(t, tab, "status-data")
			var n uint64
			for _, r := range rows[1:] {
				for i, h := range rows[0] {
					if strings.HasSuffix(h, "xx") {
						v, _ := strconv.ParseUint(r[i], 10, 64)
						n += v
					}
				}
			}
			if n != want {
				return fmt.Errorf("the chart's data sums to %d requests, want %d", n, want)
			}
			return nil
		})
	}
	n0, err := strconv.ParseUint(before, 10, 64)
	if err != nil {
		t.Fatalf("total-requests %q", before)
	}
	post("live-1", 6)
	follow(n0 + 6)

	// Hidden: paused. Shown again: the page catches up with new events.
	if _, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[bool](`Object.defineProperty(document, "hidden", {configurable: true, get: () => true});
document.dispatchEvent(new Event("visibilitychange")); true`)); err != nil {
		t.Fatal(err)
	}
	waitText(t, tab, "live-state", "paused")
	post("live-2", 3)
	if _, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[bool](`Object.defineProperty(document, "hidden", {configurable: true, get: () => false});
document.dispatchEvent(new Event("visibilitychange")); true`)); err != nil {
		t.Fatal(err)
	}
	follow(n0 + 9)
	if got, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[string](`window.__page || ""`)); err != nil || got != marker {
		t.Fatalf("the page was reloaded (%q, %v): live mode must update in place", got, err)
	}
	noConsoleErrors(t, tab)

	// The session ends (its cookie is gone): the next poll shows an error.
	if _, err := chromedp.Run(tab.Ctx, func(ctx context.Context, tg *chromedp.Target) (cdp.Empty, error) {
		return cdp.Call(ctx, tg, network.DeleteCookies, network.DeleteCookiesParams{Name: "ml_session", URL: s.base + "/ui/"})
	}); err != nil {
		t.Fatal(err)
	}
	waitText(t, tab, "live-state", "the session ended")
	if cls, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[string](`document.querySelector('[data-testid="live-state"]').className`)); err != nil || !strings.Contains(cls, "error") {
		t.Fatalf("live state class %q (%v), want error", cls, err)
	}
	if u, err := url.Parse(location(t, tab, s.base)); err != nil || u.Path != "/ui/customers/acme" {
		t.Fatalf("page moved to %v", u)
	}
}

// waitText waits until the element with that data-testid contains text.
func waitText(t *testing.T, tab *testenv.Tab, id, text string) {
	t.Helper()
	testenv.Eventually(t, 30*time.Second, func() error {
		got, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[string](`(document.querySelector('[data-testid="`+id+`"]') || {}).textContent || ""`))
		if err != nil || !strings.Contains(got, text) {
			return fmt.Errorf("%s shows %q, want %q (%v)", id, got, text, err)
		}
		return nil
	})
}

// TestUIChartLoadingAndErrorStates holds and fails the page's data
// requests in the browser (Chrome's request interception stands in for a
// failing server; the server itself is the real one): a held chart says it
// is loading, a failed one names the HTTP status, and a failed live update
// shows as an error until the next one succeeds.
func TestUIChartLoadingAndErrorStates(t *testing.T) {
	s := startUIStack(t, "")
	tab := testenv.Browser(t)
	signIn(t, tab, s.base, e2eAdminToken)
	if !hasChartLibrary(t, tab) {
		t.Skip("the chart library is not installed (deploy/install.sh uplot)")
	}
	paused := make(chan *fetch.EventRequestPaused, 64)
	if err := chromedp.Listen(tab.Ctx, func(ev any) {
		if p, ok := ev.(*fetch.EventRequestPaused); ok {
			select {
			case paused <- p:
			default:
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	call := func(f func(ctx context.Context, tg *chromedp.Target) (cdp.Empty, error)) {
		t.Helper()
		if _, err := chromedp.Run(tab.Ctx, f); err != nil {
			t.Fatal(err)
		}
	}
	call(func(ctx context.Context, tg *chromedp.Target) (cdp.Empty, error) {
		return cdp.Call(ctx, tg, fetch.Enable, fetch.EnableParams{Patterns: []*fetch.RequestPattern{{URLPattern: "*/usage.csv?*"}, {URLPattern: "*/live.json?*"}}})
	})
	next := func(want string) *fetch.EventRequestPaused {
		t.Helper()
		select {
		case p := <-paused:
			if !strings.Contains(p.Request.URL, want) {
				t.Fatalf("held request %s, want one of %s", p.Request.URL, want)
			}
			return p
		case <-time.After(30 * time.Second):
			t.Fatalf("no request for %s within 30s", want)
		}
		return nil
	}
	pass := func(p *fetch.EventRequestPaused) {
		call(func(ctx context.Context, tg *chromedp.Target) (cdp.Empty, error) {
			return cdp.Call(ctx, tg, fetch.ContinueRequest, fetch.ContinueRequestParams{RequestID: p.RequestID})
		})
	}
	fail := func(p *fetch.EventRequestPaused, code int64) {
		call(func(ctx context.Context, tg *chromedp.Target) (cdp.Empty, error) {
			return cdp.Call(ctx, tg, fetch.FulfillRequest, fetch.FulfillRequestParams{RequestID: p.RequestID, ResponseCode: code,
				ResponseHeaders: []*fetch.HeaderEntry{{Name: "Content-Type", Value: "application/json"}},
				Body:            []byte(`{"error":"the store is unavailable"}`)})
		})
	}

	open(t, tab, s.base, "/ui/customers/acme", "main")
	pass(next("group_by=status_class"))
	lat := next("usage.csv")
	if err := chromedp.Do(tab.Ctx, chromedp.WaitVisible(chromedp.CSS(`.chart[data-kind="status"] canvas`))); err != nil {
		t.Fatal(err)
	}
	if got, err := chromedp.Run(tab.Ctx, chromedp.Text(chromedp.CSS(`.chart[data-kind="latency"] .loading`))); err != nil || !strings.Contains(got, "Loading") {
		t.Fatalf("held latency chart shows %q (%v), want its loading state", got, err)
	}
	fail(lat, http.StatusServiceUnavailable)
	waitText(t, tab, "latency-error", "could not be loaded: HTTP 503")
	if role, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[string](`document.querySelector('[data-testid="latency-error"]').getAttribute('role')`)); err != nil || role != "alert" {
		t.Fatalf("error state role %q (%v), want alert", role, err)
	}

	// Live mode: a failed update is an error until the next one succeeds.
	open(t, tab, s.base, "/ui/customers/acme?range=1h&live=1", "main")
	pass(next("group_by=status_class"))
	pass(next("usage.csv"))
	fail(next("live.json"), http.StatusServiceUnavailable)
	waitText(t, tab, "live-state", "the last update failed (HTTP 503: the store is unavailable)")
	if cls, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[string](`document.querySelector('[data-testid="live-state"]').className`)); err != nil || !strings.Contains(cls, "error") {
		t.Fatalf("live state class %q (%v), want error", cls, err)
	}
	pass(next("live.json"))
	waitText(t, tab, "live-state", "Live: updated at")
	if cls, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[string](`document.querySelector('[data-testid="live-state"]').className`)); err != nil || strings.Contains(cls, "error") {
		t.Fatalf("live state class %q after a good update (%v)", cls, err)
	}
	call(func(ctx context.Context, tg *chromedp.Target) (cdp.Empty, error) {
		return cdp.Call(ctx, tg, fetch.Disable, cdp.Empty{})
	})
}
