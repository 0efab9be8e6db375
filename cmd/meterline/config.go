package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/api"
	"github.com/meterline/meterline/auth"
	"github.com/meterline/meterline/billing"
	"github.com/meterline/meterline/ingest"
	"github.com/meterline/meterline/internal/tlsutil"
	"github.com/meterline/meterline/privacy"
	"github.com/meterline/meterline/schemas"
	"github.com/meterline/meterline/store"
	"github.com/meterline/meterline/web"
)

// Config is the whole configuration: one YAML file (--config), overridden by
// METERLINE_* environment variables, overridden by flags. Every field has a
// default; `meterline config` prints the effective configuration.
type Config struct {
	HTTP       HTTPConfig             `yaml:"http"`
	Log        LogConfig              `yaml:"log"`
	Kafka      ingest.KafkaConfig     `yaml:"kafka"`
	ClickHouse ClickHouseConfig       `yaml:"clickhouse"`
	Events     EventsConfig           `yaml:"events"`
	Privacy    PrivacyConfig          `yaml:"privacy"`
	Retention  RetentionConfig        `yaml:"retention"`
	Backup     BackupConfig           `yaml:"backup"`
	Collector  ingest.CollectorConfig `yaml:"collector"`
	Sink       ingest.SinkConfig      `yaml:"sink"`
	Aggregate  aggregate.Config       `yaml:"aggregate"`
	Limits     limits.Config          `yaml:"limits"`
	Billing    billing.Config         `yaml:"billing"`
	Auth       AuthConfig             `yaml:"auth"`
	API        api.ReadConfig         `yaml:"api"`
	UI         web.Config             `yaml:"ui"`
}

// HTTPConfig configures the API server.
type HTTPConfig struct {
	// Addr is the listen address. Default "127.0.0.1:8080".
	Addr string `yaml:"addr"`
	// TLS enables HTTPS with a certificate and key file.
	TLS tlsutil.Server `yaml:"tls"`
	// ReadTimeout bounds reading one request, body included. Default 30s.
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// ShutdownTimeout bounds the wait for in-flight requests at stop. Default 15s.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// DrainDelay is how long a stopping process keeps serving while
	// /readyz answers 503, so that a load balancer stops sending it
	// requests before the listener closes (a connection still queued when
	// it closes is reset). A second signal cuts it short. Default 0.
	DrainDelay time.Duration `yaml:"drain_delay"`
}

// LogConfig configures the structured log on stderr.
type LogConfig struct {
	// Level is debug, info, warn or error. Default info.
	Level string `yaml:"level"`
	// Format is json or text. Default text.
	Format string `yaml:"format"`
}

// ClickHouseConfig selects the engine: the embedded one (default) or a server.
type ClickHouseConfig struct {
	// Addr lists ClickHouse server native-protocol addresses (host:9000). Empty
	// (the default) runs the embedded engine in this process.
	Addr []string `yaml:"addr"`
	// Database holds Meterline's tables. Default "meterline".
	Database string         `yaml:"database"`
	Username string         `yaml:"username"`
	Password string         `yaml:"password" secret:"true"`
	TLS      tlsutil.Client `yaml:"tls"`
	// DataDir is where the embedded engine keeps its data. Default ".run/clickhouse".
	DataDir string `yaml:"data_dir"`
	// MaxMemoryBytes caps the embedded engine's memory; 0 leaves the engine's
	// default (90 % of RAM). Default 0.
	MaxMemoryBytes int64 `yaml:"max_memory_bytes"`
	// Encryption is encryption at rest of the embedded engine's data. Off
	// by default (see EncryptionConfig).
	Encryption EncryptionConfig `yaml:"encryption"`
	// StoragePolicy is added as SETTINGS storage_policy to every table the
	// migrations create, so that a ClickHouse server stores Meterline's
	// tables on the policy's (encrypted) disks; see `meterline encryption
	// server-config`. It applies to tables created after it is set.
	// Default empty (the server's default policy).
	StoragePolicy string `yaml:"storage_policy"`
	// Cluster names a cluster of the server's remote_servers: the
	// migrations create every table ON CLUSTER with Replicated engines,
	// and with more than one shard (read from system.clusters) also
	// Distributed tables sharded by customer (docs/cluster.md). Server
	// engine only. Default empty: a single node.
	Cluster string `yaml:"cluster"`
	// KeeperPath is the prefix of the replicated tables' paths in
	// ClickHouse Keeper or ZooKeeper (with clickhouse.cluster). Default
	// /clickhouse/tables.
	KeeperPath string `yaml:"keeper_path"`
}

