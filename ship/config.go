package ship

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// CaddyConfig configures `meterline ship caddy`. Endpoint, one of File and
// Listen, and KeyHeader are required; every other field has the default
// its comment states (docs/gateways.md lists them too).
type CaddyConfig struct {
	// Endpoint is the collector's base URL; events go to Endpoint +
	// "/v1/events". Required.
	Endpoint string `yaml:"endpoint"`
	// TokenFile holds the collector's bearer token (scope ingest). Default
	// "": the environment variable METERLINE_INGEST_TOKEN, else no token.
	TokenFile string `yaml:"token_file"`
	// Token is the token itself, read from TokenFile or the environment,
	// never from the YAML file.
	Token string `yaml:"-"`
	// Gateway names this gateway in the events. Default "": the collector
	// uses the token's name.
	Gateway string `yaml:"gateway"`

	// File is Caddy's access log file (`output file`), followed as it
	// grows, across rotations. Exclusive with Listen.
	File string `yaml:"file"`
	// PositionFile records how far File was shipped. Default File +
	// ".meterline-pos".
	PositionFile string `yaml:"position_file"`
	// Listen is a TCP address for Caddy's `output net` (one JSON entry per
	// line). Exclusive with File. Lines a crash or restart interrupts are
	// lost on this path (Caddy does not resend them): prefer File where
	// every request must count.
	Listen string `yaml:"listen"`

	// KeyHeader is the request header that carries the API key's public id
	// (Caddy logs request headers). A line without it is not metered.
	// Required; e.g. X-Api-Key-Id.
	KeyHeader string `yaml:"key_header"`
	// CustomerHeader is the request header of the customer id. Default "":
	// none (the key registry resolves it).
	CustomerHeader string `yaml:"customer_header"`
	// IDHeader is the response header holding the request's unique id
	// (Caddyfile: header X-Request-Id {http.request.uuid}). Default
	// X-Request-Id; without it the id is a hash of the log line.
	IDHeader string `yaml:"id_header"`
	// UnitsHeader is the response header of the billable units. Default "":
	// none (1 unit). Caddy logs the response headers the client got, so the
	// client sees this header too.
	UnitsHeader string `yaml:"units_header"`
	// Routes are the endpoint templates (/v1/pets/{id}, /v1/files/{path...})
	// tried in order against the path. Default none.
	Routes []string `yaml:"routes"`
	// UnmatchedRoute is the route of a path no rule matches. Default "": the
	// path itself (without the query), control and non-ASCII bytes
	// percent-encoded, cut to 1024 bytes.
	UnmatchedRoute string `yaml:"unmatched_route"`

	// BatchSize is the most events one POST carries. Default 500.
	BatchSize int `yaml:"batch_size"`
	// FlushInterval is the longest a read line waits to be sent. Default 1s.
	FlushInterval time.Duration `yaml:"flush_interval"`
	// PollInterval is how often a followed file is checked for new lines
	// and rotation at its end. Default 200ms.
	PollInterval time.Duration `yaml:"poll_interval"`
	// MaxLineBytes is the longest line read; a longer one is skipped and
	// counted (reason oversized). Default 64 KiB.
	MaxLineBytes int `yaml:"max_line_bytes"`
	// MaxRetryTime is how long one POST is retried before the shipper logs
	// the failure and tries again (file mode never skips unsent lines; TCP
	// mode drops the batch). Default 1m.
	MaxRetryTime time.Duration `yaml:"max_retry_time"`
	// ShutdownTimeout bounds the last POST at SIGTERM. Default 10s.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// MetricsAddr serves GET /metrics (meterline_ship_*, meterline_client_*)
	// when set. Default "": none.
	MetricsAddr string `yaml:"metrics_addr"`
}

