package limits

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

const rotationCatalogue = `
plans:
  - id: pro
    included_units: 1000
    hard_limit: 2000
    rate_limits: [{per: 1m, requests: 600}, {per: 1s, requests: 20}]
  - id: free
    included_units: 10
    bill_rejected: true
customers:
  - id: acme
    plan: pro
    keys:
      - key_new
      - {id: key_old, expires_at: 2026-03-15T00:00:00Z}
      - {id: key_next, not_before: 2026-03-20T00:00:00Z}
      - {id: key_stolen, disabled: true}
    key_periods:
      - {key: key_moved, until: 2026-03-16T00:00:00Z, expires_at: 2026-03-12T00:00:00Z}
  - id: globex
    plan: free
    keys: [key_g]
`

func TestKeyStatesAndRateLimits(t *testing.T) {
	r := NewRegistry(mustParse(t, rotationCatalogue))
	v := newTestView(t, Config{}, r, fixedSource{"acme": 5}, nil)
	now := at("2026-03-14T12:00:00Z")
	v.now = func() time.Time { return now }
	refresh(t, v)
	for _, c := range []struct {
		key  string
		at   string
		want KeyStatus
	}{
		{"key_new", "2026-03-14T12:00:00Z", KeyActive},
		{"key_old", "2026-03-14T12:00:00Z", KeyActive},
		{"key_old", "2026-03-15T00:00:00Z", KeyExpired}, // expires_at is exclusive
		{"key_next", "2026-03-19T23:59:59Z", KeyNotYetValid},
		{"key_next", "2026-03-20T00:00:00Z", KeyActive},
		{"key_stolen", "2026-03-14T12:00:00Z", KeyDisabled},
		{"key_moved", "2026-03-11T12:00:00Z", KeyActive},
		{"key_moved", "2026-03-14T12:00:00Z", KeyExpired},
	} {
		now = at(c.at)
		refresh(t, v)
		l, err := v.Lookup(c.key, now)
		if err != nil {
			t.Fatalf("%s at %s: %v", c.key, c.at, err)
		}
		if l.Status != c.want {
			t.Errorf("%s at %s: status %s, want %s", c.key, c.at, l.Status, c.want)
		}
		// Usage stays the customer's across its keys, whatever their state.
		if l.CustomerID != "acme" || l.Used != 5 {
			t.Errorf("%s: customer %s used %v", c.key, l.CustomerID, l.Used)
		}
		if len(l.RateLimits) != 2 || l.RateLimits[0].Per != time.Second || l.RateLimits[0].Requests != 20 || l.RateLimits[1].Per != time.Minute {
			t.Errorf("%s: rate limits %+v (want shortest window first)", c.key, l.RateLimits)
		}
	}
	// The key period ends: the key is nobody's.
	if _, err := v.Lookup("key_moved", at("2026-03-16T00:00:00Z")); err != ErrUnknownKey {
		t.Errorf("key_moved after its period: %v", err)
	}
	now = at("2026-03-14T12:00:00Z")
	refresh(t, v)
	l, err := v.Lookup("key_old", now)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(l)
	for _, want := range []string{`"status":"active"`, `"expires_at":"2026-03-15T00:00:00Z"`, `"rate_limits":[{"per":"1s","window_seconds":1,"requests":20},{"per":"1m","window_seconds":60,"requests":600}]`, `"bill_rejected":false`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON %s lacks %s", b, want)
		}
	}
	if strings.Contains(string(b), "not_before") {
		t.Errorf("JSON %s has a not_before the key does not have", b)
	}
	g, err := v.Lookup("key_g", now)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = json.Marshal(g)
	if !strings.Contains(string(b), `"rate_limits":[]`) || !g.BillRejected {
		t.Errorf("a plan without rate limits that bills rejected requests: %s", b)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = v.Lookup("key_old", now) }); n != 0 {
		t.Errorf("Lookup of a key with a state allocates %v times", n)
	}
}

func TestOldCataloguesStayValid(t *testing.T) {
	c := mustParse(t, validCatalogue)
	if got := c.Customers[0].Keys; len(got) != 2 || got[0] != "key_live_1" || len(c.Customers[0].KeyStates) != 0 {
		t.Fatalf("plain keys list: %v %v", got, c.Customers[0].KeyStates)
	}
	r := NewRegistry(c)
	if _, st, ok := r.KeyStateAt("key_live_1", time.Now()); !ok || st.StatusAt(time.Now()) != KeyActive {
		t.Fatalf("a plain key is not active: %+v %v", st, ok)
	}
}

