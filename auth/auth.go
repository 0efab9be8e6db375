// Package auth authenticates HTTP callers by bearer token and tells what each
// token may do.
//
// Tokens are never stored: the configuration (and the tokens file, which is
// reloaded while the server runs) holds the SHA-256 of each token (hex), so
// a leaked config file does not leak credentials. Lookup hashes the
// presented token and compares it with every stored hash in constant time, so
// the time taken does not reveal which stored hash is closest.
package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"
)

// Scope is one permission a token carries.
type Scope string

// Scopes understood by Meterline. A customer scope is written
// "customer:<customer_id>" and limits reads to that customer.
const (
	ScopeIngest  Scope = "ingest"  // POST /v1/events
	ScopeAdmin   Scope = "admin"   // everything, including raw event reads and privacy operations
	ScopeFinance Scope = "finance" // read usage and billing of every customer
)

// CustomerScopePrefix starts a scope that grants reads of one customer's data.
const CustomerScopePrefix = "customer:"

// ScopeCustomer stands for "any customer:<id> scope" in HasAny: endpoints
// that a customer-scoped token may call, limited to its own customers.
const ScopeCustomer Scope = "customer"

// TokenConfig is one token entry of the configuration file.
type TokenConfig struct {
	// Name identifies the holder (a gateway, a dashboard) in logs and metrics.
	Name string `yaml:"name"`
	// SHA256 is the hex SHA-256 of the token. `meterline token new` prints one.
	SHA256 string `yaml:"sha256"`
	// Scopes lists what the token may do: ingest, admin, finance, customer:<id>.
	Scopes []string `yaml:"scopes"`
	// Expires, when set, is the instant from which the token is refused
	// (401 naming the expiry). Zero: the token does not expire.
	Expires time.Time `yaml:"expires,omitempty"`
	// Gateway binds an ingest token to a gateway name: every event it posts
	// is stored with this gateway, whatever the event says. Empty: the
	// event's own gateway, or the token's name when it has none.
	Gateway string `yaml:"gateway"`
	// Customers binds an ingest token to customers: events of keys that
	// belong to another customer (or to none) are rejected one by one.
	// Empty: any customer's keys.
	Customers []string `yaml:"customers"`
}

// Principal is an authenticated caller.
type Principal struct {
	Name   string
	Scopes []Scope
	// Gateway and IngestCustomers are the token's ingest bindings
	// (TokenConfig.Gateway, TokenConfig.Customers).
	Gateway         string
	IngestCustomers []string
}

// Has reports whether the principal carries scope s.
func (p Principal) Has(s Scope) bool {
	for _, have := range p.Scopes {
		if have == s {
			return true
		}
	}
	return false
}

// HasAny reports whether the principal carries one of scopes; ScopeCustomer
// matches any customer:<id> scope.
func (p Principal) HasAny(scopes ...Scope) bool {
	for _, s := range scopes {
		if s == ScopeCustomer && len(p.Customers()) > 0 || s != ScopeCustomer && p.Has(s) {
			return true
		}
	}
	return false
}

// CanReadCustomer reports whether the principal may read customer c's
// data: admin and finance read every customer, a customer scope its own.
func (p Principal) CanReadCustomer(c string) bool {
	if p.Has(ScopeAdmin) || p.Has(ScopeFinance) {
		return true
	}
	for _, own := range p.Customers() {
		if own == c {
			return true
		}
	}
	return false
}

// Customers returns the customer ids the principal is scoped to, if any.
func (p Principal) Customers() []string {
	var out []string
	for _, s := range p.Scopes {
		if c, ok := strings.CutPrefix(string(s), CustomerScopePrefix); ok {
			out = append(out, c)
		}
	}
	return out
}

// Errors returned by Authenticate; the HTTP layer maps each to 401.
var (
	ErrNoToken      = errors.New("missing bearer token: send 'Authorization: Bearer <token>'")
	ErrInvalidToken = errors.New("invalid bearer token")
	// ErrExpiredToken is wrapped with the token's name and expiry.
	ErrExpiredToken = errors.New("bearer token expired")
)

type entry struct {
	hash      [sha256.Size]byte
	expires   time.Time // zero: never
	principal Principal
}

// tokenSet is one generation of known tokens: the configuration's inline
// ones plus those of the tokens file.
type tokenSet struct {
	entries []entry
	fileSum [sha256.Size]byte // SHA-256 of the tokens file in force, if any
}

// Tokens is the set of known tokens. The zero value knows none. The inline
// tokens of the configuration are fixed at New; the tokens file's may be
// replaced at any time (LoadFile, WatchFile) while requests are served.
type Tokens struct {
	set    atomic.Pointer[tokenSet]
	inline []TokenConfig
	now    func() time.Time // nil: time.Now; tests set it
}

// New validates the configured tokens and builds the set. Every problem is
// reported, naming the entry.
func New(cfg []TokenConfig) (*Tokens, error) {
	s, err := build(cfg, nil)
	if err != nil {
		return nil, err
	}
	t := &Tokens{inline: cfg}
	t.set.Store(s)
	return t, nil
}

