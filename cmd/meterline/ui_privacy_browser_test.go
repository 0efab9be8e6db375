package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/meterline/meterline/internal/testenv"
)

// TestUIPrivacyExportAndErasure signs in with the admin token in chromium,
// downloads a customer's export through the privacy page's form (the same
// rows as GET /v1/privacy/export), requests the erasure of a customer made
// for this test through the form with the typed confirmation, and follows
// it on its page until it is done, with the counts GET
// /v1/privacy/erasures/{id} reports.
func TestUIPrivacyExportAndErasure(t *testing.T) {
	s := startUIStack(t, "")
	victim := "initech"
	var evs []map[string]any
	for i := range 3 {
		e := event(fmt.Sprintf("ui-priv-%d", i), "key_initech")
		e["customer_id"] = victim
		evs = append(evs, e)
	}
	postEvents(t, s.addr, evs)
	testenv.Eventually(t, 90*time.Second, func() error {
		u, err := s.usage("customer_id=" + victim + "&window=hour&from=" + time.Now().Add(-2*time.Hour).UTC().Truncate(time.Hour).Format(time.RFC3339))
		if err != nil {
			return err
		}
		if u.requests() != 3 {
			return fmt.Errorf("%d requests of %s stored", u.requests(), victim)
		}
		return nil
	})

	tab := testenv.Browser(t)
	signIn(t, tab, s.base, e2eAdminToken)
	open(t, tab, s.base, "/ui/privacy", "#erasure-form")
	noConsoleErrors(t, tab)

	// The export form's answer, fetched by the page itself with its CSRF
	// token (a download does not navigate).
	csrf, err := chromedp.Run(tab.Ctx, chromedp.AttributeValue(chromedp.CSS(`#export-form input[name="csrf"]`), "value"))
	if err != nil {
		t.Fatal(err)
	}
	form := url.Values{"csrf": {csrf.Value}, "customer_id": {"acme"}, "api_key_id": {""}, "format": {"ndjson"}}
	code, got := fetchStatus(t, tab, http.MethodPost, "/ui/privacy/export", form.Encode())
	if code != http.StatusOK {
		t.Fatalf("export form: %d %s", code, got)
	}
	want := apiGet(t, s.addr, "/v1/privacy/export?customer_id=acme")
	if g, w := exportRows(got), exportRows(want); g != w || !strings.Contains(g, `"table":"events"`) {
		t.Fatalf("the form's export differs from the API's:\n%s", lineDiff(g, w))
	}

	if err := chromedp.Do(tab.Ctx,
		chromedp.SendKeys(chromedp.ID("erase-customer"), victim),
		chromedp.SendKeys(chromedp.ID("erase-confirm"), victim),
		chromedp.SendKeys(chromedp.ID("erase-reason"), "browser test"),
		chromedp.Click(chromedp.ID("erase-submit")),
		chromedp.WaitVisible(chromedp.CSS(`[data-testid="erasure-status"]`)),
	); err != nil {
		t.Fatalf("erasure form: %v", err)
	}
	path := location(t, tab, s.base)
	id := strings.TrimPrefix(path, "/ui/privacy/erasures/")
	if id == path || id == "" {
		t.Fatalf("after the erasure form the browser is at %s", path)
	}
	var api struct {
		Status  string            `json:"status"`
		Removed map[string]uint64 `json:"removed"`
	}
	testenv.Eventually(t, 120*time.Second, func() error {
		open(t, tab, s.base, path, `[data-testid="erasure-status"]`)
		if st := testid(t, tab, "erasure-status"); st != "done" {
			return fmt.Errorf("erasure %s is %s on its page", id, st)
		}
		return nil
	})
	if err := getJSON(s.addr, "/v1/privacy/erasures/"+id, &api); err != nil {
		t.Fatal(err)
	}
	if api.Status != "done" || api.Removed["events"] != 3 {
		t.Fatalf("GET /v1/privacy/erasures/%s: %+v, want done with 3 events removed", id, api)
	}
	for table, n := range api.Removed {
		cell, err := chromedp.Run(tab.Ctx, chromedp.Text(chromedp.CSS(`[data-testid="removed"] td[data-table="`+table+`"]`)))
		if err != nil || strings.TrimSpace(cell) != fmt.Sprint(n) {
			t.Errorf("page: %s removed %q (%v), API %d", table, cell, err, n)
		}
	}
	noConsoleErrors(t, tab)
	tab.Screenshot(t, "erasure")
	open(t, tab, s.base, "/ui/privacy", `[data-testid="erasures"]`)
	if !strings.Contains(pageText(t, tab), id) {
		t.Errorf("the privacy page does not list erasure %s", id)
	}
	tab.Screenshot(t, "privacy")
}

// apiGet answers GET path with the admin token.
func apiGet(t *testing.T, addr, path string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	req.Header.Set("Authorization", "Bearer "+e2eAdminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	return string(b)
}

var computedAt = regexp.MustCompile(`,"computed_at":"[^"]*"`)

// exportRows is an NDJSON export without the lines that change between two
// exports of the same data: its summary, audit records, limits and the
// rollups' computed_at.
func exportRows(s string) string {
	var keep []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		var row struct {
			Table string `json:"table"`
		}
		if err := json.Unmarshal([]byte(l), &row); err != nil {
			keep = append(keep, "unparsable: "+l)
			continue
		}
		switch row.Table {
		case "privacy_audit", "_summary", "limits":
			// The audit grows with every export, the summary counts it,
			// and limits are computed at the time of the request.
		default:
			// The aggregator rewrites recent rollup rows with a new
			// computed_at on each tick; their contents stay the same.
			keep = append(keep, computedAt.ReplaceAllString(l, ""))
		}
	}
	return strings.Join(keep, "\n")
}

// lineDiff lists the lines only in got (-) and only in want (+).
func lineDiff(got, want string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	g, w := in(got), in(want)
	var b strings.Builder
	for _, l := range strings.Split(got, "\n") {
		if !w[l] {
			b.WriteString("- " + l + "\n")
		}
	}
	for _, l := range strings.Split(want, "\n") {
		if !g[l] {
			b.WriteString("+ " + l + "\n")
		}
	}
	if b.Len() == 0 {
		return "same lines in another order, or a missing events table"
	}
	return b.String()
}
