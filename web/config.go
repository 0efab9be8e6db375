package web

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Config is the `ui:` section of the configuration file.
type Config struct {
	// Disabled turns the web interface off (it is served by the query
	// role otherwise).
	Disabled bool `yaml:"disabled"`
	// SessionIdle ends a session that made no request for this long.
	// Default 30m.
	SessionIdle time.Duration `yaml:"session_idle"`
	// SessionMax ends a session this long after sign-in, however active.
	// Default 12h.
	SessionMax time.Duration `yaml:"session_max"`
	// MaxSessions bounds the sessions held in memory; signing in beyond it
	// ends the least recently used one. Default 10000.
	MaxSessions int `yaml:"max_sessions"`
	// SignInPerMinute bounds sign-in attempts (and portal code exchanges)
	// per client IP and minute; more answer 429. Default 10.
	SignInPerMinute int `yaml:"sign_in_per_minute"`
	// FrameAncestors lists the origins that may embed the pages in a frame
	// (the customer portal inside the business's own site), e.g.
	// https://app.example.com. Default: none, no page may be framed.
	FrameAncestors []string `yaml:"frame_ancestors"`
	// PublicURL is the address people reach Meterline at
	// (https://meter.example.com), the base of portal links. Default: the
	// scheme and Host of the request that asks for the link. An https://
	// address makes cookies Secure and turns HSTS on even when Meterline
	// itself serves plain HTTP behind a TLS-terminating proxy.
	PublicURL string `yaml:"public_url"`
	// TrustedProxies lists the proxies (CIDR prefixes or addresses, e.g.
	// 10.0.0.0/8) whose X-Forwarded-For the sign-in rate limit believes: when
	// the connection comes from one of them, the limit counts the rightmost
	// address of X-Forwarded-For that is not itself a trusted proxy. From
	// any other peer the header is ignored. Default: none (the connection's
	// address is counted).
	TrustedProxies []string `yaml:"trusted_proxies"`
}

// WithDefaults fills the unset settings.
func (c Config) WithDefaults() Config {
	if c.SessionIdle == 0 {
		c.SessionIdle = 30 * time.Minute
	}
	if c.SessionMax == 0 {
		c.SessionMax = 12 * time.Hour
	}
	if c.MaxSessions == 0 {
		c.MaxSessions = 10000
	}
	if c.SignInPerMinute == 0 {
		c.SignInPerMinute = 10
	}
	return c
}

// Validate reports every invalid setting at once.
func (c Config) Validate() error {
	var errs []error
	if c.SessionIdle < time.Minute || c.SessionIdle > 24*time.Hour {
		errs = append(errs, fmt.Errorf("ui.session_idle: %s is out of range 1m-24h", c.SessionIdle))
	}
	if c.SessionMax < c.SessionIdle || c.SessionMax > 30*24*time.Hour {
		errs = append(errs, fmt.Errorf("ui.session_max: %s must be between ui.session_idle and 720h", c.SessionMax))
	}
	if c.MaxSessions < 1 || c.MaxSessions > 1_000_000 {
		errs = append(errs, fmt.Errorf("ui.max_sessions: %d is out of range 1-1000000", c.MaxSessions))
	}
	if c.SignInPerMinute < 1 || c.SignInPerMinute > 10000 {
		errs = append(errs, fmt.Errorf("ui.sign_in_per_minute: %d is out of range 1-10000", c.SignInPerMinute))
	}
	for i, o := range c.FrameAncestors {
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.Path != "" || u.RawQuery != "" ||
			strings.ContainsAny(o, " ;,'\"") {
			errs = append(errs, fmt.Errorf("ui.frame_ancestors[%d]: %q is not an origin such as https://app.example.com", i, o))
		}
	}
	if c.PublicURL != "" {
		u, err := url.Parse(c.PublicURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" {
			errs = append(errs, fmt.Errorf("ui.public_url: %q is not an absolute http(s) URL", c.PublicURL))
		}
	}
	for i, p := range c.TrustedProxies {
		if _, err := parseProxy(p); err != nil {
			errs = append(errs, fmt.Errorf("ui.trusted_proxies[%d]: %q is not a CIDR prefix or address such as 10.0.0.0/8", i, cut(p)))
		}
	}
	return errors.Join(errs...)
}