// build validates the inline entries and the tokens file's together: a
// name or a hash may appear once across both.
func build(inline, file []TokenConfig) (*tokenSet, error) {
	var errs []error
	s := &tokenSet{}
	names := map[string]string{}  // name -> where it was first seen
	hashes := map[string]string{} // hash -> where it was first seen
	check := func(section string, cfg []TokenConfig) {
		for i, c := range cfg {
			at := fmt.Sprintf("%s[%d]", section, i)
			where := at
			if c.Name != "" {
				where += fmt.Sprintf(" (%s)", c.Name)
			}
			if c.Name == "" {
				errs = append(errs, fmt.Errorf("%s: name is required", where))
			} else if first, dup := names[c.Name]; dup {
				errs = append(errs, fmt.Errorf("%s: duplicate name (also %s); every token needs its own name", where, first))
			} else {
				names[c.Name] = at
			}
			sum := strings.ToLower(strings.TrimSpace(c.SHA256))
			raw, err := hex.DecodeString(sum)
			if err != nil || len(raw) != sha256.Size {
				errs = append(errs, fmt.Errorf("%s: sha256 must be 64 hex characters (the SHA-256 of the token; see `meterline token new`)", where))
			} else if first, dup := hashes[sum]; dup {
				errs = append(errs, fmt.Errorf("%s: duplicate sha256 (the same token as %s); give each holder its own token", where, first))
			} else {
				hashes[sum] = where
			}
			if len(c.Scopes) == 0 {
				errs = append(errs, fmt.Errorf("%s: at least one scope is required (ingest, admin, finance, customer:<id>)", where))
			}
			p := Principal{Name: c.Name}
			for _, s := range c.Scopes {
				switch {
				case s == string(ScopeIngest), s == string(ScopeAdmin), s == string(ScopeFinance):
				case strings.HasPrefix(s, CustomerScopePrefix) && len(s) > len(CustomerScopePrefix):
				default:
					errs = append(errs, fmt.Errorf("%s: unknown scope %q (want ingest, admin, finance or customer:<id>)", where, s))
				}
				p.Scopes = append(p.Scopes, Scope(s))
			}
			errs = append(errs, bindingErrors(where, c)...)
			p.Gateway, p.IngestCustomers = c.Gateway, c.Customers
			e := entry{expires: c.Expires, principal: p}
			copy(e.hash[:], raw)
			s.entries = append(s.entries, e)
		}
	}
	check("auth.tokens", inline)
	check("auth.tokens_file", file)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return s, nil
}

func (t *Tokens) current() *tokenSet {
	if t == nil {
		return &tokenSet{}
	}
	if s := t.set.Load(); s != nil {
		return s
	}
	return &tokenSet{}
}

func (t *Tokens) clock() time.Time {
	if t != nil && t.now != nil {
		return t.now()
	}
	return time.Now()
}

// find returns the entry whose token is tok. Every stored hash is
// compared, in constant time, whatever matches first.
func (t *Tokens) find(tok string) (entry, bool) {
	h := sha256.Sum256([]byte(tok))
	entries := t.current().entries
	found := -1
	for i := range entries {
		if subtle.ConstantTimeCompare(h[:], entries[i].hash[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return entry{}, false
	}
	return entries[found], true
}

// Lookup returns the principal whose token is tok; an expired token is
// not found.
func (t *Tokens) Lookup(tok string) (Principal, bool) {
	e, ok := t.find(tok)
	if !ok || e.expired(t.clock()) {
		return Principal{}, false
	}
	return e.principal, true
}

func (e entry) expired(now time.Time) bool {
	return !e.expires.IsZero() && !now.Before(e.expires)
}

// Authenticate reads the bearer token of r.
func (t *Tokens) Authenticate(r *http.Request) (Principal, error) {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if h == "" || !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
		return Principal{}, ErrNoToken
	}
	e, ok := t.find(strings.TrimSpace(tok))
	if !ok {
		return Principal{}, ErrInvalidToken
	}
	if e.expired(t.clock()) {
		return Principal{}, fmt.Errorf("%w: token %q expired at %s; ask its issuer for a new one",
			ErrExpiredToken, e.principal.Name, e.expires.UTC().Format(time.RFC3339))
	}
	return e.principal, nil
}

// Hash returns the hex SHA-256 of a token, as the configuration stores it.
func Hash(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// NewToken returns a random token with 256 bits of entropy and a readable
// prefix ("ml_") so leaked tokens are easy to find with secret scanners.
func NewToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return "ml_" + base64.RawURLEncoding.EncodeToString(b), nil
}

// maxBindingBytes bounds a bound gateway name or customer id, as the event
// schema bounds those fields.
const maxBindingBytes = 128

// bindingErrors checks a token's ingest bindings: they only mean
// something for an ingest token, and must be ids an event could carry.
func bindingErrors(where string, c TokenConfig) []error {
	var errs []error
	if (c.Gateway != "" || len(c.Customers) > 0) && !slices.Contains(c.Scopes, string(ScopeIngest)) {
		errs = append(errs, fmt.Errorf("%s: gateway and customers bind an ingest token; this token has no ingest scope", where))
	}
	if len(c.Gateway) > maxBindingBytes || c.Gateway != strings.TrimSpace(c.Gateway) {
		errs = append(errs, fmt.Errorf("%s: gateway must be at most %d bytes without surrounding spaces", where, maxBindingBytes))
	}
	seen := map[string]bool{}
	for _, cu := range c.Customers {
		switch {
		case cu == "" || len(cu) > maxBindingBytes:
			errs = append(errs, fmt.Errorf("%s: customers: %q must be 1-%d bytes", where, cu, maxBindingBytes))
		case seen[cu]:
			errs = append(errs, fmt.Errorf("%s: customers: %q listed twice", where, cu))
		}
		seen[cu] = true
	}
	return errs
}
