package limits

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Bounds on rate limits. A gateway keeps two counters per key and rate
// limit, so the number of limits per plan bounds its memory per key.
const (
	maxRateLimits   = 8
	minRatePer      = time.Second
	maxRatePer      = 24 * time.Hour
	maxRateRequests = 1_000_000_000
)

// RateLimit is one rate limit of a plan: at most Requests requests per key
// in any window of length Per (a sliding window). Catalogue entry:
//
//	rate_limits:
//	  - {per: 1s, requests: 20}
//	  - {per: 1m, requests: 600}
type RateLimit struct {
	// Per is the window, 1s to 24h.
	Per time.Duration
	// Requests is the most requests per window, 1 to 1e9.
	Requests int64
	// line is the entry's line in the catalogue file, for errors; 0 for a
	// catalogue built in code.
	line int
}

// UnmarshalYAML reads {per: <duration>, requests: <n>}, refusing unknown
// fields (the decoder's KnownFields does not reach custom unmarshalers).
func (rl *RateLimit) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: a rate limit is a mapping {per: 1s, requests: 20}", n.Line)
	}
	*rl = RateLimit{line: n.Line}
	var havePer, haveReq bool
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch k.Value {
		case "per":
			if v.Kind != yaml.ScalarNode {
				return fmt.Errorf("line %d: rate limit per: a duration such as 1s, 1m or 1h", v.Line)
			}
			d, err := time.ParseDuration(v.Value)
			if err != nil {
				return fmt.Errorf("line %d: rate limit per %q: a duration such as 1s, 1m or 1h", v.Line, v.Value)
			}
			rl.Per, havePer = d, true
		case "requests":
			// strconv, not Decode: yaml.v3 truncates 2.5 into an int.
			r, err := strconv.ParseInt(v.Value, 10, 64)
			if v.Kind != yaml.ScalarNode || err != nil {
				return fmt.Errorf("line %d: rate limit requests %q: a whole number", v.Line, v.Value)
			}
			rl.Requests, haveReq = r, true
		default:
			return fmt.Errorf("line %d: rate limit: unknown field %q (per, requests)", k.Line, k.Value)
		}
	}
	if !havePer || !haveReq {
		return fmt.Errorf("line %d: a rate limit needs both per and requests", n.Line)
	}
	return nil
}

// MarshalYAML writes the entry back as the file holds it.
func (rl RateLimit) MarshalYAML() (any, error) {
	return map[string]any{"per": formatPer(rl.Per), "requests": rl.Requests}, nil
}

// rateLimitJSON is a rate limit as /v1/limits answers it.
type rateLimitJSON struct {
	Per           string  `json:"per"`
	WindowSeconds float64 `json:"window_seconds"`
	Requests      int64   `json:"requests"`
}

