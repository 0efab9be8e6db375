package limits

import (
	"strings"
	"testing"
	"time"
)

const rotateCatalogue = `
plans: [{id: p, included_units: 10}]
customers:
  - id: acme
    plan: p
    keys: [key_a, {id: key_dis, disabled: true}, {id: key_soon, expires_at: 2026-12-07T18:00:00Z}]
    key_periods:
      - {key: key_p, from: 2026-01-01T00:00:00Z}
      - {key: key_moved, until: 2026-06-01T00:00:00Z}
  - {id: globex, plan: p, keys: [key_g], key_periods: [{key: key_old_g, until: 2026-01-01T00:00:00Z}]}
`

func TestRotate(t *testing.T) {
	c := mustParse(t, rotateCatalogue)
	at := at("2026-12-07T17:00:00Z")
	next, err := c.Rotate(Rotation{Customer: "acme", Old: "key_a", New: "key_a2", At: at, Overlap: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	r := NewRegistry(next)
	for key, want := range map[string]KeyStatus{"key_a": KeyActive, "key_a2": KeyActive} {
		if cust, st, ok := r.KeyStateAt(key, at.Add(time.Hour)); !ok || cust != "acme" || st.StatusAt(at.Add(time.Hour)) != want {
			t.Errorf("%s an hour in: %s %+v %v", key, cust, st, ok)
		}
	}
	// After the overlap the old key is refused, still the customer's.
	if cust, st, ok := r.KeyStateAt("key_a", at.Add(24*time.Hour)); !ok || cust != "acme" || st.StatusAt(at.Add(24*time.Hour)) != KeyExpired {
		t.Errorf("key_a after the overlap: %s %+v %v", cust, st, ok)
	}
	// The original is untouched.
	if _, st, _ := NewRegistry(c).KeyStateAt("key_a", at.Add(48*time.Hour)); st.StatusAt(at.Add(48*time.Hour)) != KeyActive || len(c.Customers[0].Keys) != 3 {
		t.Errorf("Rotate changed its receiver: %+v %v", st, c.Customers[0].Keys)
	}
	// A key held through a key period: the period gets the expiry.
	next, err = c.Rotate(Rotation{Customer: "acme", Old: "key_p", New: "key_p2", At: at, Overlap: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if got := next.Customers[0].KeyPeriods[0].ExpiresAt; !got.Equal(at.Add(time.Hour)) || !c.Customers[0].KeyPeriods[0].ExpiresAt.IsZero() {
		t.Errorf("period expiry %v (original %v)", got, c.Customers[0].KeyPeriods[0].ExpiresAt)
	}
	for _, bad := range []struct {
		r    Rotation
		want string
	}{
		{Rotation{Customer: "nobody", Old: "key_a", New: "n", At: at}, `no customer "nobody"`},
		{Rotation{Customer: "acme", Old: "key_g", New: "n", At: at}, `customer "acme" does not hold key "key_g"`},
		{Rotation{Customer: "acme", Old: "key_moved", New: "n", At: at}, `does not hold key "key_moved" at 2026-12-07T17:00:00Z`},
		{Rotation{Customer: "acme", Old: "key_a", New: "key_g", At: at}, `new key "key_g" is already customer "globex"'s`},
		{Rotation{Customer: "acme", Old: "key_a", New: "key_old_g", At: at}, `new key "key_old_g" is already customer "globex"'s`},
		{Rotation{Customer: "acme", Old: "key_a", New: "key_a", At: at}, `the new key is the old key`},
		{Rotation{Customer: "acme", Old: "key_a", New: "", At: at}, `new key is empty`},
		{Rotation{Customer: "acme", Old: "key_a", New: "bad\x01", At: at}, `new key contains control characters`},
		{Rotation{Customer: "acme", Old: "key_a", New: strings.Repeat("k", 129), At: at}, `new key is longer than 128 bytes`},
		{Rotation{Customer: "acme", Old: "key_a", New: "n", At: at, Overlap: -time.Second}, `overlap -1s is out of range`},
		{Rotation{Customer: "acme", Old: "key_a", New: "n", At: at, Overlap: 91 * 24 * time.Hour}, `overlap 2184h0m0s is out of range`},
		{Rotation{Customer: "acme", Old: "key_dis", New: "n", At: at}, `key "key_dis" is disabled`},
		{Rotation{Customer: "acme", Old: "key_soon", New: "n", At: at, Overlap: 2 * time.Hour}, `key "key_soon" expires already at 2026-12-07T18:00:00Z`},
	} {
		if _, err := c.Rotate(bad.r); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%+v: error %v, want one containing %q", bad.r, err, bad.want)
		}
	}
}
