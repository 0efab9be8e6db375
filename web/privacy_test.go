package web

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/privacy"
	"github.com/meterline/meterline/store"
)

// apiExport downloads GET /v1/privacy/export with the admin token.
func apiExport(t *testing.T, f *fixture, q string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, f.srv.URL+"/v1/privacy/export?"+q, nil)
	req.Header.Set("Authorization", "Bearer "+tokAdmin)
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/privacy/export?%s: %d %s", q, resp.StatusCode, b)
	}
	return string(b)
}

// withoutSummary drops an NDJSON export's last line (its summary carries
// the time it was generated) and its audit records.
func withoutSummary(t *testing.T, s string) string {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[len(lines)-1], `{"row":`) && !strings.Contains(lines[len(lines)-1], `"_summary"`) {
		t.Fatalf("not an NDJSON export with a summary:\n%s", s)
	}
	// The audit trail is part of an export: each export adds a record.
	var keep []string
	for _, l := range lines[:len(lines)-1] {
		if !strings.HasPrefix(l, `{"table":"privacy_audit"`) {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// TestPrivacyExportAndErasureForms: an admin downloads a customer's export
// through the form (the same rows as GET /v1/privacy/export, audited under
// the session's token name), requests the erasure of another customer with
// the typed confirmation, and once it ran sees its counts on the page as
// the service records them.
func TestPrivacyExportAndErasureForms(t *testing.T) {
	f := newFixture(t, opts{})
	b := f.browser()
	b.signIn(t, tokAdmin)
	page := b.get(t, "/ui/privacy")
	if page.code != http.StatusOK || !strings.Contains(page.body, `id="nav-privacy"`) {
		t.Fatalf("privacy page: %d\n%s", page.code, page.body)
	}
	csrf := csrfOf(t, page.body)

	a := b.do(t, http.MethodPost, "/ui/privacy/export", url.Values{"csrf": {csrf}, "customer_id": {f.acme}, "api_key_id": {""}, "format": {"ndjson"}})
	if a.code != http.StatusOK || !strings.HasPrefix(a.header.Get("Content-Disposition"), "attachment;") || a.header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("export form: %d %v\n%s", a.code, a.header, a.body)
	}
	if got, want := withoutSummary(t, a.body), withoutSummary(t, apiExport(t, f, "customer_id="+url.QueryEscape(f.acme))); got != want {
		gl, wl := strings.Split(got, "\n"), strings.Split(want, "\n")
		for i := range min(len(gl), len(wl)) {
			if gl[i] != wl[i] {
				t.Fatalf("the form export differs from the API export at line %d of %d/%d:\n%s\nwant\n%s", i, len(gl), len(wl), gl[i], wl[i])
			}
		}
		t.Fatalf("the form export has %d lines, the API export %d", len(gl), len(wl))
	}
	if !strings.Contains(a.body, `"events"`) || strings.Count(a.body, "\n") < 60 {
		t.Fatalf("export of %s holds too little:\n%s", f.acme, a.body)
	}
	db := engine.Require(t)
	if n := testenv.Count(t, db, "SELECT count() FROM privacy_audit WHERE action = 'export' AND actor = 'admin' AND customer_id = {c:String}",
		store.P("c", f.acme)); n != 2 {
		t.Fatalf("%d audit records of exports by admin, want 2 (the form's and the API's)", n)
	}

	a = b.do(t, http.MethodPost, "/ui/privacy/erasures", url.Values{"csrf": {csrf}, "customer_id": {f.globex}, "confirm": {f.globex}, "reason": {"test"}})
	loc := a.header.Get("Location")
	if a.code != http.StatusSeeOther || !strings.HasPrefix(loc, "/ui/privacy/erasures/") {
		t.Fatalf("erasure form: %d %s\n%s", a.code, loc, a.body)
	}
	id := strings.TrimPrefix(loc, "/ui/privacy/erasures/")
	if n, err := f.privacy.Service.RunDue(context.Background()); err != nil || n != 1 {
		t.Fatalf("RunDue: %d, %v", n, err)
	}
	e, err := f.privacy.Service.Get(context.Background(), id)
	if err != nil || e.Status != privacy.StatusDone || e.RequestedBy != "admin" || e.Removed["events"] != 30 {
		t.Fatalf("erasure %s: %+v, %v (want done, by admin, 30 events removed)", id, e, err)
	}
	detail := b.get(t, loc)
	if detail.code != http.StatusOK || !strings.Contains(detail.body, `<td data-table="events">30</td>`) {
		t.Fatalf("erasure page: %d\n%s", detail.code, detail.body)
	}
	list := b.get(t, "/ui/privacy?customer_id="+url.QueryEscape(f.globex))
	row := between(list.body, `<tr data-erasure="`+id+`">`, "</tr>")
	var total uint64
	for _, n := range e.Removed {
		total += n
	}
	if !strings.Contains(row, ">done<") || !strings.Contains(row, `<td data-col="removed">`+strconv.FormatUint(total, 10)+`</td>`) {
		t.Fatalf("list row of %s (want done, %d rows removed):\n%s", id, total, row)
	}
}

// TestPrivacyRefusesOthersAndBadInput: finance and customer sessions get
// "not found" for every privacy URL; an admin's forms without or with a
// wrong CSRF token, with a confirmation that differs, with hostile,
// oversized or repeated fields record nothing.
func TestPrivacyRefusesOthersAndBadInput(t *testing.T) {
	f := newFixture(t, opts{})
	for _, tok := range []string{tokFinance, tokAcme} {
		b := f.browser()
		b.signIn(t, tok)
		csrf := csrfOf(t, b.get(t, "/ui/customers/"+f.acme).body+b.get(t, "/ui/overview").body)
		for _, u := range []string{"/ui/privacy", "/ui/privacy/erasures/abc"} {
			if a := b.get(t, u); a.code != http.StatusNotFound {
				t.Errorf("%s: GET %s: %d, want 404", tok, u, a.code)
			}
		}
		for _, u := range []string{"/ui/privacy/export", "/ui/privacy/erasures", "/ui/privacy/erasures/abc/cancel"} {
			a := b.do(t, http.MethodPost, u, url.Values{"csrf": {csrf}, "customer_id": {f.globex}, "confirm": {f.globex}})
			if a.code != http.StatusNotFound {
				t.Errorf("%s: POST %s: %d, want 404", tok, u, a.code)
			}
		}
		if a := b.get(t, "/ui/overview"); strings.Contains(a.body, "nav-privacy") {
			t.Errorf("%s: the navigation links to Privacy", tok)
		}
	}

	b := f.browser()
	b.signIn(t, tokAdmin)
	csrf := csrfOf(t, b.get(t, "/ui/privacy").body)
	victim := f.globex
	cases := []struct {
		name string
		form url.Values
		code int
		say  string
	}{
		{"no CSRF", url.Values{"customer_id": {victim}, "confirm": {victim}}, 403, "CSRF"},
		{"wrong CSRF", url.Values{"csrf": {"x" + csrf}, "customer_id": {victim}, "confirm": {victim}}, 403, "CSRF"},
		{"confirmation differs", url.Values{"csrf": {csrf}, "customer_id": {victim}, "confirm": {victim + " "}}, 400, "confirmation"},
		{"no confirmation", url.Values{"csrf": {csrf}, "customer_id": {victim}}, 400, "confirmation"},
		{"no customer", url.Values{"csrf": {csrf}, "customer_id": {""}, "confirm": {""}}, 400, "customer id"},
		{"quote and NUL", url.Values{"csrf": {csrf}, "customer_id": {"a'\x00b"}, "confirm": {"a'\x00b"}}, 400, "customer_id"},
		{"129 bytes", url.Values{"csrf": {csrf}, "customer_id": {strings.Repeat("c", 129)}, "confirm": {strings.Repeat("c", 129)}}, 400, "customer_id"},
		{"repeated", url.Values{"csrf": {csrf}, "customer_id": {victim, "other"}, "confirm": {victim}}, 400, "customer_id"},
		{"unknown field", url.Values{"csrf": {csrf}, "customer_id": {victim}, "confirm": {victim}, "delay": {"0"}}, 400, "delay"},
		{"reason too long", url.Values{"csrf": {csrf}, "customer_id": {victim}, "confirm": {victim}, "reason": {strings.Repeat("r", 1001)}}, 400, "reason"},
		{"bad checkbox", url.Values{"csrf": {csrf}, "customer_id": {victim}, "confirm": {victim}, "account_deletion": {"maybe"}}, 400, "account_deletion"},
		{"oversized body", url.Values{"csrf": {csrf}, "customer_id": {victim}, "confirm": {victim}, "reason": {strings.Repeat("r", 9000)}}, 413, "larger"},
	}
	for _, tc := range cases {
		a := b.do(t, http.MethodPost, "/ui/privacy/erasures", tc.form)
		if a.code != tc.code || !strings.Contains(a.body, tc.say) {
			t.Errorf("%s: %d, want %d saying %q:\n%s", tc.name, a.code, tc.code, tc.say, between(a.body, "<main>", "</main>"))
		}
	}
	for _, q := range []url.Values{
		{"csrf": {csrf}, "customer_id": {victim}, "format": {"xml"}},
		{"csrf": {csrf}, "customer_id": {"x\r\ny"}},
		{"csrf": {csrf}},
		{"customer_id": {victim}},
	} {
		if a := b.do(t, http.MethodPost, "/ui/privacy/export", q); a.code != 400 && a.code != 403 || strings.Contains(a.body, `"table"`) {
			t.Errorf("export %v: %d", q, a.code)
		}
	}
	for _, u := range []string{"/ui/privacy?customer_id=" + url.QueryEscape("a'b\x00"), "/ui/privacy?x=1", "/ui/privacy/erasures/abc?x=1"} {
		if a := b.get(t, u); a.code != http.StatusBadRequest {
			t.Errorf("GET %s: %d, want 400", u, a.code)
		}
	}
	if a := b.do(t, http.MethodPost, "/ui/privacy/erasures/nosuch/cancel", url.Values{"csrf": {csrf}}); a.code != http.StatusNotFound {
		t.Errorf("cancel of an unknown erasure: %d", a.code)
	}
	es, err := f.privacy.Service.List(context.Background(), victim)
	if err != nil || len(es) != 0 {
		t.Fatalf("refused forms recorded erasures: %+v %v", es, err)
	}
	if n := testenv.Count(t, engine.Require(t), "SELECT count() FROM privacy_audit WHERE customer_id = {c:String}", store.P("c", victim)); n != 0 {
		t.Fatalf("refused forms wrote %d audit records", n)
	}
}
