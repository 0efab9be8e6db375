package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/meterline/meterline/internal/testenv"
)

// uiStack is one `meterline serve` with the web interface, a catalogue of
// two customers, and events posted through the collector.
type uiStack struct {
	addr  string
	base  string
	cfg   string // the configuration file
	proc  *proc
	posts int // events per customer posted
}

// startUIStack starts the binary with three customers (acme: key_acme_a,
// key_acme_b; globex: key_globex; initech: key_initech, which has no events
// until a test posts some) and posts events for acme and globex through the
// collector, then waits until GET /v1/usage counts all of them.
func startUIStack(t *testing.T, uiExtra string) *uiStack {
	t.Helper()
	testenv.Require(t, testenv.EnvChdb)
	brokers := testenv.KafkaBrokers(t)
	dir := t.TempDir()
	catalogue := filepath.Join(dir, "catalogue.yaml")
	if err := os.WriteFile(catalogue, []byte(`plans:
  - {id: starter, included_units: 1000, hard_limit: 2000}
customers:
  - {id: acme, plan: starter, keys: [key_acme_a, key_acme_b]}
  - {id: globex, plan: starter, keys: [key_globex]}
  - {id: initech, plan: starter, keys: [key_initech]}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	topic := testenv.Unique("ui")
	cfgPath, addr := writeConfig(t, strings.Join(brokers, ","), topic, fmt.Sprintf(`limits:
  catalogue_file: %s
  refresh: 200ms
aggregate:
  interval: 200ms
  settle: 1ms
%s`, catalogue, uiExtra))
	p, _ := start(t, cfgPath, addr)

	// acme: 7 requests on key a (two of them 500s), 4 on key b; globex: 5.
	now := time.Now().Add(-2 * time.Minute).UTC()
	var evs []map[string]any
	add := func(id, key, customer, route string, status int, units float64) {
		e := event(id, key)
		e["customer_id"] = customer
		e["route"] = route
		e["status"] = status
		e["units"] = units
		e["time"] = now.Format(time.RFC3339Nano)
		evs = append(evs, e)
	}
	for i := range 7 {
		status := 200
		if i >= 5 {
			status = 500
		}
		add(fmt.Sprintf("ui-a-%d", i), "key_acme_a", "acme", "/v1/pets/{id}", status, 2)
	}
	for i := range 4 {
		add(fmt.Sprintf("ui-b-%d", i), "key_acme_b", "acme", "/v1/orders", 200, 3)
	}
	for i := range 5 {
		add(fmt.Sprintf("ui-g-%d", i), "key_globex", "globex", "/v1/pets/{id}", 404, 1)
	}
	postEvents(t, addr, evs)
	s := &uiStack{addr: addr, base: "http://" + addr, cfg: cfgPath, proc: p}
	testenv.Eventually(t, 90*time.Second, func() error {
		for cust, want := range map[string]uint64{"acme": 11, "globex": 5} {
			u, err := s.usage("customer_id=" + cust + "&window=hour&from=" + now.Add(-time.Hour).Truncate(time.Hour).Format(time.RFC3339))
			if err != nil {
				return err
			}
			if got := u.requests(); got != want {
				return fmt.Errorf("%s: %d requests in /v1/usage, want %d", cust, got, want)
			}
		}
		return nil
	})
	// The plan's usage (GET /v1/limits) follows on its own refresh.
	testenv.Eventually(t, 90*time.Second, func() error {
		for key, want := range map[string]string{"key_acme_a": "26", "key_globex": "5"} {
			var lim struct {
				Used json.Number `json:"used"`
			}
			if err := getJSON(s.addr, "/v1/limits/"+key, &lim); err != nil {
				return err
			}
			if lim.Used.String() != want {
				return fmt.Errorf("/v1/limits/%s: used %s, want %s", key, lim.Used, want)
			}
		}
		return nil
	})
	return s
}

type usageAnswer struct {
	Rows []struct {
		WindowStart  time.Time       `json:"window_start"`
		Requests     uint64          `json:"requests"`
		ClientErrors uint64          `json:"client_errors"`
		ServerErrors uint64          `json:"server_errors"`
		Units        json.Number     `json:"units"`
		Group        json.RawMessage `json:"group"`
	} `json:"rows"`
}

func (u usageAnswer) requests() uint64 {
	var n uint64
	for _, r := range u.Rows {
		n += r.Requests
	}
	return n
}

func (s *uiStack) usage(query string) (usageAnswer, error) {
	var u usageAnswer
	err := getJSON(s.addr, "/v1/usage?"+query, &u)
	return u, err
}

// portalLink asks POST /v1/portal/sessions for a one-time link.
func (s *uiStack) portalLink(t *testing.T, customer string) string {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"customer_id": customer, "ttl": "10m"})
	req, _ := http.NewRequest(http.MethodPost, s.base+"/v1/portal/sessions", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+e2eAdminToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /v1/portal/sessions: %d %s", resp.StatusCode, b)
	}
	var out struct {
		URL string `json:"url"`
	}
	if err := json.Unmarshal(b, &out); err != nil || !strings.Contains(out.URL, "/ui/portal/exchange?code=") {
		t.Fatalf("portal link answer %s (%v)", b, err)
	}
	return out.URL
}

// signIn fills the sign-in form with token and waits for the landing page.
func signIn(t testing.TB, tab *testenv.Tab, base, token string) {
	t.Helper()
	err := chromedp.Do(tab.Ctx,
		chromedp.Navigate(base+"/ui/"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), token),
		chromedp.Click(chromedp.ID("signin")),
		chromedp.WaitVisible(chromedp.ID("signout")),
	)
	if err != nil {
		t.Fatalf("signing in: %v", err)
	}
}

// location is the tab's current URL without the origin.
func location(t *testing.T, tab *testenv.Tab, base string) string {
	t.Helper()
	loc, err := chromedp.Run(tab.Ctx, chromedp.Location())
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimPrefix(loc, base)
}

// fetchStatus runs fetch() inside the page (same origin, with the page's
// cookies) and returns the status and body.
func fetchStatus(t *testing.T, tab *testenv.Tab, method, path, form string) (int, string) {
	t.Helper()
	js := fmt.Sprintf(`(async () => {
  const init = {method: %q, redirect: "manual", credentials: "same-origin"};
  if (%q !== "") { init.headers = {"Content-Type": "application/x-www-form-urlencoded"}; init.body = %q; }
  const r = await fetch(%q, init);
  return {status: r.status, body: await r.text()};
})()`, method, form, form, path)
	res, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[struct {
		Status int    `json:"status"`
		Body   string `json:"body"`
	}](js, chromedp.EvalAsValue, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("fetch %s %s: %v", method, path, err)
	}
	return res.Status, res.Body
}

// cookie returns the browser's cookie of that name for base, or nil.
func cookie(t *testing.T, tab *testenv.Tab, base, name string) *network.Cookie {
	t.Helper()
	res, err := chromedp.Run(tab.Ctx, func(ctx context.Context, tg *chromedp.Target) (network.GetCookiesResult, error) {
		return cdp.Call(ctx, tg, network.GetCookies, network.GetCookiesParams{URLs: []string{base + "/ui/"}})
	})
	if err != nil {
		t.Fatalf("reading cookies: %v", err)
	}
	for _, c := range res.Cookies {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// open navigates to path, waits for sel and returns the document's answer.
func open(t *testing.T, tab *testenv.Tab, base, path, sel string) *network.Response {
	t.Helper()
	resp, err := chromedp.RunResponse(tab.Ctx, chromedp.Navigate(base+path))
	if err != nil {
		t.Fatalf("opening %s: %v", path, err)
	}
	if err := chromedp.Do(tab.Ctx, chromedp.WaitVisible(chromedp.CSS(sel))); err != nil {
		t.Fatalf("%s: waiting for %s: %v", path, sel, err)
	}
	return resp
}

// noConsoleErrors fails on any console error or CSP violation so far (a
// page that forgot its icon makes the browser ask for /favicon.ico, a 404).
func noConsoleErrors(t *testing.T, tab *testenv.Tab) {
	t.Helper()
	for _, m := range tab.ConsoleErrors() {
		t.Errorf("console %s: %s (%s)", m.Type, m.Text, m.URL)
	}
}

// csvTotals sums the requests and units columns of a usage CSV.
func csvTotals(t *testing.T, body string) (requests uint64, units float64) {
	t.Helper()
	r := csv.NewReader(strings.NewReader(body))
	recs, err := r.ReadAll()
	if err != nil || len(recs) < 1 {
		t.Fatalf("usage CSV %q: %v", body, err)
	}
	col := map[string]int{}
	for i, h := range recs[0] {
		col[h] = i
	}
	ri, ok1 := col["requests"]
	ui, ok2 := col["units"]
	if !ok1 || !ok2 {
		t.Fatalf("usage CSV header %v: want requests and units columns", recs[0])
	}
	for _, rec := range recs[1:] {
		n, err := strconv.ParseUint(rec[ri], 10, 64)
		if err != nil {
			t.Fatalf("CSV row %v: requests: %v", rec, err)
		}
		u, err := strconv.ParseFloat(rec[ui], 64)
		if err != nil {
			t.Fatalf("CSV row %v: units: %v", rec, err)
		}
		requests += n
		units += u
	}
	return requests, units
}

func (u usageAnswer) units(t *testing.T) float64 {
	var s float64
	for _, r := range u.Rows {
		f, err := r.Units.Float64()
		if err != nil {
			t.Fatalf("units %q: %v", r.Units, err)
		}
		s += f
	}
	return s
}

// hasChartLibrary tells whether the page loads uPlot (installed by
// deploy/install.sh uplot; without it pages show tables only).
func hasChartLibrary(t *testing.T, tab *testenv.Tab) bool {
	t.Helper()
	ok, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[bool](`document.querySelector('script[src*="uPlot"]') !== null`))
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// pageText is the visible text of the page.
func pageText(t *testing.T, tab *testenv.Tab) string {
	t.Helper()
	s, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[string](`document.body.innerText`))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// pageQuery is the /v1/usage query of the page's data, from the range and
// window that the page states it shows.
func pageQuery(t *testing.T, tab *testenv.Tab) string {
	t.Helper()
	var from, to, window string
	line := testid(t, tab, "freshness")
	if _, err := fmt.Sscanf(line, "From %s to %s by %s", &from, &to, &window); err != nil {
		t.Fatalf("freshness line %q: %v", line, err)
	}
	return url.Values{"from": {from}, "to": {strings.TrimSuffix(to, ",")}, "window": {strings.TrimSuffix(window, ".")}}.Encode()
}

// testid is the text of the element with that data-testid.
func testid(t *testing.T, tab *testenv.Tab, id string) string {
	t.Helper()
	s, err := chromedp.Run(tab.Ctx, chromedp.Text(chromedp.CSS(`[data-testid="`+id+`"]`)))
	if err != nil {
		t.Fatalf("element %s: %v", id, err)
	}
	return strings.TrimSpace(s)
}

// csvLink returns the page's first chart CSV link (path and query).
func csvLink(t *testing.T, tab *testenv.Tab, base string) string {
	t.Helper()
	href, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[string](`(document.querySelector('[data-testid="download-csv"]') || {}).href || ""`))
	if err != nil || href == "" {
		t.Fatalf("no CSV download link on the page (%v)", err)
	}
	return strings.TrimPrefix(href, base)
}

// TestUIOperatorSeesTheAPIsNumbers signs in with the admin token in a
// real browser and opens every view; the numbers on each page and in its
// chart's CSV equal GET /v1/usage for the same query, the plan equals
// GET /v1/limits, the session cookie carries HttpOnly, SameSite=Strict and
// Path=/ui/, every page carries the CSP, and no page logs a console error
// (a CSP violation among them).
func TestUIOperatorSeesTheAPIsNumbers(t *testing.T) {
	s := startUIStack(t, "")
	tab := testenv.Browser(t)
	signIn(t, tab, s.base, e2eAdminToken)
	if loc := location(t, tab, s.base); !strings.HasPrefix(loc, "/ui/overview") {
		t.Fatalf("admin landed on %s, want /ui/overview", loc)
	}

	c := cookie(t, tab, s.base, "ml_session")
	if c == nil {
		t.Fatal("no session cookie after sign-in")
	}
	if !c.HTTPOnly || c.SameSite != network.CookieSameSiteStrict || c.Path != "/ui/" {
		t.Fatalf("session cookie flags: HttpOnly=%v SameSite=%q Path=%q, want true, Strict, /ui/", c.HTTPOnly, c.SameSite, c.Path)
	}
	if seen, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[string](`document.cookie`)); err != nil || strings.Contains(seen, "ml_session") {
		t.Fatalf("page script sees the session cookie: %q (%v)", seen, err)
	}

	views := []struct{ name, path, text string }{
		{"overview", "/ui/overview", ""},
		{"customer", "/ui/customers/acme", "acme"},
		{"key", "/ui/customers/acme/keys/key_acme_a", "key_acme_a"},
	}
	for _, v := range views {
		resp := open(t, tab, s.base, v.path, "main")
		if resp.Status != http.StatusOK {
			t.Fatalf("%s: status %d", v.path, resp.Status)
		}
		csp := fmt.Sprint(resp.Headers["Content-Security-Policy"])
		if !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") || !strings.Contains(csp, "frame-ancestors") {
			t.Fatalf("%s: Content-Security-Policy %q", v.path, csp)
		}
		if xfo := fmt.Sprint(resp.Headers["X-Frame-Options"]); xfo != "DENY" {
			t.Fatalf("%s: X-Frame-Options %q, want DENY", v.path, xfo)
		}
		text := pageText(t, tab)
		if v.text != "" && !strings.Contains(text, v.text) {
			t.Fatalf("%s does not name %s:\n%s", v.path, v.text, text)
		}
		if v.name != "overview" && hasChartLibrary(t, tab) {
			// The chart is drawn from the page's CSV by the page's script.
			if err := chromedp.Do(tab.Ctx, chromedp.WaitVisible(chromedp.CSS("main .chart canvas"))); err != nil {
				t.Fatalf("%s: no chart drawn: %v", v.path, err)
			}
		}
		// The screenshots of these pages are the fuller ones of
		// TestUIAnalyticsOverviewEqualsAPI and TestUIChartsEqualTheAPI.
	}

	// The customer and key pages: the CSV of the chart equals the API's
	// answer to the same query, and the page shows the same totals.
	for _, v := range []struct {
		path, scope string
		requests    uint64
		units       float64
	}{
		{"/ui/customers/acme", "customer_id=acme", 11, 26},
		{"/ui/customers/acme/keys/key_acme_a", "api_key_id=key_acme_a", 7, 14},
	} {
		open(t, tab, s.base, v.path, "main")
		link := csvLink(t, tab, s.base)
		status, body := fetchStatus(t, tab, "GET", link, "")
		if status != http.StatusOK {
			t.Fatalf("%s: %d %s", link, status, body)
		}
		gotReq, gotUnits := csvTotals(t, body)
		u, err := s.usage(v.scope + "&" + pageQuery(t, tab))
		if err != nil {
			t.Fatal(err)
		}
		if gotReq != u.requests() || gotUnits != u.units(t) || gotReq != v.requests || gotUnits != v.units {
			t.Fatalf("%s: CSV %d requests %v units, API %d %v, posted %d %v", link, gotReq, gotUnits, u.requests(), u.units(t), v.requests, v.units)
		}
		if got := testid(t, tab, "total-requests"); got != strconv.FormatUint(u.requests(), 10) {
			t.Fatalf("%s shows %s requests, the API %d", v.path, got, u.requests())
		}
		if got := testid(t, tab, "total-units"); got != strconv.FormatFloat(u.units(t), 'f', -1, 64) {
			t.Fatalf("%s shows %s units, the API %v", v.path, got, u.units(t))
		}
	}

	// The plan on the key page equals GET /v1/limits.
	var lim struct {
		Used      json.Number `json:"used"`
		Included  json.Number `json:"included"`
		HardLimit json.Number `json:"hard_limit"`
	}
	testenv.Eventually(t, 60*time.Second, func() error {
		if err := getJSON(s.addr, "/v1/limits/key_acme_a", &lim); err != nil {
			return err
		}
		return nil
	})
	open(t, tab, s.base, "/ui/customers/acme/keys/key_acme_a", "main")
	for id, want := range map[string]json.Number{"plan-used": lim.Used, "plan-included": lim.Included, "plan-hard-limit": lim.HardLimit} {
		if got := testid(t, tab, id); want == "" || got != want.String() {
			t.Fatalf("key page shows %s %s, /v1/limits %q", id, got, want)
		}
	}
	noConsoleErrors(t, tab)
}

// TestUIPortalLinkOnceAndScoped exchanges a portal link in a real browser
// once (the second use is refused), then tries the customer's session on
// another customer's pages and data URLs (refused), and posts without the
// CSRF token (refused, the session still works).
func TestUIPortalLinkOnceAndScoped(t *testing.T) {
	s := startUIStack(t, "")
	operator := testenv.Browser(t)
	link := s.portalLink(t, "acme")

	tab := operator.Incognito(t)
	if err := chromedp.Do(tab.Ctx, chromedp.Navigate(link), chromedp.WaitVisible(chromedp.CSS("main"))); err != nil {
		t.Fatal(err)
	}
	if loc := location(t, tab, s.base); loc != "/ui/customers/acme" {
		t.Fatalf("portal link landed on %s, want /ui/customers/acme", loc)
	}
	noConsoleErrors(t, tab)

	again := operator.Incognito(t)
	resp, err := chromedp.RunResponse(again.Ctx, chromedp.Navigate(link))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != http.StatusForbidden || cookie(t, again, s.base, "ml_session") != nil {
		t.Fatalf("second use of the portal link: status %d, session cookie %v; want 403 and none", resp.Status, cookie(t, again, s.base, "ml_session"))
	}

	for _, path := range []string{
		"/ui/customers/globex",
		"/ui/customers/globex/usage.csv",
		"/ui/customers/globex/keys/key_globex",
		"/ui/customers/globex/keys/key_globex/usage.csv",
		"/ui/customers/acme/keys/key_globex",
		"/ui/customers/acme/keys/key_globex/usage.csv",
		"/ui/overview",
	} {
		status, body := fetchStatus(t, tab, "GET", path, "")
		if status < 400 || strings.Contains(body, `data-testid="total-requests"`) || strings.Contains(body, "window_start") {
			t.Fatalf("customer acme's session got %d for %s, want a refusal without data:\n%s", status, path, body)
		}
	}

	// (fetch does not follow redirects here: a sign-out that went through
	// answers 303, seen as status 0.)
	status, body := fetchStatus(t, tab, "POST", "/ui/signout", "csrf=forged")
	if status != http.StatusForbidden {
		t.Fatalf("sign-out with a forged CSRF token: %d %s", status, body)
	}
	status, body = fetchStatus(t, tab, "POST", "/ui/signout", "")
	if status != http.StatusBadRequest && status != http.StatusForbidden && status != http.StatusUnsupportedMediaType {
		t.Fatalf("sign-out without a CSRF token: %d %s", status, body)
	}
	open(t, tab, s.base, "/ui/customers/acme", "main")
	if loc := location(t, tab, s.base); loc != "/ui/customers/acme" {
		t.Fatalf("after the refused posts the portal session is gone (at %s)", loc)
	}
}

// TestUIEndedSessionBackToSignIn signs out through the page's form and
// puts the old session cookie back into the browser: the server ended the
// session, so the next page is the sign-in form and the cookie is cleared.
func TestUIEndedSessionBackToSignIn(t *testing.T) {
	s := startUIStack(t, "")
	tab := testenv.Browser(t)
	signIn(t, tab, s.base, e2eAdminToken)
	old := cookie(t, tab, s.base, "ml_session")
	if old == nil {
		t.Fatal("no session cookie after sign-in")
	}
	err := chromedp.Do(tab.Ctx,
		chromedp.Click(chromedp.ID("signout")),
		chromedp.WaitVisible(chromedp.ID("token")),
	)
	if err != nil {
		t.Fatalf("signing out: %v", err)
	}
	tab.Screenshot(t, "signin")
	httpOnly := true
	_, err = chromedp.Run(tab.Ctx, func(ctx context.Context, tg *chromedp.Target) (cdp.Empty, error) {
		return cdp.Call(ctx, tg, network.SetCookie, network.SetCookieParams{
			Name: old.Name, Value: old.Value, URL: s.base + "/ui/", Path: "/ui/", HTTPOnly: &httpOnly, SameSite: network.CookieSameSiteStrict,
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(tab.Ctx, chromedp.Navigate(s.base+"/ui/customers/acme"), chromedp.WaitVisible(chromedp.ID("token"))); err != nil {
		t.Fatalf("ended session: no sign-in form: %v", err)
	}
	if loc := location(t, tab, s.base); !strings.HasPrefix(loc, "/ui/signin") {
		t.Fatalf("ended session at %s, want /ui/signin", loc)
	}
	if c := cookie(t, tab, s.base, "ml_session"); c != nil {
		t.Fatalf("the ended session's cookie is still set: %+v", c)
	}
	noConsoleErrors(t, tab)
}

// TestUIExpiredSessionBackToSignIn signs in with ui.session_max at its
// shortest (1m) and keeps using the page: the session serves it until its
// absolute expiry, then the next page is the sign-in form, naming the page
// to return to, and the session cookie is gone. (Idle expiry is the same
// path on the server; TestExpiredSession in web covers both clocks.)
func TestUIExpiredSessionBackToSignIn(t *testing.T) {
	// The test loads the page again and again until the session ends
	// (a minute): the read limit of the admin token is raised so that
	// those loads, not the limit, are what the test sees.
	s := startUIStack(t, "ui:\n  session_idle: 1m\n  session_max: 1m\napi:\n  token_rate: 1000\n  token_burst: 1000\n")
	tab := testenv.Browser(t)
	signIn(t, tab, s.base, e2eAdminToken)
	page := "/ui/customers/acme"
	served := 0
	testenv.Eventually(t, 3*time.Minute, func() error {
		if err := chromedp.Do(tab.Ctx, chromedp.Navigate(s.base+page), chromedp.WaitVisible(chromedp.CSS("main"))); err != nil {
			return err
		}
		loc := location(t, tab, s.base)
		if strings.HasPrefix(loc, "/ui/signin") {
			if served == 0 {
				t.Fatalf("the session was refused at once, at %s", loc)
			}
			if want := "/ui/signin?next=" + url.QueryEscape(page); loc != want {
				t.Fatalf("expired session sent to %s, want %s", loc, want)
			}
			return nil
		}
		if loc != page {
			t.Fatalf("at %s, want %s or the sign-in form", loc, page)
		}
		served++
		return fmt.Errorf("session still active after %d pages", served)
	})
	if c := cookie(t, tab, s.base, "ml_session"); c != nil {
		t.Fatalf("the expired session's cookie is still set: %+v", c)
	}
	noConsoleErrors(t, tab)
}