// EventsConfig is the validation policy for incoming events.
type EventsConfig struct {
	// MaxPast is how old an event may be when it arrives. Default 840h (35 days).
	MaxPast time.Duration `yaml:"max_past"`
	// MaxFuture is how far ahead of the clock an event may be. Default 5m.
	MaxFuture time.Duration `yaml:"max_future"`
	// MaxProperties caps an event's properties. Default 32.
	MaxProperties int `yaml:"max_properties"`
	// MaxBatchEvents caps the events of one POST. Default 10000.
	MaxBatchEvents int `yaml:"max_batch_events"`
	// UnknownFieldsToProperties keeps unknown top-level fields as properties
	// instead of rejecting the event. Default false.
	UnknownFieldsToProperties bool `yaml:"unknown_fields_to_properties"`
	// UnknownKeys is what happens to events of keys the catalogue gives to
	// no customer at the event's time: accept (stored unassigned, never
	// billed, attributed once the key is known) or reject. Default accept.
	UnknownKeys ingest.UnknownKeys `yaml:"unknown_keys"`
}

// PrivacyConfig is the privacy section: anonymisation at ingest and the
// erasure settings, side by side.
type PrivacyConfig struct {
	ingest.Anonymizer `yaml:",inline"`
	privacy.Config    `yaml:",inline"`
}

// RetentionConfig says how long data is kept.
type RetentionConfig struct {
	// RawMonths is the TTL of the raw events table (and of the alert
	// delivery log). Default 12.
	RawMonths int `yaml:"raw_months"`
	// RollupMonths is the TTL of the usage rollup tables. Default 12.
	RollupMonths int `yaml:"rollup_months"`
	// LedgerMonths is the TTL of the billing ledger and the Stripe invoice
	// log. Default 12; finance may keep them longer (84 for seven years of
	// bookkeeping).
	LedgerMonths int `yaml:"ledger_months"`
}

// AuthConfig lists the API tokens (hashed).
type AuthConfig struct {
	Tokens []auth.TokenConfig `yaml:"tokens"`
	// TokensFile holds more tokens (see auth.ParseTokensFile), reloaded
	// without a restart when it changes. Default empty.
	TokensFile string `yaml:"tokens_file"`
	// ReloadEvery is how often TokensFile is polled. Default 10s.
	ReloadEvery time.Duration `yaml:"reload_every"`
}

