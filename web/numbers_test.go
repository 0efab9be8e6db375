package web

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
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

// TestOverviewEqualsAPI: the overview's totals are the sum of GET
// /v1/usage's answers for the catalogue's customers.
func TestOverviewEqualsAPI(t *testing.T) {
	f := newFixture(t, opts{})
	b := f.browser()
	b.signIn(t, tokAdmin)
	p := b.get(t, "/ui/overview?range=24h")
	if p.code != http.StatusOK {
		t.Fatalf("overview: %d\n%s", p.code, p.body)
	}
	// The fixture's events are within the last 4 hours; the other tests'
	// customers are not in this catalogue.
	var req uint64
	var units float64
	for _, c := range []string{f.acme, f.globex} {
		q := url.Values{"customer_id": {c}, "from": {f.start.Add(-time.Hour).Format(time.RFC3339)}, "window": {"hour"}}
		code, body := apiGet(t, f, tokAdmin, q, "")
		var resp api.UsageResponse
		if err := json.Unmarshal(body, &resp); code != http.StatusOK || err != nil {
			t.Fatalf("GET /v1/usage: %d %v", code, err)
		}
		for _, r := range resp.Rows {
			req += r.Requests
			u, _ := r.Units.Float64()
			units += u
		}
	}
	if req != 90 {
		t.Fatalf("the API answered %d requests, the fixture has 90", req)
	}
	if got := testid(t, p.body, "overview-total-requests"); got != strconv.FormatUint(req, 10) {
		t.Errorf("overview requests %q, the API %d", got, req)
	}
	if got := testid(t, p.body, "overview-total-units"); got != strconv.FormatFloat(units, 'f', -1, 64) {
		t.Errorf("overview units %q, the API %v", got, units)
	}
	if !strings.Contains(p.body, `data-testid="top-customers"`) || strings.Index(p.body, ">"+f.acme+"<") > strings.Index(p.body, ">"+f.globex+"<") {
		t.Errorf("top customers missing or not by requests:\n%s", p.body)
	}
}
