package web

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterline/meterline/api"
	"github.com/meterline/meterline/internal/httpx"
)

func TestSignIn(t *testing.T) {
	f := newFixture(t, opts{})
	t.Run("good token", func(t *testing.T) {
		b := f.browser()
		a := b.signIn(t, tokAdmin)
		if a.code != http.StatusSeeOther || a.header.Get("Location") != "/ui/overview" {
			t.Fatalf("sign-in: %d to %q, want 303 to /ui/overview: %s", a.code, a.header.Get("Location"), a.body)
		}
		if a.set[sessionCookie] == nil {
			t.Fatal("no session cookie set")
		}
		if p := b.get(t, "/ui/overview"); p.code != http.StatusOK || !strings.Contains(p.body, f.acme) {
			t.Fatalf("overview after sign-in: %d\n%s", p.code, p.body)
		}
	})
	t.Run("bad token", func(t *testing.T) {
		for _, tok := range []string{"nope", "", tokIngest} {
			b := f.browser()
			a := b.signIn(t, tok)
			if a.code != http.StatusUnauthorized && a.code != http.StatusForbidden {
				t.Fatalf("token %q: %d, want 401 or 403", tok, a.code)
			}
			if a.set[sessionCookie] != nil {
				t.Fatalf("token %q got a session cookie", tok)
			}
			if p := b.get(t, "/ui/overview"); p.code != http.StatusSeeOther {
				t.Fatalf("token %q: overview answered %d, want a redirect to sign in", tok, p.code)
			}
		}
	})
}

func TestSignInRateLimited(t *testing.T) {
	f := newFixture(t, opts{cfg: Config{SignInPerMinute: 3}})
	f.clock.t = f.clock.t.Truncate(time.Minute) // the whole test in one window
	b := f.browser()
	for i := 0; i < 3; i++ {
		if a := b.signIn(t, "wrong"); a.code != http.StatusUnauthorized {
			t.Fatalf("attempt %d: %d, want 401", i+1, a.code)
		}
	}
	a := b.signIn(t, tokAdmin) // even the right token: the address is over its limit
	if a.code != http.StatusTooManyRequests || a.header.Get("Retry-After") == "" {
		t.Fatalf("4th attempt: %d (Retry-After %q), want 429 with Retry-After", a.code, a.header.Get("Retry-After"))
	}
	if a.set[sessionCookie] != nil {
		t.Fatal("a refused attempt got a session")
	}
	f.clock.add(time.Minute)
	if a := b.signIn(t, tokAdmin); a.code != http.StatusSeeOther {
		t.Fatalf("next minute: %d, want 303", a.code)
	}
}

func TestCookieFlags(t *testing.T) {
	for _, tls := range []bool{false, true} {
		t.Run("tls="+strconv.FormatBool(tls), func(t *testing.T) {
			f := newFixture(t, opts{tls: tls})
			a := f.browser().signIn(t, tokAdmin)
			c := a.set[sessionCookie]
			if c == nil {
				t.Fatalf("no session cookie: %d %s", a.code, a.body)
			}
			if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/ui/" || c.Secure != tls {
				t.Fatalf("cookie %q: HttpOnly=%v SameSite=%v Path=%q Secure=%v; want HttpOnly, Strict, /ui/, Secure=%v",
					c.Name, c.HttpOnly, c.SameSite, c.Path, c.Secure, tls)
			}
			if len(c.Value) < 43 { // 256 bits in base64
				t.Fatalf("session id %q is shorter than 256 bits", c.Value)
			}
		})
	}
}

