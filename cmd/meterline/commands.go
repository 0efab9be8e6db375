package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"text/tabwriter"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/meterline/meterline/auth"
	"github.com/meterline/meterline/store"
)

func runMigrate(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("migrate", "migrate [--config FILE] [--status | --print-ddl [--shards N]]", stderr)
	var cf commonFlags
	cf.registerFor(fs, flagsStore)
	status := fs.Bool("status", false, "list the migrations and whether each is applied, change nothing")
	printDDL := fs.Bool("print-ddl", false, "print every statement migrate would run on an empty database for the configured layout (clickhouse.cluster), connect to nothing")
	shards := fs.Int("shards", 0, "with --print-ddl and clickhouse.cluster: the cluster's `number` of shards (migrate itself reads it from the server)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *printDDL {
		return printMigrationDDL(&cf, *status, *shards, stdout)
	}
	if *shards != 0 {
		return fmt.Errorf("--shards applies only with --print-ddl")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	cfg, db, log, err := openForCommand(ctx, &cf, stderr)
	if err != nil {
		return err
	}
	defer db.Close()
	if !*status {
		applied, err := store.Migrate(ctx, db, migrateOptions(cfg), log)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "applied %d migration(s)\n", len(applied))
		changed, err := store.ApplyRetention(ctx, db, retentionRules(cfg), log)
		if err != nil {
			return err
		}
		for _, t := range changed {
			fmt.Fprintf(stdout, "retention of %s changed\n", t)
		}
	}
	st, err := store.Status(ctx, db)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tNAME\tAPPLIED")
	for _, s := range st {
		applied := "no"
		if s.Applied {
			applied = s.AppliedAt.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%04d\t%s\t%s\n", s.Version, s.Name, applied)
	}
	return tw.Flush()
}

// printMigrationDDL prints store.Plan for the configuration's layout.
func printMigrationDDL(cf *commonFlags, status bool, shards int, stdout io.Writer) error {
	if status {
		return errors.New("--print-ddl and --status cannot be combined")
	}
	cfg, err := cf.load()
	if err != nil {
		return err
	}
	opts := migrateOptions(cfg)
	switch {
	case cfg.ClickHouse.Cluster == "" && shards != 0:
		return errors.New("--shards applies only with clickhouse.cluster")
	case cfg.ClickHouse.Cluster != "" && (shards < 1 || shards > 10000):
		return fmt.Errorf("--print-ddl for cluster %q needs --shards N (1-10000), the number of shards of the cluster", cfg.ClickHouse.Cluster)
	case cfg.ClickHouse.Cluster != "":
		opts.Layout.Shards, opts.Layout.Database = shards, cfg.ClickHouse.Database
	}
	plan, err := store.Plan(opts)
	if err != nil {
		return err
	}
	bw := bufio.NewWriter(stdout)
	for _, p := range plan {
		fmt.Fprintf(bw, "\n-- ==== %s ====\n\n", p.Name)
		for _, s := range p.Statements {
			fmt.Fprintf(bw, "%s;\n\n", s)
		}
	}
	return bw.Flush()
}

// openForCommand loads the configuration and opens the ClickHouse engine
// for a one-shot command.
func openForCommand(ctx context.Context, cf *commonFlags, stderr io.Writer) (*Config, store.Conn, *slog.Logger, error) {
	cfg, err := cf.load()
	if err != nil {
		return nil, nil, nil, err
	}
	lc := *cfg
	if cf.logLevel == "" && os.Getenv(EnvPrefix+"LOG_LEVEL") == "" && lc.Log.Level == "info" {
		// A one-shot command prints its answer; the engine's start-up and
		// the like are noise there unless asked for.
		lc.Log.Level = "warn"
	}
	log := newLogger(&lc, stderr)
	sc, err := storeConfig(cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	db, err := store.Open(ctx, sc, log)
	if err != nil {
		if len(cfg.ClickHouse.Addr) == 0 && !errors.Is(err, store.ErrNoLibrary) && !errors.Is(err, store.ErrEncryptionKey) {
			err = fmt.Errorf("%w\n(the embedded engine's data directory %s can be open in one process only: stop `meterline serve`, or read through the HTTP API)", err, cfg.ClickHouse.DataDir)
		}
		return nil, nil, nil, err
	}
	return cfg, db, log, nil
}

func runSQL(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("sql", `sql [--config FILE] "SELECT ..."`, stderr)
	var cf commonFlags
	cf.registerFor(fs, flagsStore)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "give exactly one SQL statement, quoted")
		fs.Usage()
		return errUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	_, db, _, err := openForCommand(ctx, &cf, stderr)
	if err != nil {
		return err
	}
	defer db.Close()
	q := strings.TrimSpace(fs.Arg(0))
	head := strings.ToUpper(strings.Fields(q + " x")[0])
	if head != "SELECT" && head != "WITH" && head != "SHOW" && head != "DESCRIBE" && head != "EXISTS" {
		return db.Exec(ctx, q)
	}
	rows, err := db.Query(ctx, q)
	if err != nil {
		return err
	}
	defer rows.Close()
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	cols := rows.Columns()
	fmt.Fprintln(tw, strings.Join(cols, "\t"))
	vals := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return err
		}
		cells := make([]string, len(vals))
		for i, v := range vals {
			if t, ok := v.(time.Time); ok {
				cells[i] = t.UTC().Format("2006-01-02 15:04:05.000")
			} else {
				cells[i] = fmt.Sprint(v)
			}
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return tw.Flush()
}

// tokenUsage is the help of `meterline token`.
const tokenUsage = `Usage: meterline token new --name NAME [--scopes SCOPES] [--expires WHEN]
       meterline token hash < token.txt

  new   create a random token; print it (once) and the entry to add to
        auth.tokens_file (reloaded while serve runs) or auth.tokens
  hash  print the SHA-256 of a token read from standard input (one line),
        as a tokens entry stores it

Rotating a token without downtime: add the new token's entry to
auth.tokens_file beside the old one (both are valid), move the holder to
the new token, then remove the old entry (or give it an expires time).
Every entry needs its own name; a name or hash used twice is refused.
`

func runToken(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && (args[0] == "help" || args[0] == "-h" || args[0] == "--help") {
		fmt.Fprint(stdout, tokenUsage)
		return nil
	}
	if len(args) == 0 || args[0] != "new" && args[0] != "hash" {
		fmt.Fprint(stderr, tokenUsage)
		return errUsage
	}
	if args[0] == "hash" {
		return runTokenHash(args[1:], stdout, stderr)
	}
	fs := newFlagSet("token new", "token new --name NAME --scopes ingest[,admin,finance,customer:ID] [--expires 720h|2027-01-31T00:00:00Z]", stderr)
	name := fs.String("name", "", "who holds the token (a gateway, a dashboard); required, unique among the tokens")
	scopes := fs.String("scopes", "ingest", "comma-separated `scopes`: ingest, admin, finance, customer:<id>")
	expires := fs.String("expires", "", "optional expiry: a `duration` from now (720h) or an RFC 3339 time; after it the token gets 401")
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	if err := noArgs(fs, stderr); err != nil {
		return err
	}
	entry := auth.TokenConfig{Name: *name, Scopes: splitList(*scopes)}
	if *expires != "" {
		at, err := parseExpiry(*expires, time.Now())
		if err != nil {
			return err
		}
		entry.Expires = at
	}
	tok, err := auth.NewToken()
	if err != nil {
		return err
	}
	entry.SHA256 = auth.Hash(tok)
	if _, err := auth.New([]auth.TokenConfig{entry}); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "token (shown once, give it to %s): %s\nsha256: %s\n\nadd to the tokens list of auth.tokens_file (or to auth.tokens in the configuration file):\n", *name, tok, entry.SHA256)
	out, _ := yaml.Marshal([]auth.TokenConfig{entry})
	_, err = stdout.Write(out)
	return err
}