// MarshalJSON writes {"per":"1s","window_seconds":1,"requests":20}.
func (rl RateLimit) MarshalJSON() ([]byte, error) {
	return json.Marshal(rateLimitJSON{Per: formatPer(rl.Per), WindowSeconds: rl.Per.Seconds(), Requests: rl.Requests})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (rl *RateLimit) UnmarshalJSON(b []byte) error {
	var j rateLimitJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	d, err := time.ParseDuration(j.Per)
	if err != nil {
		return err
	}
	*rl = RateLimit{Per: d, Requests: j.Requests}
	return nil
}

// formatPer writes 1m rather than Go's 1m0s.
func formatPer(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// validateRateLimits checks one plan's rate limits.
func validateRateLimits(name string, rls []RateLimit) []error {
	var errs []error
	if len(rls) > maxRateLimits {
		errs = append(errs, fmt.Errorf("%s: more than %d rate_limits", name, maxRateLimits))
	}
	seen := map[time.Duration]int{}
	for i, rl := range rls {
		item := fmt.Sprintf("%s: rate_limits[%d]", name, i)
		if rl.line > 0 {
			item += fmt.Sprintf(" (line %d)", rl.line)
		}
		if rl.Per < minRatePer || rl.Per > maxRatePer {
			errs = append(errs, fmt.Errorf("%s: per %s is out of range %s-%s", item, rl.Per, formatPer(minRatePer), formatPer(maxRatePer)))
		} else if rl.Per%time.Millisecond != 0 {
			errs = append(errs, fmt.Errorf("%s: per %s is not a whole number of milliseconds", item, rl.Per))
		}
		if rl.Requests < 1 || rl.Requests > maxRateRequests {
			errs = append(errs, fmt.Errorf("%s: requests %d is out of range 1-%d", item, rl.Requests, int64(maxRateRequests)))
		}
		if j, dup := seen[rl.Per]; dup {
			errs = append(errs, fmt.Errorf("%s: per %s is listed twice (also rate_limits[%d]); keep one", item, formatPer(rl.Per), j))
		} else {
			seen[rl.Per] = i
		}
	}
	return errs
}

// KeyState is what a key's entry may say besides its id: whether it may
// be used now. A rotation adds the new key and gives the old one an
// ExpiresAt; both stay the customer's, so its usage is continuous and
// events of the old key (refused ones included) are still attributed.
type KeyState struct {
	// Disabled refuses the key at gateways (403), for good or until the
	// entry changes.
	Disabled bool `yaml:"disabled,omitempty"`
	// NotBefore: the key is refused before this instant. Zero: no bound.
	NotBefore time.Time `yaml:"not_before,omitempty"`
	// ExpiresAt: the key is refused from this instant on. Zero: never.
	ExpiresAt time.Time `yaml:"expires_at,omitempty"`
}

// KeyStatus is what a gateway does with a key now.
type KeyStatus string

// Key statuses. Only KeyActive passes; the other three answer 403.
const (
	KeyActive      KeyStatus = "active"
	KeyDisabled    KeyStatus = "disabled"
	KeyExpired     KeyStatus = "expired"
	KeyNotYetValid KeyStatus = "not_yet_valid"
)

// StatusAt returns the key's status at t: disabled first, then not yet
// valid, then expired.
func (s KeyState) StatusAt(t time.Time) KeyStatus {
	switch {
	case s.Disabled:
		return KeyDisabled
	case !s.NotBefore.IsZero() && t.Before(s.NotBefore):
		return KeyNotYetValid
	case !s.ExpiresAt.IsZero() && !t.Before(s.ExpiresAt):
		return KeyExpired
	}
	return KeyActive
}

func (s KeyState) isZero() bool { return s == KeyState{} }

// KeyEntry is one item of a customer's keys list as the file writes it:
// a plain id, or a mapping with the id and its state:
//
//	keys:
//	  - key_live_1
//	  - {id: key_live_0, expires_at: 2026-12-08T00:00:00Z}
//	  - {id: key_stolen, disabled: true}
//
// ParseCatalogue turns the list into Customer.Keys and Customer.KeyStates.
type KeyEntry struct {
	ID string
	KeyState
	line int
}

// UnmarshalYAML reads a plain id or a mapping {id, disabled, not_before,
// expires_at}, refusing unknown fields.
func (e *KeyEntry) UnmarshalYAML(n *yaml.Node) error {
	*e = KeyEntry{line: n.Line}
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag != "!!null" {
			e.ID = n.Value
		}
		return nil
	case yaml.MappingNode:
	default:
		return fmt.Errorf("line %d: a key is an id or a mapping {id: ..., expires_at: ...}", n.Line)
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		var err error
		switch k.Value {
		case "id":
			if v.Kind != yaml.ScalarNode {
				return fmt.Errorf("line %d: key id must be a string", v.Line)
			}
			e.ID = v.Value
		case "disabled":
			err = v.Decode(&e.Disabled)
		case "not_before":
			err = v.Decode(&e.NotBefore)
		case "expires_at":
			err = v.Decode(&e.ExpiresAt)
		default:
			return fmt.Errorf("line %d: key: unknown field %q (id, disabled, not_before, expires_at)", k.Line, k.Value)
		}
		if err != nil {
			return fmt.Errorf("line %d: key %s %q: %s", v.Line, k.Value, v.Value, strings.TrimPrefix(err.Error(), "yaml: "))
		}
	}
	if e.ID == "" {
		return fmt.Errorf("line %d: key: id is missing", n.Line)
	}
	return nil
}

// MarshalYAML writes a plain id when the key has no state.
func (e KeyEntry) MarshalYAML() (any, error) {
	if e.isZero() {
		return e.ID, nil
	}
	type entry struct {
		ID       string `yaml:"id"`
		KeyState `yaml:",inline"`
	}
	return entry{e.ID, e.KeyState}, nil
}

// splitKeyEntries fills Keys and KeyStates from the keys list as decoded.
func (c *Catalogue) splitKeyEntries() {
	for i := range c.Customers {
		cu := &c.Customers[i]
		if cu.KeyEntries == nil {
			continue
		}
		cu.Keys = make([]string, 0, len(cu.KeyEntries))
		for _, e := range cu.KeyEntries {
			cu.Keys = append(cu.Keys, e.ID)
			if !e.isZero() {
				if cu.KeyStates == nil {
					cu.KeyStates = map[string]KeyState{}
				}
				cu.KeyStates[e.ID] = e.KeyState
			}
		}
	}
}

// validateKeyStates checks that each state names a listed key and that its
// bounds are in order.
func (c *Catalogue) validateKeyStates() []error {
	var errs []error
	check := func(item string, s KeyState) {
		if !s.NotBefore.IsZero() && !s.ExpiresAt.IsZero() && !s.NotBefore.Before(s.ExpiresAt) {
			errs = append(errs, fmt.Errorf("%s: not_before %s is not before expires_at %s", item,
				s.NotBefore.UTC().Format(time.RFC3339), s.ExpiresAt.UTC().Format(time.RFC3339)))
		}
	}
	for _, cu := range c.Customers {
		name := fmt.Sprintf("customer %q", cu.ID)
		lines := map[string]int{}
		for _, e := range cu.KeyEntries {
			lines[e.ID] = e.line
		}
		ids := make([]string, 0, len(cu.KeyStates))
		for k := range cu.KeyStates {
			ids = append(ids, k)
		}
		slices.Sort(ids)
		for _, k := range ids {
			item := fmt.Sprintf("%s: key %q", name, k)
			if l := lines[k]; l > 0 {
				item += fmt.Sprintf(" (line %d)", l)
			}
			if !slices.Contains(cu.Keys, k) {
				errs = append(errs, fmt.Errorf("%s: a state for a key the customer does not list", item))
				continue
			}
			check(item, cu.KeyStates[k])
		}
		for j, p := range cu.KeyPeriods {
			check(fmt.Sprintf("%s: key_periods[%d] (key %q)", name, j, p.Key), p.KeyState)
		}
	}
	return errs
}
