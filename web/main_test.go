package web

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/api"
	"github.com/meterline/meterline/auth"
	"github.com/meterline/meterline/billing"
	"github.com/meterline/meterline/ingest"
	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/privacy"
	"github.com/meterline/meterline/store"
)

// engine is the ClickHouse engine shared by this package's tests.
var engine testenv.Engine

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(testenv.RunWithEngine(m, "web", &engine))
}

const (
	tokAdmin   = "t-admin"
	tokAcme    = "t-acme"
	tokIngest  = "t-ingest"
	tokFinance = "t-finance"
)

// clock is a settable clock for sessions, codes and the rate limit.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// fixture is the interface over the real engine, with two customers'
// rolled-up events, served next to GET /v1/usage.
type fixture struct {
	srv          *httptest.Server
	clock        *clock
	ui           *Server
	start        time.Time
	acme, globex string
	finance      *billing.Reader
	privacy      *api.Privacy
	k1, k2, k3   string
}

type opts struct {
	cfg     Config
	tls     bool
	limiter *api.Limiter
}

func newFixture(t *testing.T, o opts) *fixture {
	t.Helper()
	db := engine.Require(t)
	f := &fixture{acme: testenv.Unique("acme"), globex: testenv.Unique("globex"),
		k1: testenv.Unique("k1"), k2: testenv.Unique("k2"), k3: testenv.Unique("k3")}
	f.start = time.Now().UTC().Truncate(time.Hour).Add(-3 * time.Hour)
	var rows [][]any
	stored := time.Now().UTC()
	add := func(id string, at time.Time, key, cust, route string, status uint16, units, latency float64) {
		rows = append(rows, []any{id, at, key, cust, "gw-1", "GET", route, status, latency,
			uint64(100), uint64(1000), "203.0.113.0", "ua", units, map[string]string{}, int32(0), int64(len(rows)), stored})
	}
	for h := 0; h < 3; h++ {
		for i := 0; i < 10; i++ {
			at := f.start.Add(time.Duration(h)*time.Hour + time.Duration(i)*time.Minute)
			status := uint16(200)
			if i == 7 {
				status = 404
			} else if i >= 8 {
				status = 503
			}
			add(fmt.Sprintf("%s-a-%d-%d", f.acme, h, i), at, f.k1, f.acme, "/v1/pets/{id}", status, 1.5, float64(10+i))
			add(fmt.Sprintf("%s-b-%d-%d", f.acme, h, i), at, f.k2, f.acme, "/v1/orders", 200, 2, 20)
			add(fmt.Sprintf("%s-c-%d-%d", f.globex, h, i), at, f.k3, f.globex, "/v1/x", 200, 1, 5)
		}
	}
	if err := db.Insert(context.Background(), ingest.EventsTable, ingest.EventColumns, rows, store.InsertOptions{}); err != nil {
		t.Fatal(err)
	}
	agg := aggregate.NewAggregator(aggregate.Config{Settle: time.Millisecond}, db, prometheus.NewRegistry(), testenv.Log())
	if _, err := agg.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
	cat, err := limits.ParseCatalogue([]byte(fmt.Sprintf(`plans:
  - {id: starter, included_units: 100, hard_limit: 200}
customers:
  - {id: %s, plan: starter, keys: [%s, %s]}
  - {id: %s, plan: starter, keys: [%s]}
`, f.acme, f.k1, f.k2, f.globex, f.k3)))
	if err != nil {
		t.Fatal(err)
	}
	q := aggregate.NewQuerier(db)
	registry := limits.NewRegistry(cat)
	view := limits.NewView(limits.Config{DisableAlerts: true}, registry, q, db, prometheus.NewRegistry(), testenv.Log())
	t.Cleanup(view.Close)
	if err := view.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	tk, err := auth.New([]auth.TokenConfig{
		{Name: "admin", SHA256: auth.Hash(tokAdmin), Scopes: []string{"admin"}},
		{Name: "acme-dash", SHA256: auth.Hash(tokAcme), Scopes: []string{"customer:" + f.acme}},
		{Name: "finance", SHA256: auth.Hash(tokFinance), Scopes: []string{"finance"}},
		{Name: "gw", SHA256: auth.Hash(tokIngest), Scopes: []string{"ingest"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	f.clock = &clock{t: time.Now()}
	cfg := o.cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	mapping, err := billing.ParseMapping([]byte(fmt.Sprintf(`plans:
  - {plan: starter, mode: meter_events, event_name: api_units}
customers:
  - {id: %s, stripe_customer_id: cus_%s}
`, f.acme, strings.ReplaceAll(f.acme, "-", ""))), cat)
	if err != nil {
		t.Fatal(err)
	}
	f.finance = &billing.Reader{DB: db, Load: func() (*billing.Mapping, billing.Plans, error) { return mapping, registry, nil }}
	erasures := privacy.NewService(privacy.Config{}.WithDefaults(), db, prometheus.NewRegistry(), testenv.Log())
	f.privacy = &api.Privacy{DB: db, Service: erasures, Tokens: tk, Log: testenv.Log()}
	f.ui = New(cfg, Deps{Privacy: f.privacy, Tokens: tk, Usage: q, Limits: view, Registry: registry, ReadLimiter: o.limiter, TLS: o.tls, Log: testenv.Log(), Now: f.clock.now,
		Finance: f.finance})
	mux := http.NewServeMux()
	mux.Handle("/ui/", f.ui.Handler())
	mux.Handle("/v1/portal/sessions", f.ui.PortalSessions())
	mux.Handle("/v1/usage", api.NewUsageHandler(q, tk))
	f.privacy.Register(mux)
	if o.tls {
		f.srv = httptest.NewTLSServer(mux)
	} else {
		f.srv = httptest.NewServer(mux)
	}
	t.Cleanup(f.srv.Close)
	return f
}

// browser is a client that keeps cookies by hand (so tests see their
// flags) and does not follow redirects.
type browser struct {
	f       *fixture
	cookies map[string]*http.Cookie
}

func (f *fixture) browser() *browser { return &browser{f: f, cookies: map[string]*http.Cookie{}} }

type answer struct {
	code   int
	header http.Header
	body   string
	set    map[string]*http.Cookie
}

func (b *browser) do(t *testing.T, method, path string, form url.Values, hdr ...string) answer {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, b.f.srv.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	for _, c := range b.cookies {
		req.AddCookie(&http.Cookie{Name: c.Name, Value: c.Value})
	}
	cl := b.f.srv.Client()
	cl.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := answer{code: resp.StatusCode, header: resp.Header, body: string(raw), set: map[string]*http.Cookie{}}
	for _, c := range resp.Cookies() {
		a.set[c.Name] = c
		if c.MaxAge < 0 {
			delete(b.cookies, c.Name)
		} else {
			b.cookies[c.Name] = c
		}
	}
	return a
}

func (b *browser) get(t *testing.T, path string) answer {
	t.Helper()
	return b.do(t, http.MethodGet, path, nil)
}

var hiddenCSRF = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func csrfOf(t *testing.T, body string) string {
	t.Helper()
	m := hiddenCSRF.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no CSRF field in the page:\n%s", body)
	}
	return m[1]
}

// signIn signs in with token through the form and returns the answer.
func (b *browser) signIn(t *testing.T, token string) answer {
	t.Helper()
	form := b.get(t, "/ui/signin")
	if form.code != http.StatusOK {
		t.Fatalf("GET /ui/signin: %d %s", form.code, form.body)
	}
	return b.do(t, http.MethodPost, "/ui/signin", url.Values{"token": {token}, "csrf": {csrfOf(t, form.body)}, "next": {"/ui/"}})
}

// testid returns the text of the element with that data-testid.
func testid(t *testing.T, body, id string) string {
	t.Helper()
	m := regexp.MustCompile(`data-testid="` + regexp.QuoteMeta(id) + `"[^>]*>([^<]*)<`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no element data-testid=%q in the page:\n%s", id, body)
	}
	return strings.TrimSpace(m[1])
}