func (c *Config) applyDefaults() {
	if c.HTTP.Addr == "" {
		c.HTTP.Addr = "127.0.0.1:8080"
	}
	if c.HTTP.ReadTimeout == 0 {
		c.HTTP.ReadTimeout = 30 * time.Second
	}
	if c.HTTP.ShutdownTimeout == 0 {
		c.HTTP.ShutdownTimeout = 15 * time.Second
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
	c.Kafka = c.Kafka.WithDefaults()
	if c.ClickHouse.Database == "" {
		c.ClickHouse.Database = "meterline"
	}
	if c.ClickHouse.DataDir == "" {
		c.ClickHouse.DataDir = ".run/clickhouse"
	}
	if c.Events.MaxPast == 0 {
		c.Events.MaxPast = 35 * 24 * time.Hour
	}
	if c.Events.MaxFuture == 0 {
		c.Events.MaxFuture = 5 * time.Minute
	}
	if c.Events.MaxProperties == 0 {
		c.Events.MaxProperties = 32
	}
	if c.Events.MaxBatchEvents == 0 {
		c.Events.MaxBatchEvents = 10000
	}
	if c.Events.UnknownKeys == "" {
		c.Events.UnknownKeys = ingest.UnknownKeysAccept
	}
	c.Privacy.Anonymizer = c.Privacy.Anonymizer.WithDefaults()
	c.Privacy.Config = c.Privacy.Config.WithDefaults()
	if c.Retention.RawMonths == 0 {
		c.Retention.RawMonths = 12
	}
	if c.Retention.RollupMonths == 0 {
		c.Retention.RollupMonths = 12
	}
	if c.Retention.LedgerMonths == 0 {
		c.Retention.LedgerMonths = 12
	}
	if c.Backup.RetentionMonths == 0 {
		c.Backup.RetentionMonths = max(c.Retention.RawMonths, c.Retention.RollupMonths)
	}
	c.Billing = c.Billing.WithDefaults()
	c.Aggregate = c.Aggregate.WithDefaults()
	c.Limits = c.Limits.WithDefaults()
	c.Collector = c.Collector.WithDefaults()
	c.Sink = c.Sink.WithDefaults()
	if c.Auth.ReloadEvery == 0 {
		c.Auth.ReloadEvery = 10 * time.Second
	}
	c.API = c.API.WithDefaults()
	c.UI = c.UI.WithDefaults()
}

// Validate reports every invalid setting at once.
func (c *Config) Validate() error {
	var errs []error
	if _, err := parseLevel(c.Log.Level); err != nil {
		errs = append(errs, err)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		errs = append(errs, fmt.Errorf("log.format: %q is not text or json", c.Log.Format))
	}
	if _, err := c.HTTP.TLS.Config(); err != nil {
		errs = append(errs, err)
	}
	if c.HTTP.ReadTimeout < time.Second {
		errs = append(errs, fmt.Errorf("http.read_timeout: %s is shorter than 1s", c.HTTP.ReadTimeout))
	}
	if c.HTTP.DrainDelay < 0 || c.HTTP.DrainDelay > 5*time.Minute {
		errs = append(errs, fmt.Errorf("http.drain_delay: %s is out of range 0-5m", c.HTTP.DrainDelay))
	}
	errs = append(errs, c.Events.UnknownKeys.Validate())
	errs = append(errs, c.Kafka.Validate(), c.Privacy.Anonymizer.Validate(), c.Privacy.Config.Validate(), c.Collector.Validate(), c.Sink.Validate(),
		c.Aggregate.Validate(), c.Limits.Validate(), c.API.Validate(), c.UI.Validate())
	if !validIdent(c.ClickHouse.Database) {
		errs = append(errs, fmt.Errorf("clickhouse.database: %q must match [A-Za-z_][A-Za-z0-9_]*", c.ClickHouse.Database))
	}
	if _, err := c.ClickHouse.TLS.Config(); err != nil {
		errs = append(errs, fmt.Errorf("clickhouse.%w", err))
	}
	if enc, err := c.ClickHouse.Encryption.load(); err != nil {
		errs = append(errs, err)
	} else if enc != nil && len(c.ClickHouse.Addr) > 0 {
		errs = append(errs, errors.New("clickhouse.encryption applies to the embedded engine; a ClickHouse server encrypts with its own storage configuration (meterline encryption server-config) and clickhouse.storage_policy"))
	}
	if p := c.ClickHouse.StoragePolicy; p != "" && !validIdent(p) {
		errs = append(errs, fmt.Errorf("clickhouse.storage_policy: %q must match [A-Za-z_][A-Za-z0-9_]*", p))
	}
	if ch := c.ClickHouse; ch.Cluster != "" || ch.KeeperPath != "" {
		switch {
		case ch.Cluster == "":
			errs = append(errs, errors.New("clickhouse.keeper_path applies only with clickhouse.cluster"))
		case len(ch.Addr) == 0:
			errs = append(errs, fmt.Errorf("clickhouse.cluster: %q needs a ClickHouse server (clickhouse.addr); the embedded engine is a single node", ch.Cluster))
		default:
			if err := (store.Layout{Cluster: ch.Cluster, KeeperPath: ch.KeeperPath}).Validate(); err != nil {
				errs = append(errs, fmt.Errorf("clickhouse.cluster: %w", err))
			}
		}
	}
	if c.ClickHouse.MaxMemoryBytes < 0 {
		errs = append(errs, errors.New("clickhouse.max_memory_bytes must not be negative"))
	}
	if c.Events.MaxPast <= 0 || c.Events.MaxPast > 366*24*time.Hour {
		errs = append(errs, fmt.Errorf("events.max_past: %s is out of range (0, 8784h]", c.Events.MaxPast))
	}
	if c.Events.MaxFuture < 0 || c.Events.MaxFuture > 24*time.Hour {
		errs = append(errs, fmt.Errorf("events.max_future: %s is out of range [0, 24h]", c.Events.MaxFuture))
	}
	if c.Events.MaxProperties < 1 || c.Events.MaxProperties > 1024 {
		errs = append(errs, fmt.Errorf("events.max_properties: %d is out of range 1-1024", c.Events.MaxProperties))
	}
	if c.Events.MaxBatchEvents < 1 || c.Events.MaxBatchEvents > 1_000_000 {
		errs = append(errs, fmt.Errorf("events.max_batch_events: %d is out of range 1-1000000", c.Events.MaxBatchEvents))
	}
	if c.Retention.RawMonths < 1 || c.Retention.RawMonths > 1200 {
		errs = append(errs, fmt.Errorf("retention.raw_months: %d is out of range 1-1200", c.Retention.RawMonths))
	}
	if c.Retention.RollupMonths < 1 || c.Retention.RollupMonths > 1200 {
		errs = append(errs, fmt.Errorf("retention.rollup_months: %d is out of range 1-1200", c.Retention.RollupMonths))
	}
	if c.Retention.LedgerMonths < 1 || c.Retention.LedgerMonths > 1200 {
		errs = append(errs, fmt.Errorf("retention.ledger_months: %d is out of range 1-1200", c.Retention.LedgerMonths))
	}
	errs = append(errs, c.Backup.validate(c))
	errs = append(errs, c.Billing.Validate())
	if tokens, err := auth.New(c.Auth.Tokens); err != nil {
		errs = append(errs, err)
	} else if c.Auth.TokensFile != "" {
		errs = append(errs, tokens.LoadFilePath(c.Auth.TokensFile))
	}
	if c.Auth.ReloadEvery < 100*time.Millisecond || c.Auth.ReloadEvery > time.Hour {
		errs = append(errs, fmt.Errorf("auth.reload_every: %s is out of range 100ms-1h", c.Auth.ReloadEvery))
	}
	return errors.Join(errs...)
}

// EventOptions returns the decoder options of the events section.
func (c *Config) EventOptions() schemas.Options {
	return schemas.Options{
		MaxPast:                   c.Events.MaxPast,
		MaxFuture:                 c.Events.MaxFuture,
		MaxProperties:             c.Events.MaxProperties,
		MaxEvents:                 c.Events.MaxBatchEvents,
		UnknownFieldsToProperties: c.Events.UnknownFieldsToProperties,
	}
}

func validIdent(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i, r := range s {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("log.level: %q is not debug, info, warn or error", s)
	}
	return l, nil
}

// EnvPrefix starts every environment variable that overrides a setting. The
// variable name is the YAML path in upper case joined by "_": http.addr is
// METERLINE_HTTP_ADDR, kafka.brokers is METERLINE_KAFKA_BROKERS (lists are
// comma-separated).
const EnvPrefix = "METERLINE_"

// envIgnored are METERLINE_ variables that belong to scripts and tests, not
// to the configuration.
var envIgnored = []string{encryptionKeyEnv, "METERLINE_CACHE", "METERLINE_RUN", "METERLINE_TEST_", "METERLINE_CONFIG", "METERLINE_URL", "METERLINE_TOKEN", "METERLINE_INGEST_TOKEN"}

// loadConfig reads the file (if any), then the environment, and fills defaults.
func loadConfig(path string, environ []string) (*Config, error) {
	c := &Config{}
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		resolved, err := resolveSecretFilesYAML(data)
		if err != nil {
			return nil, fmt.Errorf("config %s: %w", path, err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(resolved))
		dec.KnownFields(true)
		if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("config %s: %w", path, secretFilesNote(err, data, resolved))
		}
	}
	environ, err := resolveSecretFilesEnv(environ)
	if err != nil {
		return nil, err
	}
	if err := applyEnv(c, environ); err != nil {
		return nil, err
	}
	for _, kv := range environ {
		if strings.HasPrefix(kv, encryptionKeyEnv) {
			c.ClickHouse.Encryption.envKeys = append(c.ClickHouse.Encryption.envKeys, kv)
		}
	}
	c.applyDefaults()
	return c, nil
}

