package api

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/auth"
	"github.com/meterline/meterline/internal/testenv"
)

const (
	tokAdmin   = "t-admin"
	tokFinance = "t-finance"
	tokAcme    = "t-acme"
	tokGlobex  = "t-globex"
	tokIngest  = "t-ingest"
)

func tokens(t testing.TB) *auth.Tokens {
	t.Helper()
	tk, err := auth.New([]auth.TokenConfig{
		{Name: "admin", SHA256: auth.Hash(tokAdmin), Scopes: []string{"admin"}},
		{Name: "finance", SHA256: auth.Hash(tokFinance), Scopes: []string{"finance"}},
		{Name: "acme-dash", SHA256: auth.Hash(tokAcme), Scopes: []string{"customer:" + acme}},
		{Name: "globex-dash", SHA256: auth.Hash(tokGlobex), Scopes: []string{"customer:" + globex}},
		{Name: "gw", SHA256: auth.Hash(tokIngest), Scopes: []string{"ingest"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

// Customer and key names are unique per test run: the engine is shared.
var (
	acme   = testenv.Unique("acme")
	globex = testenv.Unique("globex")
	k1     = testenv.Unique("k1")
	k2     = testenv.Unique("k2")
	k3     = testenv.Unique("k3")
)

// fixture loads a known set of events and rolls them up once.
type fixture struct {
	srv   *httptest.Server
	start time.Time // first hour of the data
	view  *limits.View
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	db := requireDB(t)
	start := time.Now().UTC().Truncate(time.Hour).Add(-3 * time.Hour)
	var evs []ev
	for h := 0; h < 3; h++ {
		for i := 0; i < 10; i++ {
			status := uint16(200)
			switch i {
			case 7:
				status = 404
			case 8, 9:
				status = 503
			}
			at := start.Add(time.Duration(h)*time.Hour + time.Duration(i)*time.Minute)
			evs = append(evs,
				ev{fmt.Sprintf("a-%d-%d", h, i), k1, acme, "/v1/pets/{id}", at, status, 1.5, float64(10 + i), "203.0.113.0"},
				ev{fmt.Sprintf("b-%d-%d", h, i), k2, acme, "/v1/orders", at, 200, 2, 20, "198.51.100.0"},
				ev{fmt.Sprintf("c-%d-%d", h, i), k3, globex, "/v1/x", at, 200, 1, 5, "192.0.2.0"},
			)
		}
	}
	insertRaw(t, db, evs)
	insertRaw(t, db, evs[:20]) // duplicates: stored twice, counted once
	agg := aggregate.NewAggregator(aggregate.Config{Settle: time.Millisecond}, db, prometheus.NewRegistry(), quiet())
	if _, err := agg.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
	q := aggregate.NewQuerier(db)
	cat, err := limits.ParseCatalogue([]byte(fmt.Sprintf(`plans:
  - {id: starter, included_units: 100, hard_limit: 200, alert_thresholds: [0.8, 1.0]}
customers:
  - {id: %s, plan: starter, keys: [%s, %s]}
  - {id: %s, plan: starter, keys: [%s]}
`, acme, k1, k2, globex, k3)))
	if err != nil {
		t.Fatal(err)
	}
	view := limits.NewView(limits.Config{DisableAlerts: true}, limits.NewRegistry(cat), q, db, prometheus.NewRegistry(), quiet())
	t.Cleanup(view.Close)
	mux := http.NewServeMux()
	tk := tokens(t)
	mux.Handle("/v1/usage", NewUsageHandler(q, tk))
	mux.Handle("GET /v1/limits/{api_key_id}", NewLimitsHandler(view, tk))
	mux.Handle("GET /v1/limits", NewLimitChangesHandler(view, tk))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &fixture{srv: srv, start: start, view: view}
}

func (f *fixture) get(t testing.TB, token, path string, hdr ...string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, f.srv.URL+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (f *fixture) usagePath(params ...string) string {
	q := url.Values{}
	q.Set("from", f.start.Format(time.RFC3339))
	q.Set("to", f.start.Add(3*time.Hour).Format(time.RFC3339))
	for i := 0; i+1 < len(params); i += 2 {
		if params[i+1] == "" {
			q.Del(params[i])
		} else {
			q.Set(params[i], params[i+1])
		}
	}
	return "/v1/usage?" + q.Encode()
}

func TestUsageFiguresAndCSV(t *testing.T) {
	f := newFixture(t)
	code, body := f.get(t, tokAdmin, f.usagePath("customer_id", acme, "group_by", "api_key_id,status_class"))
	if code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	var r UsageResponse
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatal(err)
	}
	type agg struct {
		req, ce, se uint64
		units       string
	}
	got := map[string]agg{}
	for _, row := range r.Rows {
		k := row.Group["api_key_id"] + "/" + row.Group["status_class"]
		a := got[k]
		a.req += row.Requests
		a.ce += row.ClientErrors
		a.se += row.ServerErrors
		got[k] = a
	}
	want := map[string]agg{k1 + "/2xx": {21, 0, 0, ""}, k1 + "/4xx": {3, 3, 0, ""}, k1 + "/5xx": {6, 0, 6, ""}, k2 + "/2xx": {30, 0, 0, ""}}
	for k, w := range want {
		g := got[k]
		if g.req != w.req || g.ce != w.ce || g.se != w.se {
			t.Errorf("%s: got %+v want %+v", k, g, w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("groups %v", got)
	}
	// Totals by hour: 20 acme requests per hour (duplicates counted once), units 10*1.5+10*2.
	code, body = f.get(t, tokAcme, f.usagePath())
	if code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	r = UsageResponse{}
	_ = json.Unmarshal([]byte(body), &r)
	if len(r.Rows) != 3 || r.CustomerID != acme {
		t.Fatalf("rows %d customer %q: %s", len(r.Rows), r.CustomerID, body)
	}
	for _, row := range r.Rows {
		if row.Requests != 20 || row.Units.String() != "35" && row.Units.String() != "35.000000" || row.DistinctClientIPs != 2 {
			t.Errorf("hour %s: %+v", row.WindowStart, row)
		}
		if row.LatencyMS.P50 <= 0 || row.LatencyMS.P99 < row.LatencyMS.P50 {
			t.Errorf("latency %+v", row.LatencyMS)
		}
	}
	code, body = f.get(t, tokFinance, f.usagePath("customer_id", acme, "window", "day", "group_by", "route"), "Accept", "text/csv")
	if code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	recs, err := csv.NewReader(strings.NewReader(body)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(recs[0][:3], ",") != "window_start,route,requests" || len(recs) < 3 {
		t.Fatalf("csv: %q", body)
	}
}

func TestUsageAccessControl(t *testing.T) {
	f := newFixture(t)
	cases := []struct {
		name, token, path string
		code              int
		msg               string
	}{
		{"no token", "", f.usagePath("customer_id", acme), 401, "missing bearer token"},
		{"ingest token", tokIngest, f.usagePath("customer_id", acme), 403, "lacks a scope"},
		{"own customer", tokAcme, f.usagePath("customer_id", acme), 200, acme},
		{"other customer", tokAcme, f.usagePath("customer_id", globex), 403, "may not read customer"},
		{"other customer's key", tokAcme, f.usagePath("api_key_id", k3), 200, `"rows":[]`},
		{"finance reads all", tokFinance, f.usagePath("customer_id", globex), 200, globex},
		{"admin reads a key", tokAdmin, f.usagePath("api_key_id", k3), 200, `"requests":10`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, body := f.get(t, c.token, c.path)
			if code != c.code || !strings.Contains(body, c.msg) {
				t.Fatalf("%d %s; want %d containing %q", code, body, c.code, c.msg)
			}
		})
	}
}

// TestUsageBadParameters: each bad parameter gets a 400 naming it, and the
// data is untouched.
func TestUsageBadParameters(t *testing.T) {
	f := newFixture(t)
	from := f.start.Format(time.RFC3339)
	cases := []struct {
		name, path, param string
	}{
		{"reversed range", f.usagePath("customer_id", acme, "from", f.start.Add(time.Hour).Format(time.RFC3339), "to", from), "from"},
		{"empty range", f.usagePath("customer_id", acme, "to", from), "from"},
		{"huge range", f.usagePath("customer_id", acme, "from", "1971-01-01T00:00:00Z"), "to"},
		{"minute window over 7 days", f.usagePath("customer_id", acme, "window", "minute", "from", f.start.Add(-8*24*time.Hour).Format(time.RFC3339)), "to"},
		{"unknown window", f.usagePath("customer_id", acme, "window", "week"), "window"},
		{"unknown tz", f.usagePath("customer_id", acme, "tz", "Mars/Olympus"), "tz"},
		{"local tz", f.usagePath("customer_id", acme, "tz", "Local"), "tz"},
		{"group_by injection", f.usagePath("customer_id", acme, "group_by", "route);DROP TABLE events"), "group_by"},
		{"repeated group_by", f.usagePath("customer_id", acme, "group_by", "route,route"), "group_by"},
		{"from missing", f.usagePath("customer_id", acme, "from", ""), "from"},
		{"from not a time", f.usagePath("customer_id", acme, "from", "yesterday"), "from"},
		{"unknown parameter", f.usagePath("customer_id", acme, "sql", "SELECT 1"), "sql"},
		{"repeated parameter", f.usagePath("customer_id", acme) + "&from=" + url.QueryEscape(from), "from"},
		{"customer id with quote", f.usagePath("customer_id", "a' OR '1'='1"), ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, body := f.get(t, tokAdmin, c.path)
			if c.param == "" { // hostile but valid: bound as a parameter, matches nothing
				if code != 200 || !strings.Contains(body, `"rows":[]`) {
					t.Fatalf("%d %s", code, body)
				}
				return
			}
			if code != 400 || !strings.Contains(body, c.param) {
				t.Fatalf("%d %s; want 400 naming %q", code, body, c.param)
			}
		})
	}
	code, body := f.get(t, tokAdmin, f.usagePath("customer_id", acme))
	if code != 200 || !strings.Contains(body, `"requests":20`) {
		t.Fatalf("data changed after bad requests: %d %s", code, body)
	}
}

func TestLimitsEndpoint(t *testing.T) {
	f := newFixture(t)
	if err := f.view.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Events this month only count toward the period; the fixture's three
	// hours may straddle a month start, so compute what is expected.
	periodStart := time.Date(time.Now().UTC().Year(), time.Now().UTC().Month(), 1, 0, 0, 0, 0, time.UTC)
	var want float64
	for h := 0; h < 3; h++ {
		for i := 0; i < 10; i++ {
			if !f.start.Add(time.Duration(h)*time.Hour + time.Duration(i)*time.Minute).Before(periodStart) {
				want += 3.5
			}
		}
	}
	code, body := f.get(t, tokIngest, "/v1/limits/"+k1)
	if code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	var l LimitResponse
	if err := json.Unmarshal([]byte(body), &l); err != nil {
		t.Fatal(err)
	}
	if l.CustomerID != acme || l.PlanID != "starter" || l.Used != want || l.Included != 100 || l.Remaining != max(100-want, 0) || l.HardLimit == nil || *l.HardLimit != 200 ||
		!l.ResetAt.Equal(periodStart.AddDate(0, 1, 0)) {
		t.Fatalf("limit %+v, want used %v", l, want)
	}
	for _, c := range []struct {
		token, path string
		code        int
	}{
		{tokAcme, "/v1/limits/" + k2, 200},
		{tokAcme, "/v1/limits/" + k3, 404}, // another customer's key looks unknown
		{tokGlobex, "/v1/limits/" + k3, 200},
		{tokIngest, "/v1/limits/nope", 404},
		{tokIngest, "/v1/limits/" + k1 + "?x=1", 400},
		{"", "/v1/limits/" + k1, 401},
		{tokIngest, "/v1/limits/" + strings.Repeat("k", 129), 400},
	} {
		if code, body := f.get(t, c.token, c.path); code != c.code {
			t.Errorf("%s: %d %s, want %d", c.path, code, body, c.code)
		}
	}
}

func TestLimitChangesEndpoint(t *testing.T) {
	f := newFixture(t)
	if code, body := f.get(t, tokIngest, "/v1/limits"); code != 503 {
		t.Fatalf("before the first refresh: %d %s", code, body)
	}
	if err := f.view.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	walk := func(token string, limit int) (map[string]limits.KeyLimitState, string) {
		t.Helper()
		got := map[string]limits.KeyLimitState{}
		since := ""
		for range 100 {
			code, body := f.get(t, token, fmt.Sprintf("/v1/limits?since=%s&limit=%d", url.QueryEscape(since), limit))
			if code != 200 {
				t.Fatalf("%d %s", code, body)
			}
			var p limits.ChangesPage
			if err := json.Unmarshal([]byte(body), &p); err != nil {
				t.Fatal(err)
			}
			if len(p.Keys) > limit {
				t.Fatalf("%d keys on a page of %d", len(p.Keys), limit)
			}
			for _, k := range p.Keys {
				got[k.APIKeyID] = *k
			}
			since = p.Version
			if !p.More {
				return got, since
			}
		}
		t.Fatal("pages never end")
		return nil, ""
	}
	all, ver := walk(tokIngest, 1)
	if len(all) != 3 || all[k1].CustomerID != acme || all[k3].CustomerID != globex || all[k1].Status != limits.KeyActive || all[k1].HardLimit == nil {
		t.Fatalf("ingest token sees %+v", all)
	}
	if admin, _ := walk(tokAdmin, 2); len(admin) != 3 {
		t.Errorf("admin sees %d keys", len(admin))
	}
	// A customer token sees only its own keys.
	mine, _ := walk(tokAcme, 1)
	if len(mine) != 2 || mine[k3].APIKeyID != "" {
		t.Errorf("acme sees %+v", mine)
	}
	theirs, _ := walk(tokGlobex, 1000)
	if len(theirs) != 1 || theirs[k3].APIKeyID != k3 {
		t.Errorf("globex sees %+v", theirs)
	}
	// Nothing changed since: an empty page with the same version.
	code, body := f.get(t, tokIngest, "/v1/limits?since="+url.QueryEscape(ver))
	if code != 200 || !strings.Contains(body, `"keys":[]`) || !strings.Contains(body, `"version":"`+ver+`"`) {
		t.Errorf("no change: %d %s", code, body)
	}
	for _, c := range []struct {
		token, path string
		code        int
	}{
		{"", "/v1/limits", 401},
		{"wrong", "/v1/limits", 401},
		{tokIngest, "/v1/limits?limit=0", 400},
		{tokIngest, "/v1/limits?limit=10001", 400},
		{tokIngest, "/v1/limits?limit=-1", 400},
		{tokIngest, "/v1/limits?limit=1e3", 400},
		{tokIngest, "/v1/limits?limit=99999999999999999999999", 400},
		{tokIngest, "/v1/limits?since=%zz", 400},
		{tokIngest, "/v1/limits?since=abc", 400},
		{tokIngest, "/v1/limits?since=" + strings.Repeat("9", 500), 400},
		{tokIngest, "/v1/limits?since=1&since=2", 400},
		{tokIngest, "/v1/limits?customer_id=" + globex, 400},
		{tokIngest, "/v1/limits?x=" + strings.Repeat("a", 2000), 400},
		{tokIngest, "/v1/limits?since=0", 200},
	} {
		if code, body := f.get(t, c.token, c.path); code != c.code {
			t.Errorf("%.80s: %d %s, want %d", c.path, code, body, c.code)
		}
	}
	req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/v1/limits", nil)
	req.Header.Set("Authorization", "Bearer "+tokIngest)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
}
