package limits

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// KeyUnknown is the status of a key the catalogue no longer gives to
// anyone: the bulk answer reports it once so that gateways forget it.
const KeyUnknown KeyStatus = "unknown"

// KeyLimitState is what a gateway enforces for one key: the answer of
// GET /v1/limits?since= per key. It changes when the catalogue changes
// what the key may do, when the key's status changes with time, and when
// the customer reaches or leaves its hard limit; usage figures are not
// part of it (GET /v1/limits/{key} has them), so a busy key does not
// change at every refresh.
type KeyLimitState struct {
	APIKeyID   string    `json:"api_key_id"`
	CustomerID string    `json:"customer_id"`
	PlanID     string    `json:"plan_id,omitempty"`
	Status     KeyStatus `json:"status"`
	// NotBefore and ExpiresAt let a gateway switch the status at the
	// instant itself, between two polls.
	NotBefore     *time.Time  `json:"not_before,omitempty"`
	ExpiresAt     *time.Time  `json:"expires_at,omitempty"`
	RateLimits    []RateLimit `json:"rate_limits"`
	HardLimit     *float64    `json:"hard_limit"`
	OverHardLimit bool        `json:"over_hard_limit"`
	BillRejected  bool        `json:"bill_rejected"`
	// Version is the change's place in the log (the n of a version
	// token): a later change of the same key has a higher one.
	Version uint64 `json:"version"`
}

// same tells whether two states enforce the same thing (Version aside).
func (s *KeyLimitState) same(o *KeyLimitState) bool {
	eqTime := func(a, b *time.Time) bool { return (a == nil) == (b == nil) && (a == nil || a.Equal(*b)) }
	eqF := func(a, b *float64) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }
	return s.APIKeyID == o.APIKeyID && s.CustomerID == o.CustomerID && s.PlanID == o.PlanID && s.Status == o.Status &&
		eqTime(s.NotBefore, o.NotBefore) && eqTime(s.ExpiresAt, o.ExpiresAt) && eqF(s.HardLimit, o.HardLimit) &&
		s.OverHardLimit == o.OverHardLimit && s.BillRejected == o.BillRejected &&
		slices.EqualFunc(s.RateLimits, o.RateLimits, func(a, b RateLimit) bool { return a.Per == b.Per && a.Requests == b.Requests })
}

// changeLog is every key's latest state, ordered by the version of its
// last change. A published log is never modified.
type changeLog struct {
	version uint64
	byKey   map[string]*KeyLimitState
	ordered []*KeyLimitState // by Version
	asOf    time.Time
}

// changes builds the next log from each refresh. Its epoch names this
// process's log: versions of another process (or of this one before a
// restart) mean nothing here, so a token of another epoch gets a reset.
type changes struct {
	mu     sync.Mutex
	epoch  string
	cur    *changeLog
	lastIx *index // the catalogue of the last update
}

func newChanges() *changes {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return &changes{epoch: hex.EncodeToString(b[:]), cur: &changeLog{byKey: map[string]*KeyLimitState{}}}
}

// limitState computes one key's state from a catalogue index and a usage
// snapshot, at now; false when the key's customer or plan is missing (an
// unvalidated catalogue).
func limitState(ix *index, s *snapshot, now time.Time, key, cust string, st *KeyState) (KeyLimitState, bool) {
	cu := ix.customers[cust]
	if cu == nil {
		return KeyLimitState{}, false
	}
	plan := ix.plans[cu.Plan]
	if plan == nil {
		return KeyLimitState{}, false
	}
	ks := KeyLimitState{APIKeyID: key, CustomerID: cust, PlanID: plan.ID, Status: st.StatusAt(now),
		RateLimits: plan.RateLimits, HardLimit: plan.hardLimit, BillRejected: plan.BillRejected}
	if !st.NotBefore.IsZero() {
		ks.NotBefore = &st.NotBefore
	}
	if !st.ExpiresAt.IsZero() {
		ks.ExpiresAt = &st.ExpiresAt
	}
	if plan.hardLimit != nil && !now.Before(s.periodStart) && now.Before(s.resetAt) {
		ks.OverHardLimit = s.used[cust] >= *plan.hardLimit
	}
	return ks, true
}

// stateOf returns a plain key's state (never nil).
func (ix *index) stateOf(key string) *KeyState {
	if st := ix.states[key]; st != nil {
		return st
	}
	return activeState
}