func checkHeaders(t *testing.T, what string, a answer, frameAncestors string) {
	t.Helper()
	csp := a.header.Get("Content-Security-Policy")
	for _, want := range []string{"script-src 'self'", "style-src 'self'", "frame-ancestors " + frameAncestors, "default-src 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("%s: Content-Security-Policy %q lacks %q", what, csp, want)
		}
	}
	if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
		t.Errorf("%s: Content-Security-Policy %q allows inline code", what, csp)
	}
	if frameAncestors == "'none'" && a.header.Get("X-Frame-Options") != "DENY" {
		t.Errorf("%s: X-Frame-Options %q, want DENY", what, a.header.Get("X-Frame-Options"))
	}
	if got := a.header.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("%s: X-Content-Type-Options %q", what, got)
	}
	if got := a.header.Get("Referrer-Policy"); got == "" {
		t.Errorf("%s: no Referrer-Policy", what)
	}
	if strings.Contains(a.header.Get("Content-Type"), "text/html") {
		if strings.Contains(a.body, " style=") || strings.Contains(a.body, "<style") || strings.Contains(a.body, "<script>") ||
			strings.Contains(a.body, " onclick=") {
			t.Errorf("%s: the page has inline style or script:\n%s", what, a.body)
		}
	}
}

func TestSecurityHeaders(t *testing.T) {
	f := newFixture(t, opts{})
	b := f.browser()
	pages := map[string]answer{}
	pages["sign-in form"] = b.get(t, "/ui/signin")
	pages["redirect to sign-in"] = b.get(t, "/ui/customers/"+f.acme)
	pages["static asset"] = b.get(t, "/ui/static/meterline.css")
	pages["unknown page"] = b.get(t, "/ui/nope")
	pages["bad portal code"] = b.get(t, "/ui/portal/exchange?code=x")
	pages["sign-in"] = b.signIn(t, tokAdmin)
	pages["overview"] = b.get(t, "/ui/overview")
	pages["customer page"] = b.get(t, "/ui/customers/"+f.acme)
	pages["bad parameter"] = b.get(t, "/ui/customers/"+f.acme+"?range=5y")
	pages["csv"] = b.get(t, "/ui/customers/"+f.acme+"/usage.csv")
	for what, a := range pages {
		checkHeaders(t, what, a, "'none'")
	}
	if a := pages["customer page"]; a.code != http.StatusOK {
		t.Fatalf("customer page: %d", a.code)
	}

	t.Run("frame_ancestors configured", func(t *testing.T) {
		f := newFixture(t, opts{cfg: Config{FrameAncestors: []string{"https://app.example.com"}}})
		a := f.browser().get(t, "/ui/signin")
		checkHeaders(t, "sign-in form", a, "https://app.example.com")
	})
}

func TestCSRFRefused(t *testing.T) {
	f := newFixture(t, opts{})
	t.Run("sign-in without the token", func(t *testing.T) {
		b := f.browser()
		b.get(t, "/ui/signin") // gets the pre-session cookie, but does not repeat it
		a := b.do(t, http.MethodPost, "/ui/signin", url.Values{"token": {tokAdmin}})
		if a.code != http.StatusForbidden || a.set[sessionCookie] != nil {
			t.Fatalf("sign-in without csrf: %d (session %v), want 403 and no session", a.code, a.set[sessionCookie] != nil)
		}
	})
	t.Run("sign-in with a token of another browser", func(t *testing.T) {
		attacker := f.browser()
		tok := csrfOf(t, attacker.get(t, "/ui/signin").body)
		victim := f.browser()
		victim.get(t, "/ui/signin")
		a := victim.do(t, http.MethodPost, "/ui/signin", url.Values{"token": {tokAdmin}, "csrf": {tok}})
		if a.code != http.StatusForbidden {
			t.Fatalf("sign-in with a foreign csrf token: %d, want 403", a.code)
		}
	})
	t.Run("sign-out without the token", func(t *testing.T) {
		b := f.browser()
		b.signIn(t, tokAdmin)
		if a := b.do(t, http.MethodPost, "/ui/signout", url.Values{}); a.code != http.StatusForbidden {
			t.Fatalf("sign-out without csrf: %d, want 403", a.code)
		}
		if a := b.do(t, http.MethodPost, "/ui/signout", url.Values{"csrf": {"forged"}}); a.code != http.StatusForbidden {
			t.Fatalf("sign-out with a forged csrf: %d, want 403", a.code)
		}
		if a := b.get(t, "/ui/overview"); a.code != http.StatusOK {
			t.Fatalf("the session did not survive a refused sign-out: %d", a.code)
		}
	})
}

