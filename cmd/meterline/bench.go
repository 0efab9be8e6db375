package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/meterline/meterline/bench"
)

const benchSynopsis = `bench [--duration 60s] [--rate N] [--mode http|kafka] [flags]

Starts the pipeline as child processes of this binary (one
'serve --roles collector', one 'serve --roles sink,aggregator,query' on the
embedded engine, a temporary data directory and a topic of its own), sends
generated gateway traffic through it, and prints: the sustained rate from
acceptance to stored row, the time until an event is counted by
GET /v1/usage (p50/p99, in a second phase at --latency-share of that rate),
CPU seconds per million events and peak memory of each process, Kafka
consumer lag, and in the same run the raw rates of kafka-go (produce,
consume) and of the engine (one bulk insert) on the same events.
Needs a Kafka broker (--kafka-brokers) and CHDB_LIB_PATH (see README).
Other METERLINE_* variables reach the child processes (e.g.
METERLINE_SINK_BATCH_SIZE=20000).`

// benchFlags are the parsed flags of `meterline bench`.
type benchFlags struct {
	cfg                        bench.Config
	errRate, dupRate, lateRate float64
	configFile, brokers        string
	noAggregator               bool
}

func parseBenchFlags(args []string, stderr io.Writer) (*benchFlags, error) {
	fs := newFlagSet("bench", benchSynopsis, stderr)
	f := &benchFlags{}
	c := &f.cfg
	fs.StringVar(&f.configFile, "config", os.Getenv("METERLINE_CONFIG"), "YAML configuration `file` to read kafka.brokers from (env METERLINE_CONFIG)")
	fs.StringVar(&f.brokers, "kafka-brokers", "", "comma-separated Kafka bootstrap `addresses` (default: kafka.brokers of the configuration, 127.0.0.1:9092)")
	fs.DurationVar(&c.Duration, "duration", 60*time.Second, "how long traffic is sent in the throughput phase")
	fs.Float64Var(&c.Rate, "rate", 0, "events/s to send; 0 sends as fast as the pipeline takes them")
	fs.StringVar(&c.Mode, "mode", bench.ModeHTTP, "http (POST batches to the collector) or kafka (produce straight to the topic)")
	fs.IntVar(&c.Connections, "connections", 4, "concurrent senders (HTTP connections or produce calls)")
	fs.IntVar(&c.BatchEvents, "batch", 1000, "events per POST or produce call")
	fs.IntVar(&c.Partitions, "partitions", 6, "partitions of the run's events topic")
	fs.IntVar(&c.Traffic.Customers, "customers", 1000, "customers (Zipf-distributed)")
	fs.IntVar(&c.Traffic.KeysPerCustomer, "keys-per-customer", 10, "API keys per customer (Zipf-distributed)")
	fs.Float64Var(&f.errRate, "error-rate", 0.02, "share of requests with a 4xx/5xx status, 0-1")
	fs.Float64Var(&f.dupRate, "dup-rate", 0.05, "share of events re-sent byte for byte (gateway retries), 0-1")
	fs.Float64Var(&f.lateRate, "late-rate", 0.05, "share of late events, 0-1")
	fs.DurationVar(&c.Traffic.Lateness, "lateness", 5*time.Minute, "late events are this to twice this old")
	fs.DurationVar(&c.LatencyDuration, "latency-duration", 20*time.Second, "length of the latency phase at --latency-share of the sustained rate; 0 skips it")
	fs.Float64Var(&c.LatencyShare, "latency-share", 0.5, "share of the sustained rate the latency phase sends at, (0, 1]")
	fs.IntVar(&c.BaselineEvents, "baseline-events", 200000, "events of the raw kafka-go and bulk-insert baselines; 0 skips them")
	fs.BoolVar(&f.noAggregator, "no-aggregator", false, "do not run the aggregator role beside the sink")
	fs.StringVar(&c.ProfileDir, "profile", "", "write CPU and allocation profiles of the collector and the sink, taken mid-run, to `DIR`")
	fs.StringVar(&c.OutDir, "out", "", "write bench.json and bench.svg (throughput and lag over time) to `DIR`")
	fs.StringVar(&c.WorkDir, "work-dir", "", "keep the child processes' config, data and logs in `DIR` (default: a temporary directory, removed)")
	fs.Uint64Var(&c.Seed, "seed", 1, "seed of the generated traffic")
	fs.StringVar(&c.Binary, "serve-binary", "", "run the pipeline's processes from this meterline `binary` instead of this one (A/B comparisons of two builds)")
	fs.StringVar(&c.Target, "target", "", "drive a running server at `URL` instead of starting one (per-process figures then unavailable)")
	fs.StringVar(&c.IngestToken, "token", os.Getenv("METERLINE_TOKEN"), "ingest token for --target (env METERLINE_TOKEN)")
	fs.StringVar(&c.AdminToken, "admin-token", "", "admin token for --target (reads GET /v1/usage)")
	fs.StringVar(&c.Topic, "topic", "requests", "events topic of --target (for --mode kafka and the lag)")
	fs.StringVar(&c.Group, "group", "meterline-sink", "sink consumer group of --target (for the lag)")
	if err := parse(fs, args); err != nil {
		return nil, err
	}
	if err := noArgs(fs, stderr); err != nil {
		return nil, err
	}
	var errs []error
	for _, r := range []struct {
		name string
		v    float64
		dst  *float64
	}{{"error-rate", f.errRate, &c.Traffic.ErrorRate}, {"dup-rate", f.dupRate, &c.Traffic.DupRate}, {"late-rate", f.lateRate, &c.Traffic.LateRate}} {
		if r.v < 0 || r.v > 1 || r.v != r.v {
			errs = append(errs, fmt.Errorf("--%s: %g is out of range 0-1", r.name, r.v))
		}
		*r.dst = r.v
		if r.v == 0 {
			*r.dst = -1 // none (0 takes the default inside bench.Traffic)
		}
	}
	// Zero would take a default inside bench.Config; as a flag it is a mistake.
	for _, v := range []struct {
		name string
		n    int
	}{{"connections", c.Connections}, {"batch", c.BatchEvents}, {"partitions", c.Partitions}, {"customers", c.Traffic.Customers}, {"keys-per-customer", c.Traffic.KeysPerCustomer}} {
		if v.n == 0 {
			errs = append(errs, fmt.Errorf("--%s: 0 is out of range (at least 1)", v.name))
		}
	}
	c.Aggregator = !f.noAggregator
	if f.brokers != "" {
		c.Brokers = splitList(f.brokers)
	} else {
		cfg, err := loadConfig(f.configFile, os.Environ())
		if err != nil {
			return nil, err
		}
		c.Brokers = cfg.Kafka.Brokers
	}
	if c.Target == "" && c.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("finding this binary to start the pipeline: %w", err)
		}
		c.Binary = exe
	}
	if err := c.WithDefaults().Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("invalid flags:\n%w", indent(err))
	}
	return f, nil
}

func runBench(args []string, stdout, stderr io.Writer) error {
	f, err := parseBenchFlags(args, stderr)
	if err != nil {
		return err
	}
	f.cfg.Progress = stderr
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := bench.Run(ctx, f.cfg)
	if res != nil {
		res.Command = "meterline bench " + strings.Join(args, " ")
		res.Machine.Version = version
		bench.WriteTable(stdout, res)
		if f.cfg.OutDir != "" {
			if werr := bench.WriteFiles(res, f.cfg.OutDir); werr != nil && err == nil {
				err = werr
			} else if werr == nil {
				fmt.Fprintf(stdout, "\nwrote %s/bench.json and %s/bench.svg\n", f.cfg.OutDir, f.cfg.OutDir)
			}
		}
	}
	return err
}