// parseExpiry reads --expires: a duration from now or an RFC 3339 time,
// which must be in the future.
func parseExpiry(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return time.Time{}, fmt.Errorf("--expires: %s is not in the future", s)
		}
		return now.Add(d).UTC().Truncate(time.Second), nil
	}
	at, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("--expires: %q is neither a duration like 720h nor an RFC 3339 time like 2027-01-31T00:00:00Z", s)
	}
	if !at.After(now) {
		return time.Time{}, fmt.Errorf("--expires: %s is not in the future", s)
	}
	return at.UTC(), nil
}

// runTokenHash prints the SHA-256 of the token on standard input.
func runTokenHash(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		fmt.Fprint(stderr, tokenUsage)
		return errUsage
	}
	data, err := io.ReadAll(io.LimitReader(os.Stdin, 4096))
	if err != nil {
		return err
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" || strings.ContainsAny(tok, " \t\r\n") {
		return errors.New("token hash: give one token on standard input")
	}
	_, err = fmt.Fprintf(stdout, "sha256: %s\n", auth.Hash(tok))
	return err
}

func runConfig(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("config", "config [--config FILE] [flags]", stderr)
	var cf commonFlags
	cf.register(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := cf.load()
	if err != nil {
		return err
	}
	shown := redactSecrets(cfg)
	out, err := yaml.Marshal(&shown)
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}

func runVersion(args []string, stdout, stderr io.Writer) error {
	fmt.Fprintf(stdout, "meterline %s (%s, %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	if store.EmbeddedBuilt {
		fmt.Fprintf(stdout, "  engines: embedded (libchdb %s), ClickHouse server\n", store.ChdbVersion)
	} else {
		fmt.Fprintln(stdout, "  engines: ClickHouse server only (built without the embedded engine)")
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			switch d.Path {
			case "github.com/segmentio/kafka-go", "github.com/ClickHouse/clickhouse-go/v2", "github.com/chdb-io/chdb-go", "github.com/stripe/stripe-go/v76":
				fmt.Fprintf(stdout, "  %s %s\n", d.Path, d.Version)
			}
		}
	}
	return nil
}