// applyEnv sets every field named by a METERLINE_* variable.
func applyEnv(c *Config, environ []string) error {
	fields := map[string]reflect.Value{}
	collectFields(reflect.ValueOf(c).Elem(), EnvPrefix[:len(EnvPrefix)-1], fields)
	var errs []error
next:
	for _, kv := range environ {
		name, val, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, EnvPrefix) {
			continue
		}
		for _, ign := range envIgnored {
			if name == ign || strings.HasSuffix(ign, "_") && strings.HasPrefix(name, ign) {
				continue next
			}
		}
		f, ok := fields[name]
		if !ok {
			errs = append(errs, fmt.Errorf("environment: %s does not name a setting", name))
			continue
		}
		if err := setFromString(f, val); err != nil {
			errs = append(errs, fmt.Errorf("environment: %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

func collectFields(v reflect.Value, prefix string, out map[string]reflect.Value) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		tag, opts, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if tag == "" && opts == "inline" {
			collectFields(v.Field(i), prefix, out)
			continue
		}
		if tag == "" || tag == "-" {
			continue
		}
		name := prefix + "_" + strings.ToUpper(tag)
		f := v.Field(i)
		if f.Kind() == reflect.Struct && f.Type() != reflect.TypeOf(time.Duration(0)) {
			collectFields(f, name, out)
			continue
		}
		out[name] = f
	}
}

func setFromString(f reflect.Value, s string) error {
	switch f.Interface().(type) {
	case time.Duration:
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%q is not a duration like 5s or 10m", s)
		}
		f.SetInt(int64(d))
		return nil
	case []string:
		var out []string
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
		f.Set(reflect.ValueOf(out))
		return nil
	case *bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("%q is not true or false", s)
		}
		f.Set(reflect.ValueOf(&b))
		return nil
	}
	switch f.Kind() {
	case reflect.String:
		f.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("%q is not true or false", s)
		}
		f.SetBool(b)
	case reflect.Int, reflect.Int64, reflect.Int32:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("%q is not an integer", s)
		}
		f.SetInt(n)
	case reflect.Float64:
		x, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return fmt.Errorf("%q is not a number", s)
		}
		f.SetFloat(x)
	default:
		return fmt.Errorf("cannot be set from the environment (type %s); use the config file", f.Type())
	}
	return nil
}