func TestSignOutEndsSessionServerSide(t *testing.T) {
	f := newFixture(t, opts{})
	b := f.browser()
	b.signIn(t, tokAdmin)
	old := *b.cookies[sessionCookie]
	page := b.get(t, "/ui/overview")
	if a := b.do(t, http.MethodPost, "/ui/signout", url.Values{"csrf": {csrfOf(t, page.body)}}); a.code != http.StatusSeeOther {
		t.Fatalf("sign-out: %d %s", a.code, a.body)
	}
	replay := f.browser()
	replay.cookies[sessionCookie] = &old // a copy of the cookie kept from before
	if a := replay.get(t, "/ui/overview"); a.code != http.StatusSeeOther || !strings.HasPrefix(a.header.Get("Location"), "/ui/signin") {
		t.Fatalf("old session cookie after sign-out: %d to %q, want a redirect to sign in", a.code, a.header.Get("Location"))
	}
}

func TestExpiredSession(t *testing.T) {
	f := newFixture(t, opts{cfg: Config{SessionIdle: 10 * time.Minute, SessionMax: 30 * time.Minute}})
	page := "/ui/customers/" + f.acme
	t.Run("idle", func(t *testing.T) {
		b := f.browser()
		b.signIn(t, tokAdmin)
		f.clock.add(9 * time.Minute)
		if a := b.get(t, page); a.code != http.StatusOK {
			t.Fatalf("after 9 idle minutes: %d", a.code)
		}
		f.clock.add(10 * time.Minute)
		a := b.get(t, page)
		if a.code != http.StatusSeeOther || a.header.Get("Location") != "/ui/signin?next="+url.QueryEscape(page) {
			t.Fatalf("after 10 idle minutes: %d to %q, want 303 to sign in", a.code, a.header.Get("Location"))
		}
	})
	t.Run("absolute", func(t *testing.T) {
		b := f.browser()
		b.signIn(t, tokAdmin)
		for i := 0; i < 3; i++ { // active every 9 minutes: never idle
			f.clock.add(9 * time.Minute)
			if a := b.get(t, page); a.code != http.StatusOK {
				t.Fatalf("active session after %d min: %d", 9*(i+1), a.code)
			}
		}
		f.clock.add(9 * time.Minute) // 36 minutes after sign-in
		if a := b.get(t, page); a.code != http.StatusSeeOther {
			t.Fatalf("session past its absolute expiry: %d, want a redirect to sign in", a.code)
		}
	})
}

func portalLink(t *testing.T, f *fixture, token, body string) (int, httpx.ErrorBody, PortalResponse) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/v1/portal/sessions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var pr PortalResponse
	var eb httpx.ErrorBody
	if resp.StatusCode == http.StatusCreated {
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Fatalf("portal link answered Content-Type %q", ct)
		}
		if err := json.NewDecoder(resp.Body).Decode(&pr); err != nil {
			t.Fatal(err)
		}
	} else {
		_ = json.NewDecoder(resp.Body).Decode(&eb)
	}
	return resp.StatusCode, eb, pr
}

func exchangePath(t *testing.T, link string) string {
	t.Helper()
	u, err := url.Parse(link)
	if err != nil || u.Path != "/ui/portal/exchange" || u.Query().Get("code") == "" {
		t.Fatalf("portal url %q", link)
	}
	return u.RequestURI()
}

