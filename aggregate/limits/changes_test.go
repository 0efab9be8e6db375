package limits

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// allChanges follows pages from since until more is false.
func allChanges(t *testing.T, v *View, since string, limit int, see func(string) bool, now time.Time) (map[string]*KeyLimitState, string, bool) {
	t.Helper()
	got := map[string]*KeyLimitState{}
	reset := false
	for i := 0; ; i++ {
		p, err := v.Changes(since, limit, see, now)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Keys) > limit {
			t.Fatalf("page of %d keys, limit %d", len(p.Keys), limit)
		}
		reset = reset || p.Reset
		for _, k := range p.Keys {
			if old, dup := got[k.APIKeyID]; dup && old.Version >= k.Version {
				t.Fatalf("key %s twice in one walk, versions %d then %d", k.APIKeyID, old.Version, k.Version)
			}
			got[k.APIKeyID] = k
		}
		since = p.Version
		if !p.More {
			return got, since, reset
		}
		if i > 10000 {
			t.Fatal("pages never end")
		}
	}
}

func TestChangesSinceVersion(t *testing.T) {
	var doc strings.Builder
	doc.WriteString("plans:\n  - {id: p, included_units: 10, hard_limit: 20, rate_limits: [{per: 1s, requests: 5}]}\n  - {id: q, included_units: 10}\ncustomers:\n")
	for i := range 250 {
		fmt.Fprintf(&doc, "  - {id: c%d, plan: p, keys: [k%d, {id: x%d, expires_at: 2026-03-14T12:00:10Z}]}\n", i, i, i)
	}
	r := NewRegistry(mustParse(t, doc.String()))
	src := &settableSource{}
	v := newTestView(t, Config{}, r, src, nil)
	now := at("2026-03-14T12:00:00Z")
	v.now = func() time.Time { return now }

	if _, err := v.Changes("", 10, nil, now); !errors.Is(err, ErrStale) {
		t.Fatalf("before the first refresh: %v", err)
	}
	refresh(t, v)
	all, ver, _ := allChanges(t, v, "", 7, nil, now)
	if len(all) != 500 || all["k3"].Status != KeyActive || all["x3"].ExpiresAt == nil || all["k3"].RateLimits[0].Requests != 5 {
		t.Fatalf("first walk: %d keys, k3 %+v", len(all), all["k3"])
	}
	// Nothing changed: nothing to send.
	refresh(t, v)
	if p, err := v.Changes(ver, 100, nil, now); err != nil || len(p.Keys) != 0 || p.More || p.Version != ver {
		t.Fatalf("no change: %+v %v", p, err)
	}
	// A customer reaches its hard limit; usage below it changes nothing.
	src.set("c7", 20)
	src.set("c8", 19.5)
	refresh(t, v)
	ch, ver2, _ := allChanges(t, v, ver, 100, nil, now)
	if len(ch) != 2 || !ch["k7"].OverHardLimit || !ch["x7"].OverHardLimit {
		t.Fatalf("after c7 reached its hard limit: %v", keysOf(ch))
	}
	// Time passes: the x keys expire (250 changes, over several pages).
	now = now.Add(10 * time.Second)
	refresh(t, v)
	ch, ver3, _ := allChanges(t, v, ver2, 33, nil, now)
	if len(ch) != 250 || ch["x0"].Status != KeyExpired {
		t.Fatalf("expiry: %d changes", len(ch))
	}
	// The catalogue drops a customer and changes another's plan.
	r.Swap(mustParse(t, strings.Replace(strings.Replace(doc.String(), "  - {id: c1, plan: p, keys: [k1, {id: x1, expires_at: 2026-03-14T12:00:10Z}]}\n", "", 1),
		"{id: c2, plan: p,", "{id: c2, plan: q,", 1)))
	refresh(t, v)
	ch, _, _ = allChanges(t, v, ver3, 1, nil, now)
	if len(ch) != 4 || ch["k1"].Status != KeyUnknown || ch["k1"].CustomerID != "c1" || ch["k2"].PlanID != "q" || ch["k2"].HardLimit != nil || len(ch["k2"].RateLimits) != 0 {
		t.Fatalf("catalogue change: %v", keysOf(ch))
	}
	// A token of another process, or from the future: everything again.
	for _, tok := range []string{"0123456789abcdef.5", strings.SplitN(ver3, ".", 2)[0] + ".99999999"} {
		all, _, reset := allChanges(t, v, tok, 1000, nil, now)
		if !reset || len(all) != 500 {
			t.Errorf("since %s: reset %v, %d keys", tok, reset, len(all))
		}
	}
	// A customer's view: its own keys only.
	mine, _, _ := allChanges(t, v, "", 1, func(c string) bool { return c == "c9" }, now)
	if len(mine) != 2 || mine["k9"] == nil || mine["x9"] == nil {
		t.Fatalf("c9 sees %v", keysOf(mine))
	}
	// Hostile tokens.
	for _, tok := range []string{"x", "abc.1", strings.Repeat("a", 41), "0123456789abcdef.-1", "0123456789abcdef.+1", "0123456789ABCDEF.1", "0123456789abcdef.18446744073709551616", "0123456789abcdef."} {
		if _, err := v.Changes(tok, 10, nil, now); !errors.Is(err, ErrBadVersion) {
			t.Errorf("since %q: %v", tok, err)
		}
	}
	// Stale figures: no answer, as for Lookup.
	if _, err := v.Changes(ver, 10, nil, now.Add(2*time.Minute)); !errors.Is(err, ErrStale) {
		t.Errorf("stale: %v", err)
	}
}

func keysOf(m map[string]*KeyLimitState) []string {
	var out []string
	for k, v := range m {
		out = append(out, fmt.Sprintf("%s:%s", k, v.Status))
	}
	return out
}

// BenchmarkChanges: a refresh of 100,000 unchanged keys (the comparison
// only), against a walk of the same keys with one map lookup each, and one
// page of 1000 keys read from the log.
//
//	go test ./aggregate/limits -run '^$' -bench Changes
func BenchmarkChanges(b *testing.B) {
	var doc strings.Builder
	doc.WriteString("plans:\n  - {id: p, included_units: 10, hard_limit: 20, rate_limits: [{per: 1s, requests: 5}]}\ncustomers:\n")
	for i := range 50_000 {
		fmt.Fprintf(&doc, "  - {id: c%d, plan: p, keys: [k%d, {id: x%d, expires_at: 2030-01-01T00:00:00Z}]}\n", i, i, i)
	}
	r := NewRegistry(mustParse(b, doc.String()))
	v := newTestView(b, Config{}, r, fixedSource{}, nil)
	now := time.Now()
	refresh(b, v)
	ix, s := r.cur.Load(), v.snap.Load()
	// The floor: one lookup in the log per catalogue key.
	b.Run("baseline_lookup_100k", func(b *testing.B) {
		n := 0
		for b.Loop() {
			for k := range ix.keys {
				if v.changes.cur.byKey[k] != nil {
					n++
				}
			}
		}
		_ = n
	})
	b.Run("refresh_100k_unchanged", func(b *testing.B) {
		for b.Loop() {
			v.changes.update(ix, s, now)
		}
	})
	b.Run("page_1000", func(b *testing.B) {
		for b.Loop() {
			if _, err := v.Changes("", 1000, nil, now); err != nil {
				b.Fatal(err)
			}
		}
	})
}
