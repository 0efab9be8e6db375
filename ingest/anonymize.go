package ingest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/meterline/meterline/schemas"
)

// IP modes of the Anonymizer.
const (
	IPTruncate = "truncate" // keep the leading bits (default)
	IPHash     = "hash"     // replace with a keyed pseudonym
	IPDrop     = "drop"     // store no IP at all
)

// pseudonymPrefix is where hashed IPs live: 100::/64 is the IPv6 discard
// prefix (RFC 6666), so a pseudonym is a valid address, passes the event
// contract through Kafka, and can never be a real client.
var pseudonymPrefix = netip.MustParsePrefix("100::/64")

// DefaultDenyProperties are the patterns of property keys dropped at ingest
// unless the configuration says otherwise (see DenyProperty): direct
// identifiers, credentials and card data have no place in usage logs.
var DefaultDenyProperties = []string{"*email*", "*token*", "*password*", "*passwd*", "*secret*", "*authorization*",
	"*cookie*", "*phone*", "*card*", "name", "pan", "cvv", "ssn"}

// Anonymizer turns a validated event into what may be stored. The collector
// applies it before producing to Kafka, and the sink again before inserting
// (for events produced straight to Kafka); applying it twice gives the same
// result as once.
type Anonymizer struct {
	// IPMode is truncate, hash or drop. Default truncate.
	IPMode string `yaml:"ip_mode"`
	// IPv4PrefixBits and IPv6PrefixBits are the leading bits of the client IP
	// kept in truncate mode. Defaults 24 and 48: the last octet of IPv4 and
	// the last 80 bits of IPv6 are zeroed.
	IPv4PrefixBits int `yaml:"ipv4_prefix_bits"`
	IPv6PrefixBits int `yaml:"ipv6_prefix_bits"`
	// IPHashSecret keys the pseudonyms of hash mode (at least 16 bytes).
	IPHashSecret string `yaml:"ip_hash_secret" secret:"true"`
	// IPHashRotation is how long a pseudonym stays the same: one client IP
	// gets a new, unlinkable pseudonym every period (by event time, so a
	// redelivered event gets the same one). Default 24h.
	IPHashRotation time.Duration `yaml:"ip_hash_rotation"`
	// UserAgentMaxBytes truncates user agents (on a UTF-8 boundary).
	// Default 512, the contract's maximum; -1 drops the user agent.
	UserAgentMaxBytes int `yaml:"user_agent_max_bytes"`
	// DenyProperties are patterns of property keys that are dropped,
	// matched case-insensitively against the whole key; * stands for any
	// run of characters ("*token*" drops "X-Auth-Token"). Default
	// DefaultDenyProperties; [] keeps every property.
	DenyProperties []string `yaml:"deny_properties"`
}

// WithDefaults fills unset fields with their defaults.
func (a Anonymizer) WithDefaults() Anonymizer {
	if a.IPMode == "" {
		a.IPMode = IPTruncate
	}
	if a.IPv4PrefixBits == 0 {
		a.IPv4PrefixBits = 24
	}
	if a.IPv6PrefixBits == 0 {
		a.IPv6PrefixBits = 48
	}
	if a.IPHashRotation == 0 {
		a.IPHashRotation = 24 * time.Hour
	}
	if a.UserAgentMaxBytes == 0 {
		a.UserAgentMaxBytes = 512
	}
	if a.DenyProperties == nil {
		a.DenyProperties = DefaultDenyProperties
	}
	return a
}