func TestPortalLink(t *testing.T) {
	f := newFixture(t, opts{})
	code, _, pr := portalLink(t, f, tokAdmin, `{"customer_id":"`+f.acme+`"}`)
	if code != http.StatusCreated {
		t.Fatalf("POST /v1/portal/sessions: %d", code)
	}
	if d := pr.ExpiresAt.Sub(f.clock.now()); d < 14*time.Minute || d > 15*time.Minute {
		t.Fatalf("default ttl: link expires in %s, want 15m", d)
	}
	path := exchangePath(t, pr.URL)
	b := f.browser()
	a := b.get(t, path)
	if a.code != http.StatusSeeOther || a.set[sessionCookie] == nil || a.header.Get("Location") != "/ui/customers/"+f.acme {
		t.Fatalf("exchange: %d to %q (cookie %v)", a.code, a.header.Get("Location"), a.set[sessionCookie] != nil)
	}
	if p := b.get(t, "/ui/customers/"+f.acme); p.code != http.StatusOK || testid(t, p.body, "total-requests") != "60" {
		t.Fatalf("portal customer page: %d", p.code)
	}
	if a := f.browser().get(t, path); a.code != http.StatusForbidden || a.set[sessionCookie] != nil {
		t.Fatalf("second use of the code: %d (session %v), want 403 and no session", a.code, a.set[sessionCookie] != nil)
	}

	t.Run("expired code", func(t *testing.T) {
		code, _, pr := portalLink(t, f, tokAdmin, `{"customer_id":"`+f.acme+`","ttl":"1m"}`)
		if code != http.StatusCreated {
			t.Fatalf("ttl 1m: %d", code)
		}
		f.clock.add(61 * time.Second)
		if a := f.browser().get(t, exchangePath(t, pr.URL)); a.code != http.StatusForbidden || a.set[sessionCookie] != nil {
			t.Fatalf("expired code: %d, want 403", a.code)
		}
	})
	t.Run("refused requests", func(t *testing.T) {
		for _, c := range []struct {
			token, body string
			want        int
		}{
			{tokAdmin, `{"customer_id":"nobody"}`, http.StatusNotFound},
			{tokAdmin, `{"customer_id":"` + f.acme + `","ttl":"16m"}`, http.StatusBadRequest},
			{tokAdmin, `{"customer_id":"` + f.acme + `","ttl":"-1m"}`, http.StatusBadRequest},
			{tokAdmin, `{"customer_id":""}`, http.StatusBadRequest},
			{tokAdmin, `{"customer_id":"` + f.acme + `","extra":1}`, http.StatusBadRequest},
			{tokAcme, `{"customer_id":"` + f.acme + `"}`, http.StatusForbidden},
			{"", `{"customer_id":"` + f.acme + `"}`, http.StatusUnauthorized},
		} {
			if code, eb, _ := portalLink(t, f, c.token, c.body); code != c.want || eb.Error == "" {
				t.Errorf("%s with token %q: %d (%q), want %d with an error", c.body, c.token, code, eb.Error, c.want)
			}
		}
	})
}

// TestCustomerSessionScope: a customer session (from a portal link or a
// customer token) sees its own customer only, by every URL.
func TestCustomerSessionScope(t *testing.T) {
	f := newFixture(t, opts{})
	_, _, pr := portalLink(t, f, tokAdmin, `{"customer_id":"`+f.acme+`"}`)
	portal := f.browser()
	portal.get(t, exchangePath(t, pr.URL))
	token := f.browser()
	token.signIn(t, tokAcme)
	for name, b := range map[string]*browser{"portal": portal, "customer token": token} {
		for _, path := range []string{
			"/ui/customers/" + f.globex,
			"/ui/customers/" + f.globex + "/usage.csv",
			"/ui/customers/" + f.globex + "/keys/" + f.k3,
			"/ui/customers/" + f.globex + "/keys/" + f.k3 + "/usage.csv",
			"/ui/customers/" + f.acme + "/keys/" + f.k3, // another customer's key under its own customer
			"/ui/customers/" + f.acme + "/keys/" + f.k3 + "/usage.csv",
			"/ui/overview",
		} {
			a := b.get(t, path)
			if a.code != http.StatusNotFound && a.code != http.StatusForbidden {
				t.Errorf("%s session: GET %s answered %d, want 403 or 404", name, path, a.code)
			}
			if strings.Contains(a.body, f.k3) && !strings.Contains(path, f.k3) || strings.Contains(a.body, "/v1/x") {
				t.Errorf("%s session: GET %s shows the other customer's data", name, path)
			}
		}
		for _, path := range []string{"/ui/customers/" + f.acme, "/ui/customers/" + f.acme + "/keys/" + f.k1, "/ui/customers/" + f.acme + "/usage.csv"} {
			if a := b.get(t, path); a.code != http.StatusOK {
				t.Errorf("%s session: own page %s answered %d", name, path, a.code)
			}
		}
	}
	admin := f.browser()
	admin.signIn(t, tokAdmin)
	if a := admin.get(t, "/ui/customers/"+f.globex+"/keys/"+f.k3); a.code != http.StatusOK {
		t.Fatalf("admin: globex key page %d", a.code)
	}
}

