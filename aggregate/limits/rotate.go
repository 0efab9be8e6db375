package limits

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// MaxRotationOverlap bounds how long an old key stays valid beside its
// replacement.
const MaxRotationOverlap = 90 * 24 * time.Hour

// Rotation replaces one of a customer's keys: New is added, active from
// At, and Old expires at At + Overlap. Both stay the customer's, so its
// usage is continuous and events of the old key after its expiry (refused
// at gateways) are still attributed.
type Rotation struct {
	Customer string
	Old, New string
	At       time.Time
	Overlap  time.Duration
}

// Rotate returns a copy of the catalogue with the rotation applied, after
// checking it: the customer holds Old at At and it is neither disabled nor
// expiring before the rotation's expiry, New is a valid id that no one
// holds at any time, the overlap is within 0-90 days, and the resulting
// catalogue is valid. The receiver is not modified.
func (c *Catalogue) Rotate(r Rotation) (*Catalogue, error) {
	var errs []error
	if msg := idRule(r.New); msg != "" {
		errs = append(errs, fmt.Errorf("new key %s", msg))
	}
	if r.Old == r.New {
		errs = append(errs, errors.New("the new key is the old key"))
	}
	if r.Overlap < 0 || r.Overlap > MaxRotationOverlap {
		errs = append(errs, fmt.Errorf("overlap %s is out of range 0-%s", r.Overlap, MaxRotationOverlap))
	}
	for _, cu := range c.Customers {
		if slices.Contains(cu.AllKeys(), r.New) {
			errs = append(errs, fmt.Errorf("new key %q is already customer %q's (a key is never reused)", r.New, cu.ID))
		}
	}
	i := slices.IndexFunc(c.Customers, func(cu Customer) bool { return cu.ID == r.Customer })
	if i < 0 {
		errs = append(errs, fmt.Errorf("no customer %q in the catalogue", r.Customer))
		return nil, errors.Join(errs...)
	}
	expires := r.At.Add(r.Overlap).UTC().Truncate(time.Second)
	out := *c
	out.Customers = slices.Clone(c.Customers)
	cu := cloneCustomer(out.Customers[i])
	cu.KeyEntries = nil
	var state *KeyState
	plain := slices.Contains(cu.Keys, r.Old)
	var plainState KeyState
	if plain {
		plainState = cu.KeyStates[r.Old]
		state = &plainState
	} else {
		for j, p := range cu.KeyPeriods {
			if p.Key == r.Old && (p.From.IsZero() || !r.At.Before(p.From)) && (p.Until.IsZero() || r.At.Before(p.Until)) {
				state = &cu.KeyPeriods[j].KeyState
			}
		}
	}
	if state == nil {
		errs = append(errs, fmt.Errorf("customer %q does not hold key %q at %s", r.Customer, r.Old, r.At.UTC().Format(time.RFC3339)))
		return nil, errors.Join(errs...)
	}
	switch st := state.StatusAt(r.At); {
	case st != KeyActive:
		errs = append(errs, fmt.Errorf("key %q is %s at %s: rotate an active key", r.Old, st, r.At.UTC().Format(time.RFC3339)))
	case !state.ExpiresAt.IsZero() && state.ExpiresAt.Before(expires):
		errs = append(errs, fmt.Errorf("key %q expires already at %s, before %s", r.Old, state.ExpiresAt.UTC().Format(time.RFC3339), expires.Format(time.RFC3339)))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	state.ExpiresAt = expires
	if plain {
		if cu.KeyStates == nil {
			cu.KeyStates = map[string]KeyState{}
		}
		cu.KeyStates[r.Old] = plainState
	}
	cu.Keys = append(cu.Keys, r.New)
	out.Customers[i] = cu
	if err := out.Validate(); err != nil {
		return nil, fmt.Errorf("the catalogue after the rotation is invalid: %w", err)
	}
	return &out, nil
}

// KeyList returns the customer's keys as the file's keys list writes them
// (plain ids, or mappings with their state), for printing.
func (c Customer) KeyList() []KeyEntry {
	out := make([]KeyEntry, 0, len(c.Keys))
	for _, k := range c.Keys {
		out = append(out, KeyEntry{ID: k, KeyState: c.KeyStates[k]})
	}
	return out
}
