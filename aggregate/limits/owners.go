package limits

import (
	"fmt"
	"slices"
	"sort"
	"time"
)

// KeyPeriod is a key a customer holds for a span of time only: [From,
// Until). A zero From means "since always", a zero Until "from then on".
// Catalogue entries:
//
//	key_periods:
//	  - key: key_old
//	    until: 2026-12-01T00:00:00Z   # moved to another customer then
//	  - key: key_new
//	    from: 2026-12-01T00:00:00Z
//
// Times are RFC 3339. One key's spans, over every customer and the plain
// keys lists (which hold a key for all time), must not overlap: at any
// instant a key has at most one owner. An event is attributed by its own
// time, so usage before a move stays with the old owner.
type KeyPeriod struct {
	// Key is the public id of the API key.
	Key string `yaml:"key"`
	// From is when the customer starts holding the key (inclusive).
	From time.Time `yaml:"from,omitempty"`
	// Until is when the customer stops holding it (exclusive).
	Until time.Time `yaml:"until,omitempty"`
	// KeyState: disabled, not_before and expires_at, as in the keys list.
	// Ownership (From, Until) says whose usage the key's events are;
	// the state says whether gateways let its requests through.
	KeyState `yaml:",inline"`
}

// Ownership is one span during which a customer holds a key (both plain
// keys, with zero From and Until, and key periods).
type Ownership struct {
	APIKeyID   string
	CustomerID string
	From       time.Time // zero: since always
	Until      time.Time // zero: for ever
}

// Covers tells whether t lies in the span.
func (o Ownership) Covers(t time.Time) bool {
	return (o.From.IsZero() || !t.Before(o.From)) && (o.Until.IsZero() || t.Before(o.Until))
}

// ownedPeriod is one time-bounded owner of a key in the index.
type ownedPeriod struct {
	customer    string
	from, until time.Time
	state       *KeyState // nil: active
}

// AllKeys returns every key the customer holds or held: Keys, then the
// keys of KeyPeriods not already listed.
func (c Customer) AllKeys() []string {
	out := slices.Clone(c.Keys)
	for _, p := range c.KeyPeriods {
		if !slices.Contains(out, p.Key) {
			out = append(out, p.Key)
		}
	}
	return out
}

// validateKeyPeriods checks the key periods: valid ids, From before Until,
// and no key with two owners at one instant (plain keys count as spans
// over all time; two customers listing one key in keys is reported by
// Validate already).
func (c *Catalogue) validateKeyPeriods() []error {
	var errs []error
	type span struct {
		Ownership
		plain bool
	}
	spans := map[string][]span{}
	for _, cu := range c.Customers {
		for _, k := range cu.Keys {
			spans[k] = append(spans[k], span{Ownership{APIKeyID: k, CustomerID: cu.ID}, true})
		}
	}
	for _, cu := range c.Customers {
		name := fmt.Sprintf("customer %q", cu.ID)
		for j, p := range cu.KeyPeriods {
			if msg := idRule(p.Key); msg != "" {
				errs = append(errs, fmt.Errorf("%s: key_periods[%d]: key %s", name, j, msg))
				continue
			}
			if !p.From.IsZero() && !p.Until.IsZero() && !p.From.Before(p.Until) {
				errs = append(errs, fmt.Errorf("%s: key_periods[%d] (key %q): from %s is not before until %s",
					name, j, p.Key, p.From.Format(time.RFC3339), p.Until.Format(time.RFC3339)))
				continue
			}
			spans[p.Key] = append(spans[p.Key], span{Ownership{APIKeyID: p.Key, CustomerID: cu.ID, From: p.From, Until: p.Until}, false})
		}
	}
	keys := make([]string, 0, len(spans))
	for k := range spans {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		ss := spans[k]
		if len(ss) < 2 {
			continue
		}
		sort.SliceStable(ss, func(i, j int) bool { return beforeStart(ss[i].From, ss[j].From) })
		for i := 1; i < len(ss); i++ {
			a, b := ss[i-1], ss[i]
			if a.plain && b.plain {
				continue
			}
			if a.Until.IsZero() || b.From.IsZero() || b.From.Before(a.Until) {
				errs = append(errs, fmt.Errorf("key %q: held by %q %s and by %q %s: one key's owners must not overlap in time",
					k, a.CustomerID, spanText(a.Ownership), b.CustomerID, spanText(b.Ownership)))
			}
		}
	}
	return errs
}

