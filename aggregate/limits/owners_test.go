package limits

import (
	"strings"
	"testing"
	"time"
)

const movedCatalogue = `
plans:
  - {id: pro, included_units: 1000}
  - {id: free, included_units: 10}
customers:
  - id: acme
    plan: pro
    keys: [key_a]
    key_periods:
      - {key: key_moved, until: 2026-03-10T12:00:00Z}
  - id: globex
    plan: free
    key_periods:
      - {key: key_moved, from: 2026-03-10T12:00:00Z}
      - {key: key_trial, from: 2026-03-01T00:00:00Z, until: 2026-03-08T00:00:00Z}
`

// TestKeyPeriodsAttributeByTime: a key that moved at T belongs to the old
// owner before T and to the new one from T on; a key outside its periods
// belongs to nobody; plain keys are owned at every instant; limits of the
// moved key follow the owner at the lookup's time.
func TestKeyPeriodsAttributeByTime(t *testing.T) {
	r := NewRegistry(mustParse(t, movedCatalogue))
	move := at("2026-03-10T12:00:00Z")
	for _, c := range []struct {
		key  string
		at   time.Time
		want string // "" = nobody
	}{
		{"key_moved", move.Add(-time.Millisecond), "acme"},
		{"key_moved", move.AddDate(-5, 0, 0), "acme"},
		{"key_moved", move, "globex"},
		{"key_moved", move.AddDate(5, 0, 0), "globex"},
		{"key_trial", at("2026-02-28T23:59:59Z"), ""},
		{"key_trial", at("2026-03-01T00:00:00Z"), "globex"},
		{"key_trial", at("2026-03-08T00:00:00Z"), ""},
		{"key_a", move.AddDate(-50, 0, 0), "acme"},
		{"key_nobody", move, ""},
	} {
		got, ok := r.OwnerAt(c.key, c.at)
		if got != c.want || ok != (c.want != "") {
			t.Errorf("OwnerAt(%s, %s) = %q, %v; want %q", c.key, c.at.Format(time.RFC3339Nano), got, ok, c.want)
		}
	}
	if got := len(r.Ownerships()); got != 4 {
		t.Errorf("%d ownerships, want 4: %+v", got, r.Ownerships())
	}
	if cu, _ := r.Customer("globex"); strings.Join(cu.AllKeys(), ",") != "key_moved,key_trial" {
		t.Errorf("AllKeys = %v", cu.AllKeys())
	}

	src := &settableSource{}
	src.set("acme", 400)
	src.set("globex", 7)
	v := newTestView(t, Config{}, r, src, nil)
	for _, c := range []struct {
		now            time.Time
		customer, plan string
		used           float64
	}{
		{move.Add(-time.Minute), "acme", "pro", 400},
		{move.Add(time.Minute), "globex", "free", 7},
	} {
		now := c.now
		v.now = func() time.Time { return now }
		refresh(t, v)
		l, err := v.Lookup("key_moved", now)
		if err != nil || l.CustomerID != c.customer || l.PlanID != c.plan || l.Used != c.used {
			t.Errorf("Lookup(key_moved) at %s = %+v, %v; want %s on %s with %v used", now, l, err, c.customer, c.plan, c.used)
		}
	}
}

// TestKeyPeriodsValidated: overlapping owners of one key, an empty or
// inverted span and a bad key id are each reported, naming the key.
func TestKeyPeriodsValidated(t *testing.T) {
	const head = "plans: [{id: p}]\ncustomers:\n"
	for _, c := range []struct {
		name, customers, want string
	}{
		{"open ends overlap", `
  - {id: a, plan: p, key_periods: [{key: k, until: 2026-03-10T00:00:00Z}]}
  - {id: b, plan: p, key_periods: [{key: k, from: 2026-03-09T00:00:00Z}]}`, `key "k": held by "a" from always until 2026-03-10T00:00:00Z and by "b" from 2026-03-09T00:00:00Z until ever`},
		{"plain key and a period", `
  - {id: a, plan: p, keys: [k]}
  - {id: b, plan: p, key_periods: [{key: k, from: 2026-03-09T00:00:00Z}]}`, `key "k": held by "a" for all time and by "b"`},
		{"two periods of one customer", `
  - {id: a, plan: p, key_periods: [{key: k, from: 2026-03-01T00:00:00Z, until: 2026-03-10T00:00:00Z}, {key: k, from: 2026-03-05T00:00:00Z}]}`, `must not overlap`},
		{"inverted span", `
  - {id: a, plan: p, key_periods: [{key: k, from: 2026-03-10T00:00:00Z, until: 2026-03-10T00:00:00Z}]}`, `key_periods[0] (key "k"): from 2026-03-10T00:00:00Z is not before until`},
		{"empty key", `
  - {id: a, plan: p, key_periods: [{key: "", from: 2026-03-10T00:00:00Z}]}`, `key_periods[0]: key is empty`},
		{"not a time", `
  - {id: a, plan: p, key_periods: [{key: k, from: next tuesday}]}`, `next tuesday`},
	} {
		_, err := ParseCatalogue([]byte(head + c.customers))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
	// Back-to-back spans are fine: until is exclusive.
	mustParse(t, head+`
  - {id: a, plan: p, key_periods: [{key: k, until: 2026-03-10T00:00:00Z}]}
  - {id: b, plan: p, key_periods: [{key: k, from: 2026-03-10T00:00:00Z, until: 2026-04-01T00:00:00Z}]}
  - {id: c, plan: p, key_periods: [{key: k, from: 2026-04-01T00:00:00Z}]}`)
}