// LoadCaddyConfig reads a YAML configuration file (unknown keys are
// errors), applies the defaults, reads the token and validates.
func LoadCaddyConfig(path string, getenv func(string) string) (CaddyConfig, error) {
	var c CaddyConfig
	f, err := os.Open(path)
	if err != nil {
		return c, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 1<<20+1))
	if err != nil {
		return c, err
	}
	if len(b) > 1<<20 {
		return c, fmt.Errorf("%s: larger than 1 MiB", path)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return c, fmt.Errorf("%s: %w", path, err)
	}
	c = c.WithDefaults()
	if c.TokenFile != "" {
		t, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return c, fmt.Errorf("token_file: %w", err)
		}
		c.Token = strings.TrimSpace(string(t))
	} else if getenv != nil {
		c.Token = getenv("METERLINE_INGEST_TOKEN")
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("%s:\n%w", path, err)
	}
	return c, nil
}

// WithDefaults fills the unset fields.
func (c CaddyConfig) WithDefaults() CaddyConfig {
	if c.File != "" && c.PositionFile == "" {
		c.PositionFile = c.File + ".meterline-pos"
	}
	if c.IDHeader == "" {
		c.IDHeader = "X-Request-Id"
	}
	if c.BatchSize == 0 {
		c.BatchSize = 500
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = time.Second
	}
	if c.PollInterval == 0 {
		c.PollInterval = 200 * time.Millisecond
	}
	if c.MaxLineBytes == 0 {
		c.MaxLineBytes = 64 << 10
	}
	if c.MaxRetryTime == 0 {
		c.MaxRetryTime = time.Minute
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 10 * time.Second
	}
	return c
}

// Validate reports every invalid setting at once, naming its key.
func (c CaddyConfig) Validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if u, err := url.Parse(c.Endpoint); c.Endpoint == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		add("endpoint: %q must be the collector's base URL, http(s)://host:port", c.Endpoint)
	}
	switch {
	case c.File == "" && c.Listen == "":
		add("file or listen: one is required (Caddy's access log file, or a TCP address for its output net)")
	case c.File != "" && c.Listen != "":
		add("file and listen: set one of them")
	}
	if c.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Listen); err != nil {
			add("listen: %q is not host:port", c.Listen)
		}
	}
	if strings.ContainsAny(c.Token, " \t\r\n") {
		add("token: holds white space")
	}
	if len(c.Gateway) > 128 {
		add("gateway: %d bytes, at most 128", len(c.Gateway))
	}
	for _, h := range []struct{ key, v string }{{"key_header", c.KeyHeader}, {"customer_header", c.CustomerHeader}, {"id_header", c.IDHeader}, {"units_header", c.UnitsHeader}} {
		if h.v != "" && !validHeaderName(h.v) {
			add("%s: %q is not a header name", h.key, h.v)
		}
	}
	if c.KeyHeader == "" {
		add("key_header: required (the request header with the API key's public id, e.g. X-Api-Key-Id)")
	}
	if _, err := ParseRoutes(c.Routes); err != nil {
		errs = append(errs, err)
	}
	if len(c.UnmatchedRoute) > 1024 {
		add("unmatched_route: longer than 1024 bytes")
	}
	if c.BatchSize < 1 || c.BatchSize > 10000 {
		add("batch_size: %d is out of range 1-10000", c.BatchSize)
	}
	if c.MaxLineBytes < 1024 || c.MaxLineBytes > 16<<20 {
		add("max_line_bytes: %d is out of range 1024-16777216", c.MaxLineBytes)
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"flush_interval", c.FlushInterval}, {"poll_interval", c.PollInterval}, {"max_retry_time", c.MaxRetryTime}, {"shutdown_timeout", c.ShutdownTimeout}} {
		if d.v < time.Millisecond || d.v > 24*time.Hour {
			add("%s: %s is out of range 1ms-24h", d.key, d.v)
		}
	}
	return errors.Join(errs...)
}

func validHeaderName(s string) bool {
	if s == "" || len(s) > 256 {
		return false
	}
	for _, c := range []byte(s) {
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return http.CanonicalHeaderKey(s) != ""
}
