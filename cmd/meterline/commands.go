package main

import (
	"context"
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
	fs := newFlagSet("migrate", "migrate [--config FILE] [--status]", stderr)
	var cf commonFlags
	cf.register(fs)
	status := fs.Bool("status", false, "list the migrations and whether each is applied, change nothing")
	if err := parse(fs, args); err != nil {
		return err
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

// openForCommand loads the configuration and opens the ClickHouse engine
// for a one-shot command.
func openForCommand(ctx context.Context, cf *commonFlags, stderr io.Writer) (*Config, store.Conn, *slog.Logger, error) {
	cfg, err := cf.load()
	if err != nil {
		return nil, nil, nil, err
	}
	log := newLogger(cfg, stderr)
	sc, err := storeConfig(cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	db, err := store.Open(ctx, sc, log)
	if err != nil {
		if len(cfg.ClickHouse.Addr) == 0 {
			err = fmt.Errorf("%w\n(the embedded engine's data directory %s can be open in one process only: stop `meterline serve`, or read through the HTTP API)", err, cfg.ClickHouse.DataDir)
		}
		return nil, nil, nil, err
	}
	return cfg, db, log, nil
}

func runSQL(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("sql", `sql [--config FILE] "SELECT ..."`, stderr)
	var cf commonFlags
	cf.register(fs)
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

func runToken(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("token new", "token new --name NAME --scopes ingest[,admin,finance,customer:ID]", stderr)
	name := fs.String("name", "", "who holds the token (a gateway, a dashboard); required")
	scopes := fs.String("scopes", "ingest", "comma-separated `scopes`: ingest, admin, finance, customer:<id>")
	if len(args) == 0 || args[0] != "new" {
		fmt.Fprintln(stderr, "Usage: meterline token new --name NAME --scopes SCOPES")
		return errUsage
	}
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	entry := auth.TokenConfig{Name: *name, Scopes: splitList(*scopes)}
	tok, err := auth.NewToken()
	if err != nil {
		return err
	}
	entry.SHA256 = auth.Hash(tok)
	if _, err := auth.New([]auth.TokenConfig{entry}); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "token (shown once, give it to %s): %s\n\nadd to auth.tokens in the configuration file:\n", *name, tok)
	out, _ := yaml.Marshal([]auth.TokenConfig{entry})
	_, err = stdout.Write(out)
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
	shown := *cfg
	if shown.ClickHouse.Password != "" {
		shown.ClickHouse.Password = "<redacted>"
	}
	if shown.Limits.WebhookSecret != "" {
		shown.Limits.WebhookSecret = "<redacted>"
	}
	if shown.Kafka.SASL.Password != "" {
		shown.Kafka.SASL.Password = "<redacted>"
	}
	if shown.Billing.StripeAPIKey != "" {
		shown.Billing.StripeAPIKey = "<redacted>"
	}
	if shown.Billing.WebhookSecret != "" {
		shown.Billing.WebhookSecret = "<redacted>"
	}
	out, err := yaml.Marshal(&shown)
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}

func runVersion(args []string, stdout, stderr io.Writer) error {
	fmt.Fprintf(stdout, "meterline %s (%s, %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
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
