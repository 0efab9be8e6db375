package limits

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"
)

// MaxCatalogueBytes caps the catalogue file. The file is read whole before
// parsing, so the cap bounds the memory a corrupt or hostile file can take;
// 10 MiB holds about a hundred thousand customers with a few keys each.
const MaxCatalogueBytes = 10 << 20

// Limits on catalogue items. maxIDBytes matches the event schema's bound on
// api_key_id and customer_id, so every id an event can carry can be listed.
const (
	maxIDBytes     = 128
	maxThresholds  = 32
	maxURLBytes    = 2048
	maxUnits       = 1e15 // far above any plan, far below float64's exact-integer range
	maxThreshold   = 10.0
	maxYAMLErrLine = 20
	// maxReportedErrors bounds the validation errors reported at once.
	maxReportedErrors = 100
)

// Plan is one entry of the plan catalogue.
type Plan struct {
	// ID names the plan; customers refer to it. 1-128 bytes, printable.
	ID string `yaml:"id"`
	// IncludedUnits are the units included per billing period (a calendar
	// month, UTC).
	IncludedUnits float64 `yaml:"included_units"`
	// HardLimit is the number of units at which a gateway should refuse
	// requests; 0 (or absent) means no hard limit. When set it must be at
	// least IncludedUnits, or the included units could never be used.
	HardLimit float64 `yaml:"hard_limit"`
	// AlertThresholds are fractions of IncludedUnits (in (0, 10]) at which
	// a customer with a webhook is alerted once per period, e.g. [0.8, 1.0].
	// They need IncludedUnits > 0: a fraction of nothing is always crossed.
	AlertThresholds []float64 `yaml:"alert_thresholds"`
	// RateLimits are per-key request rates that gateways enforce (sliding
	// windows, see RateLimit), e.g. [{per: 1s, requests: 20}, {per: 1m,
	// requests: 600}]. At most 8, each window once. Empty: no rate limit.
	RateLimits []RateLimit `yaml:"rate_limits"`
	// BillRejected bills requests a gateway refuses (over a rate or hard
	// limit, or with a key that is not active) as the units the gateway
	// reports. Default false: a gateway reports refused requests with 0
	// units, so they are counted as requests but not billed.
	BillRejected bool `yaml:"bill_rejected"`
}

// Customer is one entry of the customer list.
type Customer struct {
	// ID names the customer as events and rollups carry it. 1-128 bytes,
	// printable.
	ID string `yaml:"id"`
	// Plan is the ID of the customer's plan.
	Plan string `yaml:"plan"`
	// AlertWebhook receives usage alerts; empty means no alerts. https, or
	// http for a loopback host only (local development and tests): alerts
	// carry usage figures that should not cross networks in clear text.
	AlertWebhook string `yaml:"alert_webhook"`
	// AlertWebhookSecretsFile names a file of this customer's own signing
	// secrets, one per line (see ReadWebhookSecrets); its alerts are then
	// signed with them instead of limits.webhook_secret. Two lines while a
	// secret is rotated. The file is read at every delivery. Empty: the
	// shared secret.
	AlertWebhookSecretsFile string `yaml:"alert_webhook_secrets_file"`
	// Keys are the public ids of the customer's API keys. A key belongs to
	// exactly one customer. The file's keys list (KeyEntries) fills it.
	Keys []string `yaml:"-"`
	// KeyStates are the states of those of Keys that are not simply active
	// (disabled, not_before, expires_at); a key without one is active. The
	// file's keys list fills it.
	KeyStates map[string]KeyState `yaml:"-"`
	// KeyEntries is the keys list as the file writes it: plain ids, or
	// mappings with a KeyState. ParseCatalogue derives Keys and KeyStates
	// from it; a catalogue built in code sets those two instead.
	KeyEntries []KeyEntry `yaml:"keys"`
	// KeyPeriods are keys the customer holds for a time span only: a key
	// that moved to or from another customer, or was replaced. An event of
	// such a key is attributed by its own time. See KeyPeriod.
	KeyPeriods []KeyPeriod `yaml:"key_periods"`
}

// Catalogue is the content of the catalogue file: plans and the customers
// who hold them. Get one from LoadRegistry or ParseCatalogue, which
// validate it; a Catalogue built by hand should pass Validate before it is
// given to a Registry.
type Catalogue struct {
	// Plans are the plans customers may hold.
	Plans []Plan `yaml:"plans"`
	// Customers are the customers and their keys.
	Customers []Customer `yaml:"customers"`

	// sum is the SHA-256 of the file it was parsed from, so WatchFile can
	// tell that the file on disk is the one already loaded.
	sum [sha256.Size]byte
}

