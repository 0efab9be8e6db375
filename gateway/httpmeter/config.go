package httpmeter

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a Meter. Endpoint and KeyFunc are required; every other
// field has the default its comment states.
type Config struct {
	// Endpoint is the collector's base URL (scheme, host and an optional
	// path prefix); events are posted to Endpoint + "/v1/events". Required.
	Endpoint string
	// Token is the collector's bearer token (a token with the ingest scope),
	// sent as "Authorization: Bearer <Token>". Default "": no Authorization
	// header.
	Token string
	// KeyFunc returns the public id of the API key that made the request and,
	// optionally, the customer it belongs to. It runs after the handler
	// returned; a request for which it returns an empty apiKeyID is not
	// metered. Required. What it returns is sent as it is: an id the
	// collector refuses (over 128 bytes, control characters) makes that
	// event rejected and counted, never the request failed.
	KeyFunc func(r *http.Request) (apiKeyID, customerID string)
	// RouteFunc returns the endpoint template of the request
	// ("/v1/pets/{id}"), after the handler returned. Default nil: the
	// template ServeMux matched (r.Pattern without its method and host), or
	// "" when none did. A route set with SetRoute wins over both.
	RouteFunc func(r *http.Request) string
	// Gateway names this service in the events (the event's "gateway").
	// Default "": the collector uses the name of the token.
	Gateway string
	// SendUserAgent sends the request's User-Agent header in the events.
	// Default false: no request header is sent.
	SendUserAgent bool
	// QueueSize is the most events the meter holds, queued or in a batch
	// being sent; when it holds that many, new events are dropped and
	// counted. Default 10000.
	QueueSize int
	// BatchSize is the most events one POST carries. Default 1000 (the
	// collector takes up to events.max_batch_events, 10000 by default).
	BatchSize int
	// MaxBatchBytes caps the uncompressed NDJSON of one POST; a batch is cut
	// before it grows past this. Default 1 MiB (the collector's
	// collector.max_body_bytes is 5 MiB by default, counted after gzip
	// decompression).
	MaxBatchBytes int
	// FlushInterval is the longest an event waits in a batch that is not
	// full. Default 1s.
	FlushInterval time.Duration
	// RequestTimeout bounds one POST, answer included. Default 10s (the
	// collector's collector.produce_timeout is 10s by default).
	RequestTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between attempts of a batch:
	// exponential from MinBackoff, with full jitter, capped at MaxBackoff, and
	// never shorter than the collector's Retry-After. Defaults 100ms and 30s.
	MinBackoff, MaxBackoff time.Duration
	// MaxRetryTime is how long a batch is retried after its first attempt
	// failed before its events are dropped and counted; a Retry-After that
	// reaches past it (at most 5 minutes are honoured) drops them at once.
	// Default 1m.
	MaxRetryTime time.Duration
	// Client sends the batches. Default: a client of its own over a clone of
	// http.DefaultTransport.
	Client *http.Client
	// Registerer receives the meterline_client_* metrics. Default nil: no
	// metrics are registered (Stats reports the same numbers).
	Registerer prometheus.Registerer
	// Logger receives rejections, refused batches and dropped events.
	// Default slog.Default().
	Logger *slog.Logger
}

// withDefaults fills the unset fields.
func (c Config) withDefaults() Config {
	if c.QueueSize == 0 {
		c.QueueSize = 10000
	}
	if c.BatchSize == 0 {
		c.BatchSize = 1000
	}
	if c.MaxBatchBytes == 0 {
		c.MaxBatchBytes = 1 << 20
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = time.Second
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = 10 * time.Second
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = 100 * time.Millisecond
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = 30 * time.Second
	}
	if c.MaxRetryTime == 0 {
		c.MaxRetryTime = time.Minute
	}
	if c.Client == nil {
		c.Client = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// validate reports every invalid setting at once.
func (c Config) validate() error {
	var errs []error
	if c.Endpoint == "" {
		errs = append(errs, errors.New("Endpoint is required (the collector's base URL)"))
	} else if u, err := url.Parse(c.Endpoint); err != nil {
		errs = append(errs, fmt.Errorf("Endpoint: %v", err))
	} else if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("Endpoint %q: must be an http:// or https:// URL with a host", c.Endpoint))
	} else if u.RawQuery != "" || u.Fragment != "" {
		errs = append(errs, fmt.Errorf("Endpoint %q: must have no query or fragment", c.Endpoint))
	}
	if c.KeyFunc == nil {
		errs = append(errs, errors.New("KeyFunc is required (it names the API key of a request)"))
	}
	if len(c.Gateway) > 128 {
		errs = append(errs, fmt.Errorf("Gateway: %d bytes, at most 128", len(c.Gateway)))
	}
	if c.QueueSize < 1 || c.QueueSize > 10_000_000 {
		errs = append(errs, fmt.Errorf("QueueSize: %d is out of range 1-10000000", c.QueueSize))
	}
	if c.BatchSize < 1 || c.BatchSize > 10000 {
		errs = append(errs, fmt.Errorf("BatchSize: %d is out of range 1-10000", c.BatchSize))
	}
	if c.MaxBatchBytes < 4096 || c.MaxBatchBytes > 1<<30 {
		errs = append(errs, fmt.Errorf("MaxBatchBytes: %d is out of range 4 KiB-1 GiB", c.MaxBatchBytes))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"FlushInterval", c.FlushInterval}, {"RequestTimeout", c.RequestTimeout}, {"MinBackoff", c.MinBackoff}, {"MaxBackoff", c.MaxBackoff}, {"MaxRetryTime", c.MaxRetryTime}} {
		if d.v < time.Millisecond {
			errs = append(errs, fmt.Errorf("%s: %s is shorter than 1ms", d.name, d.v))
		}
	}
	if c.MaxBackoff < c.MinBackoff {
		errs = append(errs, fmt.Errorf("MaxBackoff %s is shorter than MinBackoff %s", c.MaxBackoff, c.MinBackoff))
	}
	return errors.Join(errs...)
}