// beforeStart orders span starts, a zero start (since always) first.
func beforeStart(a, b time.Time) bool {
	if a.IsZero() || b.IsZero() {
		return a.IsZero() && !b.IsZero()
	}
	return a.Before(b)
}

func spanText(o Ownership) string {
	from, until := "always", "ever"
	if !o.From.IsZero() {
		from = o.From.UTC().Format(time.RFC3339)
	}
	if !o.Until.IsZero() {
		until = o.Until.UTC().Format(time.RFC3339)
	}
	if o.From.IsZero() && o.Until.IsZero() {
		return "for all time"
	}
	return fmt.Sprintf("from %s until %s", from, until)
}

// indexKeyPeriods builds the time-bounded owners of each key, by start.
func indexKeyPeriods(c *Catalogue) map[string][]ownedPeriod {
	out := map[string][]ownedPeriod{}
	for _, cu := range c.Customers {
		for _, p := range cu.KeyPeriods {
			op := ownedPeriod{customer: cu.ID, from: p.From, until: p.Until}
			if !p.KeyState.isZero() {
				st := p.KeyState
				op.state = &st
			}
			out[p.Key] = append(out[p.Key], op)
		}
	}
	for _, ps := range out {
		sort.SliceStable(ps, func(i, j int) bool { return beforeStart(ps[i].from, ps[j].from) })
	}
	return out
}

// ownerAt returns the customer that holds key at t: a plain key first,
// then the key period that covers t.
func (ix *index) ownerAt(key string, t time.Time) (string, bool) {
	c, _, ok := ix.keyAt(key, t)
	return c, ok
}

// activeState is the state of a key without one.
var activeState = &KeyState{}

// keyAt returns the customer that holds key at t and the key's state in
// that entry (never nil; shared: do not modify).
func (ix *index) keyAt(key string, t time.Time) (string, *KeyState, bool) {
	if c, ok := ix.keys[key]; ok {
		if st := ix.states[key]; st != nil {
			return c, st, true
		}
		return c, activeState, true
	}
	for _, p := range ix.periods[key] {
		if (p.from.IsZero() || !t.Before(p.from)) && (p.until.IsZero() || t.Before(p.until)) {
			if p.state != nil {
				return p.customer, p.state, true
			}
			return p.customer, activeState, true
		}
	}
	return "", nil, false
}

// KeyStateAt returns the customer that holds apiKeyID at t and the key's
// state there.
func (r *Registry) KeyStateAt(apiKeyID string, t time.Time) (string, KeyState, bool) {
	c, st, ok := r.cur.Load().keyAt(apiKeyID, t)
	if !ok {
		return "", KeyState{}, false
	}
	return c, *st, true
}

// OwnerAt returns the customer that holds apiKeyID at time t, as the
// current catalogue records it. false: the catalogue gives the key to
// nobody at t (an unknown key, or one outside its periods).
func (r *Registry) OwnerAt(apiKeyID string, t time.Time) (string, bool) {
	return r.cur.Load().ownerAt(apiKeyID, t)
}

// Ownerships returns every span of key ownership in the current
// catalogue: plain keys (zero From and Until) and key periods.
func (r *Registry) Ownerships() []Ownership {
	ix := r.cur.Load()
	var out []Ownership
	for _, cu := range ix.cat.Customers {
		for _, k := range cu.Keys {
			if ix.keys[k] == cu.ID {
				out = append(out, Ownership{APIKeyID: k, CustomerID: cu.ID})
			}
		}
		for _, p := range cu.KeyPeriods {
			out = append(out, Ownership{APIKeyID: p.Key, CustomerID: cu.ID, From: p.From, Until: p.Until})
		}
	}
	return out
}
