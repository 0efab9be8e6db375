// Command meterline is the one binary of Meterline: every role of the
// pipeline (collector, sink, and the ones to come) runs from it, all in one
// process by default or one role per process in a cluster.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"serve", "run the pipeline roles (all by default) and the HTTP API", runServe},
		{"bench", "measure the pipeline's throughput, latency and cost against raw Kafka and engine baselines", runBench},
		{"migrate", "apply the ClickHouse schema migrations (serve also does at start-up)", runMigrate},
		{"billing", "billing to Stripe: run (report usage), reconcile (per customer and period), sync (subscription items)", runBilling},
		{"usage", "print a customer's or key's usage from a running server", runUsage},
		{"privacy", "privacy: retention, export, erasure and account deletion of a customer's data", runPrivacy},
		{"encryption", "encryption at rest: status (which keys the data uses), rotate (rewrite it with the current key), migrate (encrypt unencrypted data), generate-key, server-config", runEncryption},
		{"backup", "backups: create (full or incremental), list, verify, restore (re-applying every erasure since), prune", runBackup},
		{"sql", "run one SQL statement against the configured ClickHouse engine", runSQL},
		{"demo", "send realistic traffic for the development customers to a running Meterline and print its alerts", runDemo},
		{"dlq", "dead-letter topic: list, show and replay its messages after a fix", runDLQ},
		{"ship", "ship a gateway's access log (Caddy's JSON log) to the collector as events", runShip},
		{"token", "create an API token and print its configuration entry", runToken},
		{"keys", "API keys in the catalogue: rotate (print and check the change that replaces a key)", runKeys},
		{"config", "validate the configuration and print the effective settings", runConfig},
		{"version", "print the version", runVersion},
	}
}

func usage(w io.Writer) {
	fmt.Fprintf(w, `meterline: usage metering and billing for APIs

Usage:
  meterline <command> [flags]

Commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, `
Run 'meterline <command> -h' for a command's flags.
Configuration: a YAML file (--config), then METERLINE_* environment variables,
then flags; see docs/configuration.md for every setting and its default.
`)
}

// errUsage marks errors after which the command's usage was already printed.
var errUsage = errors.New("usage")

func main() {
	detachStdin()
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	switch {
	case len(args) > 0 && (args[0] == "--version" || args[0] == "-version" || args[0] == "-v"):
		args = append([]string{"version"}, args[1:]...)
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name == args[0] {
			err := c.run(args[1:], stdout, stderr)
			switch {
			case err == nil:
				return 0
			case errors.Is(err, flag.ErrHelp):
				return 0
			case errors.Is(err, errUsage):
				return 2
			default:
				fmt.Fprintf(stderr, "meterline %s: %v\n", c.name, err)
				return 1
			}
		}
	}
	fmt.Fprintf(stderr, "meterline: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

// commonFlags are accepted by every command that reads the configuration.
type commonFlags struct {
	config         string
	httpAddr       string
	kafkaBrokers   string
	clickhouseAddr string
	dataDir        string
	logLevel       string
}

// Which of the common flags a command takes, besides --config and
// --log-level: only those that change what it does.
const (
	flagsHTTP  = 1 << iota // --http-addr
	flagsKafka             // --kafka-brokers
	flagsStore             // --clickhouse-addr, --data-dir
	flagsAll   = flagsHTTP | flagsKafka | flagsStore
)

// register adds every common flag (commands that run the whole pipeline).
func (f *commonFlags) register(fs *flag.FlagSet) { f.registerFor(fs, flagsAll) }

// registerFor adds --config, --log-level and the common flags named by
// which.
func (f *commonFlags) registerFor(fs *flag.FlagSet, which int) {
	fs.StringVar(&f.config, "config", os.Getenv("METERLINE_CONFIG"), "YAML configuration `file` (env METERLINE_CONFIG)")
	if which&flagsHTTP != 0 {
		fs.StringVar(&f.httpAddr, "http-addr", "", "HTTP listen `address` (overrides http.addr; default 127.0.0.1:8080)")
	}
	if which&flagsKafka != 0 {
		fs.StringVar(&f.kafkaBrokers, "kafka-brokers", "", "comma-separated Kafka bootstrap `addresses` (overrides kafka.brokers)")
	}
	if which&flagsStore != 0 {
		fs.StringVar(&f.clickhouseAddr, "clickhouse-addr", "", "comma-separated ClickHouse server `addresses`; empty uses the embedded engine")
		fs.StringVar(&f.dataDir, "data-dir", "", "embedded engine data `directory` (overrides clickhouse.data_dir)")
	}
	fs.StringVar(&f.logLevel, "log-level", "", "debug, info, warn or error (overrides log.level)")
}

// load reads the configuration and applies the flags on top.
func (f *commonFlags) load() (*Config, error) {
	c, err := loadConfig(f.config, os.Environ())
	if err != nil {
		return nil, err
	}
	if f.httpAddr != "" {
		c.HTTP.Addr = f.httpAddr
	}
	if f.kafkaBrokers != "" {
		c.Kafka.Brokers = splitList(f.kafkaBrokers)
	}
	if f.clickhouseAddr != "" {
		c.ClickHouse.Addr = splitList(f.clickhouseAddr)
	}
	if f.dataDir != "" {
		c.ClickHouse.DataDir = f.dataDir
	}
	if f.logLevel != "" {
		c.Log.Level = f.logLevel
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration:\n%w", indent(err))
	}
	return c, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// indent prefixes each line of a joined error for a readable list.
func indent(err error) error {
	lines := strings.Split(err.Error(), "\n")
	for i := range lines {
		lines[i] = "  - " + lines[i]
	}
	return errors.New(strings.Join(lines, "\n"))
}

// newFlagSet returns a flag set that prints its usage with a summary line.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("meterline "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: meterline %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// noArgs refuses positional arguments after the flags, with the usage.
func noArgs(fs *flag.FlagSet, stderr io.Writer) error {
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return errUsage
	}
	return nil
}

// parse parses args into fs. The flag package prints a bad flag's error and
// the usage itself; parse then returns errUsage. For -h and -help it returns
// flag.ErrHelp (the usage printed), which callers treat as success.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	return nil
}