// TestChartLibrary: pages load uPlot when it was installed and embedded,
// and say that it is missing otherwise; the tables are there either way.
func TestChartLibrary(t *testing.T) {
	f := newFixture(t, opts{})
	b := f.browser()
	b.signIn(t, tokAdmin)
	p := b.get(t, "/ui/customers/"+f.acme+"?range=24h")
	if p.code != http.StatusOK || !strings.Contains(p.body, `data-testid="usage-table"`) {
		t.Fatalf("customer page: %d\n%s", p.code, p.body)
	}
	js := b.get(t, assetURL("vendor/uplot/uPlot.iife.min.js"))
	if f.ui.hasChart {
		if !strings.Contains(p.body, `src="`+assetURL("vendor/uplot/uPlot.iife.min.js")+`"`) || js.code != http.StatusOK ||
			!strings.Contains(js.header.Get("Content-Type"), "javascript") {
			t.Fatalf("uPlot embedded, yet the page does not load it or it is not served (%d %q)", js.code, js.header.Get("Content-Type"))
		}
	} else if !strings.Contains(p.body, "chart library is missing") || strings.Contains(p.body, "vendor/uplot") {
		t.Fatalf("uPlot not embedded, yet the page does not say so:\n%s", p.body)
	}
	if own := b.get(t, "/ui/static/meterline.js"); own.code != http.StatusOK {
		t.Fatalf("meterline.js: %d", own.code)
	}
}

// TestPageReadsLimitedPerPrincipal: page and CSV requests count against the
// principal's read limits, as the API's reads do, so one customer's portal
// cannot slow another's.
func TestPageReadsLimitedPerPrincipal(t *testing.T) {
	// One request per principal, then the bucket refills in 1000 s.
	lim := api.NewLimiter(api.ReadConfig{TokenRate: 0.001, TokenBurst: 1}.WithDefaults(), prometheus.NewRegistry())
	f := newFixture(t, opts{limiter: lim})
	portal := f.browser()
	_, _, pr := portalLink(t, f, tokAdmin, `{"customer_id":"`+f.acme+`"}`)
	portal.get(t, exchangePath(t, pr.URL))
	page := "/ui/customers/" + f.acme
	if a := portal.get(t, page); a.code != http.StatusOK {
		t.Fatalf("first page: %d", a.code)
	}
	for _, p := range []string{page, page + "/usage.csv"} {
		if a := portal.get(t, p); a.code != http.StatusTooManyRequests || a.header.Get("Retry-After") == "" {
			t.Fatalf("%s over the limit: %d (Retry-After %q), want 429", p, a.code, a.header.Get("Retry-After"))
		}
	}
	admin := f.browser()
	admin.signIn(t, tokAdmin)
	if a := admin.get(t, page); a.code != http.StatusOK {
		t.Fatalf("another principal's page while the portal is limited: %d", a.code)
	}
}