// update records the states that differ from the current log's and
// publishes the next log. Keys gone from the catalogue get one KeyUnknown
// entry (their previous customer kept, so its token still sees it). Only
// changed states are allocated: a refresh of an unchanged catalogue costs
// one comparison per key.
func (c *changes) update(ix *index, s *snapshot, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	prev := c.cur
	var changed []*KeyLimitState
	visit := func(key, cust string, st *KeyState) {
		ks, ok := limitState(ix, s, now, key, cust, st)
		if !ok {
			return
		}
		if old := prev.byKey[key]; old != nil && old.same(&ks) {
			return
		}
		p := new(KeyLimitState) // only a change escapes to the heap
		*p = ks
		changed = append(changed, p)
	}
	for key, cust := range ix.keys {
		visit(key, cust, ix.stateOf(key))
	}
	for key := range ix.periods {
		if _, plain := ix.keys[key]; plain {
			continue
		}
		if cust, st, ok := ix.keyAt(key, now); ok {
			visit(key, cust, st)
		}
	}
	// A key leaves only with a catalogue change or the end of a key period.
	gone := ix != c.lastIx || len(ix.periods) > 0
	c.lastIx = ix
	for key, old := range prev.byKey {
		if !gone {
			break
		}
		if old.Status == KeyUnknown {
			continue
		}
		if cust, st, ok := ix.keyAt(key, now); ok {
			if _, ok := limitState(ix, s, now, key, cust, st); ok {
				continue
			}
		}
		changed = append(changed, &KeyLimitState{APIKeyID: key, CustomerID: old.CustomerID, Status: KeyUnknown, RateLimits: noRateLimits})
	}
	if len(changed) == 0 {
		c.cur = &changeLog{version: prev.version, byKey: prev.byKey, ordered: prev.ordered, asOf: now}
		return
	}
	// Versions in key order within one refresh: deterministic pages.
	slices.SortFunc(changed, func(a, b *KeyLimitState) int { return strings.Compare(a.APIKeyID, b.APIKeyID) })
	version := prev.version
	byKey := make(map[string]*KeyLimitState, len(prev.byKey)+len(changed))
	for k, v := range prev.byKey {
		byKey[k] = v
	}
	for _, st := range changed {
		version++
		st.Version = version
		byKey[st.APIKeyID] = st
	}
	// Keep only each key's latest entry: an older one was replaced.
	ordered := make([]*KeyLimitState, 0, len(prev.ordered)+len(changed))
	for _, st := range prev.ordered {
		if byKey[st.APIKeyID] == st {
			ordered = append(ordered, st)
		}
	}
	ordered = append(ordered, changed...)
	c.cur = &changeLog{version: version, byKey: byKey, ordered: ordered, asOf: now}
}

// ErrBadVersion: a since token that this server did not write.
var ErrBadVersion = errors.New("malformed version")

// maxVersionBytes bounds a since token (16 hex digits, a dot, 20 digits).
const maxVersionBytes = 40

// parseVersion reads "<epoch>.<n>"; "" and "0" mean from the start.
func parseVersion(tok string) (epoch string, n uint64, err error) {
	if tok == "" || tok == "0" {
		return "", 0, nil
	}
	if len(tok) > maxVersionBytes {
		return "", 0, fmt.Errorf("%w: longer than %d bytes", ErrBadVersion, maxVersionBytes)
	}
	epoch, num, ok := strings.Cut(tok, ".")
	if !ok || len(epoch) != 16 || strings.Trim(epoch, "0123456789abcdef") != "" {
		return "", 0, fmt.Errorf("%w: want the version of an earlier answer (<16 hex digits>.<number>), or 0", ErrBadVersion)
	}
	n, err = strconv.ParseUint(num, 10, 64)
	if err != nil || strings.HasPrefix(num, "+") {
		return "", 0, fmt.Errorf("%w: %q is not a number", ErrBadVersion, num)
	}
	return epoch, n, nil
}

// ChangesPage is one answer of GET /v1/limits?since=.
type ChangesPage struct {
	// Reset: the since token was of another process or too new, so this
	// answer (with the pages that follow it) is every key's state from the
	// start: the gateway should forget keys that do not appear.
	Reset bool `json:"reset"`
	// Keys are the states changed after since, oldest change first.
	Keys []*KeyLimitState `json:"keys"`
	// Version is the token for the next call's since.
	Version string `json:"version"`
	// More: the page was cut at the limit; call again with Version at
	// once.
	More bool `json:"more"`
	// AsOf is when the states were computed (the last refresh);
	// StalenessSeconds the caller's now minus AsOf.
	AsOf             time.Time `json:"as_of"`
	StalenessSeconds float64   `json:"staleness_seconds"`
}

// Changes returns the key states changed since the token since (an
// earlier answer's Version; "" or "0" for all), at most limit of them,
// those of keys visible to see only (nil: all). Errors: ErrBadVersion,
// ErrStale (as Lookup: the states come from the same snapshot).
func (v *View) Changes(since string, limit int, see func(customerID string) bool, now time.Time) (ChangesPage, error) {
	epoch, n, err := parseVersion(since)
	if err != nil {
		return ChangesPage{}, err
	}
	s := v.snap.Load()
	if s == nil || now.Sub(s.asOf) > v.cfg.MaxStaleness {
		return ChangesPage{}, ErrStale
	}
	v.changes.mu.Lock()
	log, cur := v.changes.cur, v.changes.epoch
	v.changes.mu.Unlock()
	page := ChangesPage{Keys: []*KeyLimitState{}, AsOf: log.asOf, StalenessSeconds: max(now.Sub(log.asOf).Seconds(), 0)}
	if epoch != cur || n > log.version {
		page.Reset = since != "" && since != "0"
		n = 0
	}
	i := sort.Search(len(log.ordered), func(i int) bool { return log.ordered[i].Version > n })
	last := n
	for ; i < len(log.ordered); i++ {
		st := log.ordered[i]
		if len(page.Keys) == limit {
			page.More = true
			break
		}
		last = st.Version
		if see == nil || see(st.CustomerID) {
			page.Keys = append(page.Keys, st)
		}
	}
	if !page.More {
		last = log.version
	}
	page.Version = cur + "." + strconv.FormatUint(last, 10)
	return page, nil
}
