// Package bench measures the Meterline pipeline against the machine's own
// limits: it generates realistic gateway traffic (Generator), drives it
// through the collector over HTTP or straight into Kafka, and measures the
// sustained rate from acceptance to stored row, the time until an event is
// counted by GET /v1/usage, CPU and memory per process and consumer lag. In
// the same run it measures the raw rates of Kafka (kafka-go producing and
// consuming the same encoded events) and of the ClickHouse engine (one bulk
// insert of the same rows), so that the pipeline's rate is read as a share
// of what the parts underneath allow.
//
// `meterline bench` is the command; Run is its engine.
package bench

import (
	"errors"
	"fmt"
	"io"
	"time"
)

// Modes of driving traffic.
const (
	ModeHTTP  = "http"  // POST /v1/events batches to the collector
	ModeKafka = "kafka" // produce straight to the events topic (the collector idles)
)

// Config is one benchmark run.
type Config struct {
	// Binary is the meterline executable started as the pipeline's child
	// processes (normally os.Executable()). Unused with Target.
	Binary string
	// Target is the URL of a running Meterline server to drive instead of
	// starting one (every role expected there). Per-process CPU and memory,
	// the stored-count check and Kafka lag by group are then unavailable.
	Target string
	// IngestToken and AdminToken authenticate to Target.
	IngestToken, AdminToken string
	// Topic and Group are the events topic and the sink's consumer group of
	// Target (for --mode kafka and the lag). Defaults "requests", "meterline-sink".
	Topic, Group string
	// Brokers are the Kafka bootstrap addresses.
	Brokers []string
	// Mode is ModeHTTP (default) or ModeKafka.
	Mode string
	// Duration is how long traffic is sent in the throughput phase.
	Duration time.Duration
	// Rate is the events/s to send; 0 sends as fast as the pipeline takes them.
	Rate float64
	// LatencyDuration is the length of a second phase at LatencyShare of the
	// sustained rate of the first, where event-to-queryable latency is
	// measured under moderate load; 0 skips it.
	LatencyDuration time.Duration
	// LatencyShare is the share of the sustained rate the latency phase
	// sends at. Default 0.5.
	LatencyShare float64
	// Connections is the number of concurrent senders. Default 4.
	Connections int
	// BatchEvents is the events per POST (or per produce call). Default 1000.
	BatchEvents int
	// Partitions of the events topic created for the run. Default 6.
	Partitions int
	// Traffic shapes the events; Prefix is set by Run.
	Traffic Traffic
	// BaselineEvents is how many events the raw Kafka and insert baselines
	// use; 0 skips the baselines.
	BaselineEvents int
	// Aggregator runs the aggregator role in the storage process, as a
	// single-node deployment does. Default true through the command.
	Aggregator bool
	// ProfileDir, when set, receives CPU and allocation profiles of the
	// collector and the sink taken in the middle of the throughput phase.
	ProfileDir string
	// OutDir, when set, receives bench.json and bench.svg.
	OutDir string
	// WorkDir holds the child processes' configuration, data and logs; a
	// temporary directory (removed at the end) when empty.
	WorkDir string
	// Seed makes the generated traffic reproducible. Default 1.
	Seed uint64
	// Progress receives a live status line; nil for none.
	Progress io.Writer
}

// WithDefaults fills unset fields.
func (c Config) WithDefaults() Config {
	if c.Mode == "" {
		c.Mode = ModeHTTP
	}
	if c.LatencyShare == 0 {
		c.LatencyShare = 0.5
	}
	if c.Connections == 0 {
		c.Connections = 4
	}
	if c.BatchEvents == 0 {
		c.BatchEvents = 1000
	}
	if c.Partitions == 0 {
		c.Partitions = 6
	}
	if c.Seed == 0 {
		c.Seed = 1
	}
	if c.Topic == "" {
		c.Topic = "requests"
	}
	if c.Group == "" {
		c.Group = "meterline-sink"
	}
	c.Traffic = c.Traffic.WithDefaults()
	return c
}

// Validate reports every invalid setting at once.
func (c Config) Validate() error {
	var errs []error
	if c.Mode != ModeHTTP && c.Mode != ModeKafka {
		errs = append(errs, fmt.Errorf("mode: unknown %q (want %s or %s)", c.Mode, ModeHTTP, ModeKafka))
	}
	if c.Duration <= 0 {
		errs = append(errs, fmt.Errorf("duration: %s must be positive", c.Duration))
	}
	if c.Rate < 0 {
		errs = append(errs, fmt.Errorf("rate: %g events/s is negative (0 sends as fast as possible)", c.Rate))
	}
	if c.LatencyDuration < 0 {
		errs = append(errs, fmt.Errorf("latency-duration: %s is negative (0 skips the latency phase)", c.LatencyDuration))
	}
	if c.LatencyShare <= 0 || c.LatencyShare > 1 {
		errs = append(errs, fmt.Errorf("latency-share: %g is out of range (0, 1]", c.LatencyShare))
	}
	if c.Connections < 1 || c.Connections > 256 {
		errs = append(errs, fmt.Errorf("connections: %d is out of range 1-256", c.Connections))
	}
	if c.BatchEvents < 1 || c.BatchEvents > 10000 {
		errs = append(errs, fmt.Errorf("batch: %d events is out of range 1-10000 (the collector's default limit)", c.BatchEvents))
	}
	if c.Partitions < 1 || c.Partitions > 1000 {
		errs = append(errs, fmt.Errorf("partitions: %d is out of range 1-1000", c.Partitions))
	}
	if c.BaselineEvents < 0 {
		errs = append(errs, fmt.Errorf("baseline-events: %d is negative (0 skips the baselines)", c.BaselineEvents))
	}
	t := c.Traffic
	for _, r := range []struct {
		name string
		v    float64
	}{{"error-rate", t.ErrorRate}, {"dup-rate", t.DupRate}, {"late-rate", t.LateRate}} {
		// Negative means "none" inside Traffic; flags say 0 for that.
		if r.v > 1 || r.v != r.v {
			errs = append(errs, fmt.Errorf("%s: %g is out of range 0-1", r.name, r.v))
		}
	}
	if t.Customers < 1 || t.Customers > 1_000_000 {
		errs = append(errs, fmt.Errorf("customers: %d is out of range 1-1000000", t.Customers))
	}
	if t.KeysPerCustomer < 1 || t.KeysPerCustomer > 1000 {
		errs = append(errs, fmt.Errorf("keys-per-customer: %d is out of range 1-1000", t.KeysPerCustomer))
	}
	if t.Lateness < 0 {
		errs = append(errs, fmt.Errorf("lateness: %s is negative", t.Lateness))
	}
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("kafka-brokers: no broker given"))
	}
	if c.Target == "" && c.Binary == "" {
		errs = append(errs, errors.New("no meterline binary to start (and no --target)"))
	}
	if c.Target != "" && (c.IngestToken == "" || c.AdminToken == "") {
		errs = append(errs, errors.New("target: --token and --admin-token are required to drive a running server"))
	}
	return errors.Join(errs...)
}
