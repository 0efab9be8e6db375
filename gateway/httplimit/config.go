package httplimit

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// FailMode says what the middleware does while its copy of the limit
// states is older than Config.MaxStaleness (Meterline unreachable, or not
// yet reached).
type FailMode string

const (
	// FailOpen lets requests through: keys in the copy keep the states
	// last seen (a disabled key stays refused, rate limits still count),
	// keys not in it pass. The default: an outage of Meterline does not
	// become an outage of the API.
	FailOpen FailMode = "open"
	// FailClosed refuses every request that carries a key with 503 until
	// the copy is fresh again.
	FailClosed FailMode = "closed"
)

// UnknownKeys says what the middleware does with a key Meterline does not
// know while its copy is fresh.
type UnknownKeys string

const (
	// AllowUnknown passes them (the default: the service authenticates
	// keys itself, and a key created a moment ago may not be in the copy
	// yet).
	AllowUnknown UnknownKeys = "allow"
	// DenyUnknown answers them 403.
	DenyUnknown UnknownKeys = "deny"
)

// Config configures a Limiter. Endpoint and KeyFunc are required; every
// other field has the default its comment states.
type Config struct {
	// Endpoint is Meterline's base URL (a process serving the query role);
	// the limit states are read from Endpoint + "/v1/limits". Required.
	Endpoint string
	// Token is a bearer token with the ingest scope (or admin). Default "":
	// no Authorization header.
	Token string
	// KeyFunc returns the public id of the request's API key, before the
	// handler runs; "" lets the request through unchecked. Required.
	KeyFunc func(r *http.Request) string
	// PollInterval is how often the states are fetched (only the changes
	// since the last fetch). Default 5s.
	PollInterval time.Duration
	// MaxStaleness is the age of the states beyond which FailMode applies:
	// the time since the last complete fetch plus the age Meterline
	// reported for its figures. Must exceed PollInterval. Default 1m.
	MaxStaleness time.Duration
	// FailMode applies while the states are older than MaxStaleness.
	// Default FailOpen.
	FailMode FailMode
	// UnknownKeys applies to keys Meterline does not know. Default
	// AllowUnknown.
	UnknownKeys UnknownKeys
	// MaxKeys bounds the keys whose rate windows are held in memory (about
	// 200 bytes each); beyond it the key idle longest (of a sample) is
	// forgotten. Default 100000.
	MaxKeys int
	// PageSize is the limit of each GET /v1/limits. Default 1000.
	PageSize int
	// RequestTimeout bounds one GET. Default 10s.
	RequestTimeout time.Duration
	// Client fetches the states. Default: a client of its own.
	Client *http.Client
	// Registerer receives the meterline_gateway_* metrics. Default nil.
	Registerer prometheus.Registerer
	// Logger receives fetch failures and recoveries. Default
	// slog.Default().
	Logger *slog.Logger

	now func() time.Time // tests
}

func (c Config) withDefaults() Config {
	if c.PollInterval == 0 {
		c.PollInterval = 5 * time.Second
	}
	if c.MaxStaleness == 0 {
		c.MaxStaleness = time.Minute
	}
	if c.FailMode == "" {
		c.FailMode = FailOpen
	}
	if c.UnknownKeys == "" {
		c.UnknownKeys = AllowUnknown
	}
	if c.MaxKeys == 0 {
		c.MaxKeys = 100000
	}
	if c.PageSize == 0 {
		c.PageSize = 1000
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = 10 * time.Second
	}
	if c.Client == nil {
		c.Client = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.now == nil {
		c.now = time.Now
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	if c.Endpoint == "" {
		errs = append(errs, errors.New("Endpoint is required (Meterline's base URL)"))
	} else if u, err := url.Parse(c.Endpoint); err != nil {
		errs = append(errs, fmt.Errorf("Endpoint: %v", err))
	} else if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		errs = append(errs, fmt.Errorf("Endpoint %q: must be an http:// or https:// URL with a host and no query", c.Endpoint))
	}
	if c.KeyFunc == nil {
		errs = append(errs, errors.New("KeyFunc is required (it names the API key of a request)"))
	}
	if c.PollInterval < 10*time.Millisecond || c.PollInterval > time.Hour {
		errs = append(errs, fmt.Errorf("PollInterval: %s is out of range 10ms-1h", c.PollInterval))
	}
	if c.MaxStaleness <= c.PollInterval {
		errs = append(errs, fmt.Errorf("MaxStaleness %s must exceed PollInterval %s", c.MaxStaleness, c.PollInterval))
	}
	if c.FailMode != FailOpen && c.FailMode != FailClosed {
		errs = append(errs, fmt.Errorf("FailMode %q is neither %q nor %q", c.FailMode, FailOpen, FailClosed))
	}
	if c.UnknownKeys != AllowUnknown && c.UnknownKeys != DenyUnknown {
		errs = append(errs, fmt.Errorf("UnknownKeys %q is neither %q nor %q", c.UnknownKeys, AllowUnknown, DenyUnknown))
	}
	if c.MaxKeys < 1 || c.MaxKeys > 100_000_000 {
		errs = append(errs, fmt.Errorf("MaxKeys: %d is out of range 1-100000000", c.MaxKeys))
	}
	if c.PageSize < 1 || c.PageSize > 10000 {
		errs = append(errs, fmt.Errorf("PageSize: %d is out of range 1-10000", c.PageSize))
	}
	if c.RequestTimeout < time.Millisecond {
		errs = append(errs, fmt.Errorf("RequestTimeout: %s is shorter than 1ms", c.RequestTimeout))
	}
	return errors.Join(errs...)
}