// LoadRegistry reads and validates the catalogue file at path. Every
// problem is reported at once (errors.Join), each naming its item.
func LoadRegistry(path string) (*Catalogue, error) {
	data, err := readCapped(path)
	if err != nil {
		return nil, err
	}
	c, err := ParseCatalogue(data)
	if err != nil {
		return nil, fmt.Errorf("catalogue %s: %w", path, err)
	}
	return c, nil
}

// readCapped reads a file of at most MaxCatalogueBytes.
func readCapped(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("catalogue: %w", err)
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, MaxCatalogueBytes+1))
	if err != nil {
		return nil, fmt.Errorf("catalogue %s: %w", path, err)
	}
	if len(data) > MaxCatalogueBytes {
		return nil, fmt.Errorf("catalogue %s: larger than %d bytes", path, MaxCatalogueBytes)
	}
	return data, nil
}

// ParseCatalogue decodes and validates a catalogue. Unknown fields, a
// second YAML document and an empty document are errors: an empty file is
// far more often a half-written one than an intent to drop every customer
// (write "plans: []" and "customers: []" for an empty catalogue).
func ParseCatalogue(data []byte) (*Catalogue, error) {
	if len(data) > MaxCatalogueBytes {
		return nil, fmt.Errorf("larger than %d bytes", MaxCatalogueBytes)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var c Catalogue
	// yaml.v3 bounds nesting depth (10,000) and alias expansion ("excessive
	// aliasing") itself, so hostile documents end here with an error.
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("the document is empty")
		}
		return nil, shortenYAMLError(err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document")
	}
	c.splitKeyEntries()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	c.sum = sha256.Sum256(data)
	return &c, nil
}

// shortenYAMLError keeps the first lines of a decoding error: a hostile
// file can produce one line per node, and the error ends up in logs.
func shortenYAMLError(err error) error {
	lines := strings.Split(err.Error(), "\n")
	if len(lines) <= maxYAMLErrLine {
		return err
	}
	return fmt.Errorf("%s\n  ... and %d more", strings.Join(lines[:maxYAMLErrLine], "\n"), len(lines)-maxYAMLErrLine)
}

// Validate reports every invalid item at once, each error naming the plan,
// customer or key it concerns.
func (c *Catalogue) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	plans := make(map[string]bool, len(c.Plans))
	for i, p := range c.Plans {
		name := fmt.Sprintf("plans[%d]", i)
		if msg := idRule(p.ID); msg != "" {
			add("%s: id %s", name, msg)
		} else {
			name = fmt.Sprintf("plan %q", p.ID)
			if plans[p.ID] {
				add("%s: defined twice", name)
			}
			plans[p.ID] = true
		}
		if !validUnits(p.IncludedUnits) {
			add("%s: included_units %v must be a number in [0, %g]", name, p.IncludedUnits, maxUnits)
		}
		if !validUnits(p.HardLimit) {
			add("%s: hard_limit %v must be a number in [0, %g] (0 = none)", name, p.HardLimit, maxUnits)
		} else if p.HardLimit > 0 && p.HardLimit < p.IncludedUnits {
			add("%s: hard_limit %v is below included_units %v", name, p.HardLimit, p.IncludedUnits)
		}
		if len(p.AlertThresholds) > maxThresholds {
			add("%s: more than %d alert_thresholds", name, maxThresholds)
		}
		if len(p.AlertThresholds) > 0 && !(p.IncludedUnits > 0) {
			add("%s: alert_thresholds need included_units > 0", name)
		}
		seen := map[float64]bool{}
		for _, t := range p.AlertThresholds {
			if !(t > 0 && t <= maxThreshold) { // also rejects NaN
				add("%s: alert threshold %v is not in (0, %g]", name, t, maxThreshold)
			}
			if seen[t] {
				add("%s: alert threshold %v listed twice", name, t)
			}
			seen[t] = true
		}
		errs = append(errs, validateRateLimits(name, p.RateLimits)...)
	}

	customers := make(map[string]bool, len(c.Customers))
	keyOwner := map[string]string{}
	for i, cu := range c.Customers {
		name := fmt.Sprintf("customers[%d]", i)
		if msg := idRule(cu.ID); msg != "" {
			add("%s: id %s", name, msg)
		} else {
			name = fmt.Sprintf("customer %q", cu.ID)
			if customers[cu.ID] {
				add("%s: defined twice", name)
			}
			customers[cu.ID] = true
		}
		switch {
		case cu.Plan == "":
			add("%s: plan is missing", name)
		case !plans[cu.Plan]:
			add("%s: unknown plan %q", name, cu.Plan)
		}
		if cu.AlertWebhook != "" {
			if err := checkWebhookURL(cu.AlertWebhook); err != nil {
				add("%s: alert_webhook: %v", name, err)
			}
		}
		if cu.AlertWebhookSecretsFile != "" {
			if _, err := ReadWebhookSecrets(cu.AlertWebhookSecretsFile); err != nil {
				add("%s: alert_webhook_secrets_file: %v", name, err)
			}
		}
		for j, k := range cu.Keys {
			if msg := idRule(k); msg != "" {
				add("%s: keys[%d] %s", name, j, msg)
				continue
			}
			owner, dup := keyOwner[k]
			switch {
			case !dup:
				keyOwner[k] = cu.ID
			case owner == cu.ID:
				add("%s: key %q listed twice", name, k)
			default:
				add("key %q belongs to two customers: %q and %q", k, owner, cu.ID)
			}
		}
	}
	errs = append(errs, c.validateKeyPeriods()...)
	errs = append(errs, c.validateKeyStates()...)
	if len(errs) > maxReportedErrors {
		// Every problem is worth reporting, but a generated or hostile file
		// can hold millions; the error is logged whole.
		errs = append(errs[:maxReportedErrors], fmt.Errorf("... and %d more problems", len(errs)-maxReportedErrors))
	}
	return errors.Join(errs...)
}