func TestRateLimitsAndKeyStatesValidated(t *testing.T) {
	head := "plans:\n  - id: p\n    included_units: 1\n"
	for _, c := range []struct {
		name, doc, want string
	}{
		{"duplicate window", head + "    rate_limits:\n      - {per: 1s, requests: 5}\n      - {per: 1000ms, requests: 9}\ncustomers: []\n",
			`plan "p": rate_limits[1] (line 6): per 1s is listed twice (also rate_limits[0])`},
		{"window too short", head + "    rate_limits: [{per: 500ms, requests: 5}]\ncustomers: []\n",
			`plan "p": rate_limits[0] (line 4): per 500ms is out of range 1s-24h`},
		{"window too long", head + "    rate_limits: [{per: 25h, requests: 5}]\ncustomers: []\n", `per 25h0m0s is out of range`},
		{"zero requests", head + "    rate_limits: [{per: 1s, requests: 0}]\ncustomers: []\n", `requests 0 is out of range 1-1000000000`},
		{"too many requests", head + "    rate_limits: [{per: 1s, requests: 1000000001}]\ncustomers: []\n", `requests 1000000001 is out of range`},
		{"negative requests", head + "    rate_limits: [{per: 1s, requests: -3}]\ncustomers: []\n", `requests -3 is out of range`},
		{"fractional requests", head + "    rate_limits: [{per: 1s, requests: 2.5}]\ncustomers: []\n", `line 4: rate limit requests "2.5": a whole number`},
		{"not a duration", head + "    rate_limits: [{per: fortnight, requests: 5}]\ncustomers: []\n", `line 4: rate limit per "fortnight"`},
		{"unknown field", head + "    rate_limits:\n      - {per: 1s, requests: 5, burst: 9}\ncustomers: []\n", `line 5: rate limit: unknown field "burst"`},
		{"missing requests", head + "    rate_limits: [{per: 1s}]\ncustomers: []\n", `needs both per and requests`},
		{"not a mapping", head + "    rate_limits: [20]\ncustomers: []\n", `line 4: a rate limit is a mapping`},
		{"too many", head + "    rate_limits: [{per: 1s, requests: 1}, {per: 2s, requests: 1}, {per: 3s, requests: 1}, {per: 4s, requests: 1}, {per: 5s, requests: 1}, {per: 6s, requests: 1}, {per: 7s, requests: 1}, {per: 8s, requests: 1}, {per: 9s, requests: 1}]\ncustomers: []\n", `more than 8 rate_limits`},
		{"bounds inverted", head + "customers:\n  - id: a\n    plan: p\n    keys:\n      - {id: k, not_before: 2026-03-02T00:00:00Z, expires_at: 2026-03-01T00:00:00Z}\n",
			`customer "a": key "k" (line 8): not_before 2026-03-02T00:00:00Z is not before expires_at 2026-03-01T00:00:00Z`},
		{"period bounds inverted", head + "customers:\n  - {id: a, plan: p, key_periods: [{key: k, not_before: 2026-03-02T00:00:00Z, expires_at: 2026-03-02T00:00:00Z}]}\n",
			`customer "a": key_periods[0] (key "k"): not_before`},
		{"unknown key field", head + "customers:\n  - id: a\n    plan: p\n    keys: [{id: k, expires: 2026-03-01T00:00:00Z}]\n", `line 7: key: unknown field "expires"`},
		{"key without id", head + "customers:\n  - id: a\n    plan: p\n    keys: [{disabled: true}]\n", `line 7: key: id is missing`},
		{"not a time", head + "customers:\n  - id: a\n    plan: p\n    keys: [{id: k, expires_at: tomorrow}]\n", `line 7: key expires_at "tomorrow"`},
		{"not a bool", head + "customers:\n  - id: a\n    plan: p\n    keys: [{id: k, disabled: maybe}]\n", `key disabled "maybe"`},
		{"hostile id", head + "customers:\n  - id: a\n    plan: p\n    keys: [{id: \"k\\u0007\"}]\n", `keys[0] contains control characters`},
		{"key in a list", head + "customers:\n  - id: a\n    plan: p\n    keys: [[k]]\n", `a key is an id or a mapping`},
		{"same key twice, one with a state", head + "customers:\n  - id: a\n    plan: p\n    keys: [k, {id: k, disabled: true}]\n", `key "k" listed twice`},
	} {
		_, err := ParseCatalogue([]byte(c.doc))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
	// A catalogue built in code: a state for a key the customer lacks.
	c := &Catalogue{Plans: []Plan{{ID: "p"}}, Customers: []Customer{{ID: "a", Plan: "p", Keys: []string{"k"},
		KeyStates: map[string]KeyState{"other": {Disabled: true}}}}}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), `key "other": a state for a key the customer does not list`) {
		t.Errorf("state of an unlisted key: %v", err)
	}
}

func TestKeyEntriesRoundTrip(t *testing.T) {
	c := mustParse(t, rotationCatalogue)
	out, err := yaml.Marshal(c.Customers[0].KeyEntries)
	if err != nil {
		t.Fatal(err)
	}
	want := "- key_new\n- id: key_old\n  expires_at: 2026-03-15T00:00:00Z\n- id: key_next\n  not_before: 2026-03-20T00:00:00Z\n- id: key_stolen\n  disabled: true\n"
	if string(out) != want {
		t.Errorf("marshalled keys:\n%s\nwant:\n%s", out, want)
	}
	rl, err := yaml.Marshal(c.Plans[0].RateLimits)
	if err != nil || string(rl) != "- per: 1m\n  requests: 600\n- per: 1s\n  requests: 20\n" {
		t.Errorf("marshalled rate limits: %s %v", rl, err)
	}
}
