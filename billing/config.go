package billing

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// Windows the worker can report per meter event.
const (
	WindowHour = "hour"
	WindowDay  = "day"
)

// Config is the billing section of the configuration (YAML "billing").
type Config struct {
	// StripeAPIKey is the secret key (sk_...) the worker reports with.
	// Required when MappingFile is set. `meterline config` redacts it.
	StripeAPIKey string `yaml:"stripe_api_key" secret:"true"`
	// StripeAPIURL is the API base URL; empty means Stripe
	// (https://api.stripe.com). Development and tests point it at
	// stripe-mock.
	StripeAPIURL string `yaml:"stripe_api_url"`
	// WebhookSecret is the signing secret (whsec_...) of the Stripe webhook
	// endpoint POST /v1/stripe/webhook; empty leaves the endpoint off.
	WebhookSecret string `yaml:"webhook_secret" secret:"true"`
	// MappingFile maps customers to Stripe customers and plans to meters or
	// subscription items (see LoadMapping). Empty turns billing off.
	MappingFile string `yaml:"mapping_file"`
	// Interval is the time between two runs of the worker. Default 5m.
	Interval time.Duration `yaml:"interval"`
	// Lateness is how long after a window ends it is still open to late
	// events; a window is billed once it ended Lateness ago and the
	// aggregator's watermark passed its end. Default 1h.
	Lateness time.Duration `yaml:"lateness"`
	// Window is the span of one meter event: hour or day. Default hour.
	Window string `yaml:"window"`
	// MaxRequestsPerSecond caps the requests to Stripe of one process
	// (Stripe allows 100/s in live mode, 25/s in test mode). Default 20.
	MaxRequestsPerSecond int `yaml:"max_requests_per_second"`
	// RequestTimeout bounds one request to Stripe. Default 30s.
	RequestTimeout time.Duration `yaml:"request_timeout"`
	// MaxAttempts bounds the attempts of one report in one run; a report
	// still open after them is resumed by the next run. Default 5.
	MaxAttempts int `yaml:"max_attempts"`
	// RetryMin and RetryMax bound the backoff (with jitter) between
	// attempts; a longer Retry-After from Stripe wins, up to RetryMax.
	// Defaults 500ms and 30s.
	RetryMin time.Duration `yaml:"retry_min"`
	RetryMax time.Duration `yaml:"retry_max"`
	// Lookback is how far back each run looks for windows with usage not
	// yet reported. It must cover events.max_past plus Lateness, so that
	// late usage too old for Stripe is found and recorded as unbillable.
	// Default 960h (40 days).
	Lookback time.Duration `yaml:"lookback"`
}

// Defaults of Config.
const (
	DefaultInterval             = 5 * time.Minute
	DefaultLateness             = time.Hour
	DefaultMaxRequestsPerSecond = 20
	DefaultRequestTimeout       = 30 * time.Second
	DefaultMaxAttempts          = 5
	DefaultRetryMin             = 500 * time.Millisecond
	DefaultRetryMax             = 30 * time.Second
	DefaultLookback             = 40 * 24 * time.Hour
)

// WithDefaults fills unset (zero) fields with their defaults.
func (c Config) WithDefaults() Config {
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.Lateness == 0 {
		c.Lateness = DefaultLateness
	}
	if c.Window == "" {
		c.Window = WindowHour
	}
	if c.MaxRequestsPerSecond == 0 {
		c.MaxRequestsPerSecond = DefaultMaxRequestsPerSecond
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.RetryMin == 0 {
		c.RetryMin = DefaultRetryMin
	}
	if c.RetryMax == 0 {
		c.RetryMax = DefaultRetryMax
	}
	if c.Lookback == 0 {
		c.Lookback = DefaultLookback
	}
	return c
}

// Validate reports every invalid setting, naming it by its YAML path.
func (c Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.MappingFile != "" && c.StripeAPIKey == "" {
		add("billing.stripe_api_key: required when billing.mapping_file is set (a secret key sk_... or rk_...; any value for stripe-mock)")
	}
	if c.StripeAPIURL != "" {
		u, err := url.Parse(c.StripeAPIURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			add("billing.stripe_api_url: %q is not an http(s) base URL like https://api.stripe.com", c.StripeAPIURL)
		} else if u.Scheme == "http" && !loopbackHost(u.Hostname()) {
			add("billing.stripe_api_url: %q is plain http to another host, which would send the Stripe key in clear text; use https (http is for a loopback stripe-mock only)", c.StripeAPIURL)
		}
	}
	if c.Interval < time.Second || c.Interval > 24*time.Hour {
		add("billing.interval: %s is out of range 1s-24h", c.Interval)
	}
	if c.Lateness < 0 || c.Lateness > 7*24*time.Hour {
		add("billing.lateness: %s is out of range 0-168h", c.Lateness)
	}
	if c.Window != WindowHour && c.Window != WindowDay {
		add("billing.window: %q is not hour or day", c.Window)
	}
	if c.MaxRequestsPerSecond < 1 || c.MaxRequestsPerSecond > 100 {
		add("billing.max_requests_per_second: %d is out of range 1-100 (Stripe's own limit is 100/s live, 25/s test)", c.MaxRequestsPerSecond)
	}
	if c.RequestTimeout < 10*time.Millisecond || c.RequestTimeout > 5*time.Minute {
		add("billing.request_timeout: %s is out of range 10ms-5m", c.RequestTimeout)
	}
	if c.MaxAttempts < 1 || c.MaxAttempts > 100 {
		add("billing.max_attempts: %d is out of range 1-100", c.MaxAttempts)
	}
	if c.RetryMin < time.Millisecond || c.RetryMin > time.Minute {
		add("billing.retry_min: %s is out of range 1ms-1m", c.RetryMin)
	}
	if c.RetryMax < c.RetryMin || c.RetryMax > time.Hour {
		add("billing.retry_max: %s must be between billing.retry_min and 1h", c.RetryMax)
	}
	if c.Lookback < 24*time.Hour || c.Lookback > 400*24*time.Hour {
		add("billing.lookback: %s is out of range 24h-9600h", c.Lookback)
	}
	return errors.Join(errs...)
}

// windowSpan is the length of one billing window.
func (c Config) windowSpan() time.Duration {
	if c.Window == WindowDay {
		return 24 * time.Hour
	}
	return time.Hour
}

// rollupTable is the rollup table read for one window.
func (c Config) rollupTable() string {
	if c.Window == WindowDay {
		return "usage_day"
	}
	return "usage_hour"
}

// loopbackHost reports whether host (a name or an IP) is this machine.
func loopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