// validUnits accepts finite numbers in [0, maxUnits]; YAML's .nan and .inf
// decode into float64 and must not reach the arithmetic.
func validUnits(f float64) bool {
	return f >= 0 && f <= maxUnits && !math.IsInf(f, 0)
}

// idRule applies the event schema's rule for ids: 1-128 bytes of valid
// UTF-8 without control characters (they break logs, CSV and terminals).
// It returns "" for a valid id, otherwise what is wrong.
func idRule(s string) string {
	if s == "" {
		return "is empty"
	}
	if len(s) > maxIDBytes {
		return fmt.Sprintf("is longer than %d bytes", maxIDBytes)
	}
	if !utf8.ValidString(s) {
		return "is not valid UTF-8"
	}
	for _, r := range s {
		if r < 0x20 || (r >= 0x7F && r <= 0x9F) {
			return "contains control characters"
		}
	}
	return ""
}

// checkWebhookURL allows https anywhere and plain http to loopback hosts
// only.
func checkWebhookURL(raw string) error {
	if len(raw) > maxURLBytes {
		return fmt.Errorf("longer than %d bytes", maxURLBytes)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("not a valid URL")
	}
	if u.User != nil {
		// Credentials in a URL end up in logs and error texts; the
		// signature is the receiver's proof of origin.
		return errors.New("must not carry credentials (user:password@)")
	}
	if u.Hostname() == "" {
		return errors.New("has no host")
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if isLoopback(u.Hostname()) {
			return nil
		}
		return errors.New("http is allowed for localhost only; use https")
	default:
		return fmt.Errorf("scheme %q is not https", u.Scheme)
	}
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// index is a Catalogue compiled for lookups. It is immutable once built,
// so readers share it without locks.
type index struct {
	cat       *Catalogue
	keys      map[string]string        // api key id -> customer id
	states    map[string]*KeyState     // api key id (plain keys) -> state, when not simply active
	periods   map[string][]ownedPeriod // api key id -> time-bounded owners, by from
	customers map[string]*Customer
	plans     map[string]*compiledPlan
}

// compiledPlan keeps what Lookup needs without allocating: the hard limit
// as a pointer that every Limit of the plan shares.
type compiledPlan struct {
	Plan
	hardLimit *float64 // nil when the plan has none
}

// noRateLimits is the (empty, non-nil) rate limits of a plan without any,
// so that JSON answers carry [] rather than null.
var noRateLimits = []RateLimit{}

func newIndex(c *Catalogue) *index {
	if c == nil {
		c = &Catalogue{}
	}
	ix := &index{
		cat:       c,
		keys:      make(map[string]string),
		states:    make(map[string]*KeyState),
		customers: make(map[string]*Customer, len(c.Customers)),
		plans:     make(map[string]*compiledPlan, len(c.Plans)),
	}
	// First definition wins on duplicates, so an unvalidated catalogue
	// still gives a deterministic index.
	for i := range c.Plans {
		p := &c.Plans[i]
		if _, dup := ix.plans[p.ID]; dup {
			continue
		}
		cp := &compiledPlan{Plan: *p}
		cp.AlertThresholds = slices.Clone(p.AlertThresholds)
		slices.Sort(cp.AlertThresholds)
		cp.RateLimits = slices.Clone(p.RateLimits)
		slices.SortFunc(cp.RateLimits, func(a, b RateLimit) int { return cmp.Compare(a.Per, b.Per) })
		if len(cp.RateLimits) == 0 {
			cp.RateLimits = noRateLimits
		}
		if p.HardLimit > 0 {
			h := p.HardLimit
			cp.hardLimit = &h
		}
		ix.plans[p.ID] = cp
	}
	for i := range c.Customers {
		cu := &c.Customers[i]
		if _, dup := ix.customers[cu.ID]; dup {
			continue
		}
		ix.customers[cu.ID] = cu
		for _, k := range cu.Keys {
			if _, dup := ix.keys[k]; !dup {
				ix.keys[k] = cu.ID
				if st, ok := cu.KeyStates[k]; ok && !st.isZero() {
					ix.states[k] = &st
				}
			}
		}
	}
	ix.periods = indexKeyPeriods(c)
	return ix
}

// Registry resolves API keys to customers and customers to plans from the
// current catalogue. Swap replaces the catalogue atomically: readers never
// block and always see one whole catalogue, old or new.
//
// A Registry is also a prometheus.Collector of
// meterline_registry_reloads_total{result} (result "success" or "error"),
// counted by WatchFile. NewView registers it; a process without a View
// (a sink-only role) registers it itself.
type Registry struct {
	cur     atomic.Pointer[index]
	reloads *prometheus.CounterVec
	// polls counts WatchFile's completed polls of the catalogue file, so
	// that a test can tell that the watcher has looked at a change.
	polls atomic.Int64
}

// NewRegistry returns a Registry holding c. A nil c is an empty catalogue:
// every key is unknown.
func NewRegistry(c *Catalogue) *Registry {
	r := &Registry{
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterline_registry_reloads_total",
			Help: "Catalogue file reloads after a change, by result (success, error: the previous catalogue was kept).",
		}, []string{"result"}),
	}
	for _, res := range []string{"success", "error"} {
		r.reloads.WithLabelValues(res) // export zeros, so alerts on rate() work from the start
	}
	r.cur.Store(newIndex(c))
	return r
}