// Validate reports every invalid setting.
func (a Anonymizer) Validate() error {
	var errs []error
	switch a.IPMode {
	case IPTruncate, IPDrop:
	case IPHash:
		if len(a.IPHashSecret) < 16 {
			errs = append(errs, errors.New("privacy.ip_hash_secret: hash mode needs a secret of at least 16 bytes"))
		}
	default:
		errs = append(errs, fmt.Errorf("privacy.ip_mode: %q is not truncate, hash or drop", a.IPMode))
	}
	if a.IPv4PrefixBits < 0 || a.IPv4PrefixBits > 32 {
		errs = append(errs, fmt.Errorf("privacy.ipv4_prefix_bits: %d is out of range 0-32", a.IPv4PrefixBits))
	}
	if a.IPv6PrefixBits < 0 || a.IPv6PrefixBits > 128 {
		errs = append(errs, fmt.Errorf("privacy.ipv6_prefix_bits: %d is out of range 0-128", a.IPv6PrefixBits))
	}
	if a.IPHashRotation < time.Minute {
		errs = append(errs, fmt.Errorf("privacy.ip_hash_rotation: %s is shorter than 1m", a.IPHashRotation))
	}
	for i, p := range a.DenyProperties {
		if strings.Trim(p, "*") == "" {
			errs = append(errs, fmt.Errorf("privacy.deny_properties[%d]: %q matches every key (use ip_mode and user_agent_max_bytes, not properties, to drop everything)", i, p))
		}
	}
	if a.UserAgentMaxBytes < -1 || a.UserAgentMaxBytes > 512 {
		errs = append(errs, fmt.Errorf("privacy.user_agent_max_bytes: %d is out of range -1-512", a.UserAgentMaxBytes))
	}
	return errors.Join(errs...)
}

// Apply anonymises e in place.
func (a Anonymizer) Apply(e *schemas.Event) error {
	for k := range e.Properties {
		if a.denied(k) {
			delete(e.Properties, k)
		}
	}
	if len(e.Properties) == 0 {
		e.Properties = nil
	}
	if a.UserAgentMaxBytes < 0 {
		e.UserAgent = ""
	} else {
		e.UserAgent = a.cutUserAgent(e.UserAgent)
	}
	if e.ClientIP == "" {
		return nil
	}
	ip, err := netip.ParseAddr(e.ClientIP)
	if err != nil {
		return fmt.Errorf("anonymize IP: %w", err)
	}
	e.ClientIP, err = a.anonymizeAddr(ip, e.Time)
	return err
}

// cutUserAgent cuts ua to UserAgentMaxBytes on a UTF-8 boundary.
func (a Anonymizer) cutUserAgent(ua string) string {
	if a.UserAgentMaxBytes < 0 || len(ua) <= a.UserAgentMaxBytes {
		return ua
	}
	cut := a.UserAgentMaxBytes
	for cut > 0 && !utf8.RuneStart(ua[cut]) {
		cut--
	}
	return ua[:cut]
}

// anonymizeAddr is what ip becomes under the IP mode ("" in drop mode)
// for an event at t.
func (a Anonymizer) anonymizeAddr(ip netip.Addr, t time.Time) (string, error) {
	if pseudonymPrefix.Contains(ip) {
		return ip.String(), nil // already a pseudonym (applied by the collector)
	}
	switch a.IPMode {
	case IPDrop:
		return "", nil
	case IPHash:
		if v4, ok := schemas.EmbeddedIPv4(ip); ok {
			ip = v4 // one client, one pseudonym, whichever form carried its address
		}
		return a.pseudonym(ip, t), nil
	default:
		return schemas.AnonymizeIP(ip.String(), a.IPv4PrefixBits, a.IPv6PrefixBits)
	}
}

// pseudonym is HMAC-SHA256(secret, period || ip) folded into 100::/64.
func (a Anonymizer) pseudonym(ip netip.Addr, t time.Time) string {
	m := hmac.New(sha256.New, []byte(a.IPHashSecret))
	var period [8]byte
	binary.BigEndian.PutUint64(period[:], uint64(t.UnixNano()/int64(a.IPHashRotation)))
	m.Write(period[:])
	m.Write(ip.AsSlice())
	sum := m.Sum(nil)
	var b [16]byte
	pfx := pseudonymPrefix.Addr().As16()
	copy(b[:8], pfx[:8])
	copy(b[8:], sum[:8])
	return netip.AddrFrom16(b).String()
}