// Swap installs c (nil: empty) as the current catalogue. The indexes are
// built before the switch, so Swap costs the build and readers pay nothing.
func (r *Registry) Swap(c *Catalogue) {
	r.cur.Store(newIndex(c))
}

// Catalogue returns the current catalogue. It is shared: do not modify it.
func (r *Registry) Catalogue() *Catalogue {
	return r.cur.Load().cat
}

// CustomerOfKey returns the customer that holds apiKeyID now.
func (r *Registry) CustomerOfKey(apiKeyID string) (string, bool) {
	return r.cur.Load().ownerAt(apiKeyID, time.Now())
}

// Customer returns a copy of the customer with that id.
func (r *Registry) Customer(id string) (Customer, bool) {
	c, ok := r.cur.Load().customers[id]
	if !ok {
		return Customer{}, false
	}
	return cloneCustomer(*c), true
}

// Plan returns a copy of the plan with that id.
func (r *Registry) Plan(id string) (Plan, bool) {
	p, ok := r.cur.Load().plans[id]
	if !ok {
		return Plan{}, false
	}
	out := p.Plan
	out.AlertThresholds = slices.Clone(p.AlertThresholds)
	out.RateLimits = slices.Clone(p.RateLimits)
	return out, true
}

// Customers returns copies of every customer, in catalogue order.
func (r *Registry) Customers() []Customer {
	cat := r.cur.Load().cat
	out := make([]Customer, 0, len(cat.Customers))
	for _, c := range cat.Customers {
		out = append(out, cloneCustomer(c))
	}
	return out
}

// cloneCustomer copies the Keys slice, so callers cannot change the shared
// catalogue through it.
func cloneCustomer(c Customer) Customer {
	c.Keys = slices.Clone(c.Keys)
	c.KeyStates = maps.Clone(c.KeyStates)
	c.KeyEntries = slices.Clone(c.KeyEntries)
	c.KeyPeriods = slices.Clone(c.KeyPeriods)
	return c
}

// Describe implements prometheus.Collector.
func (r *Registry) Describe(ch chan<- *prometheus.Desc) { r.reloads.Describe(ch) }

// Collect implements prometheus.Collector.
func (r *Registry) Collect(ch chan<- prometheus.Metric) { r.reloads.Collect(ch) }
