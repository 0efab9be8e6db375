package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/api"
	"github.com/meterline/meterline/ingest"
	"github.com/meterline/meterline/internal/httpx"
	"github.com/meterline/meterline/internal/tlsutil"
	"github.com/meterline/meterline/privacy"
	"github.com/meterline/meterline/store"
)

// Roles a process can run. "all" (the default) runs every one of them.
const (
	roleCollector  = "collector"  // POST /v1/events → Kafka
	roleSink       = "sink"       // Kafka → raw events table
	roleAggregator = "aggregator" // raw events → usage rollups (run one per deployment)
	roleQuery      = "query"      // GET /v1/usage, /v1/limits, /v1/events/stored; plan limits and alerts
	roleBilling    = "billing"    // rollups → Stripe (run one per deployment); POST /v1/stripe/webhook
)

var allRoles = []string{roleCollector, roleSink, roleAggregator, roleQuery, roleBilling}

func parseRoles(s string) ([]string, error) {
	if s == "" || s == "all" {
		return allRoles, nil
	}
	var out []string
	for _, r := range splitList(s) {
		if !slices.Contains(allRoles, r) {
			return nil, fmt.Errorf("--roles: unknown role %q (known: %s, or all)", r, strings.Join(allRoles, ", "))
		}
		if !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("--roles: no role given")
	}
	return out, nil
}

func newLogger(c *Config, w io.Writer) *slog.Logger {
	lvl, _ := parseLevel(c.Log.Level)
	opts := &slog.HandlerOptions{Level: lvl}
	if c.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func storeConfig(c *Config) (store.Config, error) {
	tlsCfg, err := c.ClickHouse.TLS.Config()
	if err != nil {
		return store.Config{}, err
	}
	enc, err := c.ClickHouse.Encryption.load()
	if err != nil {
		return store.Config{}, err
	}
	return store.Config{
		Encryption:     enc,
		Addr:           c.ClickHouse.Addr,
		Database:       c.ClickHouse.Database,
		Username:       c.ClickHouse.Username,
		Password:       c.ClickHouse.Password,
		TLS:            tlsCfg,
		DataDir:        c.ClickHouse.DataDir,
		MaxMemoryBytes: c.ClickHouse.MaxMemoryBytes,
		DialTimeout:    10 * time.Second,
		Interactive:    c.API.Store(),
		Cluster:        c.ClickHouse.Cluster,
	}, nil
}

func migrateOptions(c *Config) store.MigrateOptions {
	return store.MigrateOptions{RawRetentionMonths: c.Retention.RawMonths, RollupRetentionMonths: c.Retention.RollupMonths,
		LedgerRetentionMonths: c.Retention.LedgerMonths, StoragePolicy: c.ClickHouse.StoragePolicy,
		Layout: store.Layout{Cluster: c.ClickHouse.Cluster, KeeperPath: c.ClickHouse.KeeperPath}}
}

// retentionRules is how long each table class keeps rows: raw events and
// the alert delivery log retention.raw_months, the rollups (wide and
// narrow) retention.rollup_months, the billing ledger and invoice log
// retention.ledger_months. Migrations create the tables with these TTLs;
// serve and migrate bring existing tables to them when the settings change.
func retentionRules(c *Config) []store.RetentionRule {
	raw, roll := c.Retention.RawMonths, c.Retention.RollupMonths
	return []store.RetentionRule{
		{Table: "events", Column: "time", Months: raw},
		{Table: "event_ids", Column: "claimed_at", Months: raw}, // the sink's id claims live as long as raw events
		{Table: "usage_minute", Column: "window_start", Months: roll},
		{Table: "usage_hour", Column: "window_start", Months: roll},
		{Table: "usage_day", Column: "window_start", Months: roll},
		{Table: "usage_month", Column: "window_start", Months: roll},
		{Table: "usage_key_minute", Column: "window_start", Months: roll},
		{Table: "usage_key_hour", Column: "window_start", Months: roll},
		{Table: "usage_key_day", Column: "window_start", Months: roll},
		{Table: "usage_key_month", Column: "window_start", Months: roll},
		{Table: "alert_deliveries", Column: "attempted_at", Months: raw},
		{Table: "billing_ledger", Column: "attempted_at", Months: c.Retention.LedgerMonths},
		{Table: "billing_invoices", Column: "received_at", Months: c.Retention.LedgerMonths},
	}
}

// openStore opens the configured engine and brings the schema up to date.
func openStore(ctx context.Context, c *Config, log *slog.Logger) (store.Conn, error) {
	sc, err := storeConfig(c)
	if err != nil {
		return nil, err
	}
	db, err := store.Open(ctx, sc, log)
	if err != nil {
		return nil, err
	}
	applied, err := store.Migrate(ctx, db, migrateOptions(c), log)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("schema migration: %w", err)
	}
	for _, a := range applied {
		log.Info("migration applied", "version", a.Version, "name", a.Name)
	}
	if _, err := store.ApplyRetention(ctx, db, retentionRules(c), log); err != nil {
		db.Close()
		return nil, fmt.Errorf("retention: %w", err)
	}
	return db, nil
}

func runServe(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("serve", "serve [--config FILE] [--roles collector,sink,aggregator,query] [flags]", stderr)
	var cf commonFlags
	cf.register(fs)
	rolesFlag := fs.String("roles", "all", "comma-separated `roles` to run: "+strings.Join(allRoles, ", ")+", or all")
	pprofAddr := fs.String("pprof-addr", "", "serve Go's /debug/pprof on this separate `address` (off by default; keep it on loopback)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := noArgs(fs, stderr); err != nil {
		return err
	}
	roles, err := parseRoles(*rolesFlag)
	if err != nil {
		return err
	}
	cfg, err := cf.load()
	if err != nil {
		return err
	}
	log := newLogger(cfg, stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *pprofAddr != "" {
		stopPprof, err := servePprof(*pprofAddr, log)
		if err != nil {
			return err
		}
		defer stopPprof()
	}
	return serve(ctx, cfg, roles, log)
}

// serve runs the roles until ctx ends, then stops them in order: the HTTP
// server first (no new events), then the sink (flushes its batch).
func serve(ctx context.Context, cfg *Config, roles []string, log *slog.Logger) error {
	has := func(r string) bool { return slices.Contains(roles, r) }
	log.Info("meterline starting", "version", version, "roles", roles, "http", cfg.HTTP.Addr)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var err error
	var db store.Conn
	if has(roleSink) || has(roleAggregator) || has(roleQuery) || has(roleBilling) {
		db, err = openStore(ctx, cfg, log)
		if err != nil {
			return err
		}
		defer db.Close()
		log.Info("clickhouse ready", "engine", db.Engine(), "database", cfg.ClickHouse.Database)
	}
	if has(roleCollector) || has(roleSink) {
		if err := ensureTopics(ctx, topicsConfig(cfg), log); err != nil {
			return err
		}
	}

	// The plan catalogue: the sink resolves customers with it, the query
	// role serves limits from it. One watcher reloads it for both.
	var catalogue *limits.Catalogue
	if f := cfg.Limits.CatalogueFile; f != "" {
		if catalogue, err = limits.LoadRegistry(f); err != nil {
			return fmt.Errorf("limits.catalogue_file: %w", err)
		}
	}
	registry := limits.NewRegistry(catalogue)

	mux := http.NewServeMux()
	var checks []readyCheck
	var wg sync.WaitGroup
	runErr := make(chan error, 32) // more than the goroutines that may fail, so none blocks on it
	runCtx, cancelRun := context.WithCancel(context.Background())
	defer cancelRun()
	goRun := func(name string, run func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(runCtx); err != nil {
				runErr <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	tokens, err := openTokens(cfg, reg, log, goRun)
	if err != nil {
		return err
	}
	if cfg.Limits.CatalogueFile != "" && (has(roleCollector) || has(roleSink) || has(roleAggregator) || has(roleQuery) || has(roleBilling)) {
		goRun("catalogue watcher", func(ctx context.Context) error {
			limits.WatchFile(ctx, cfg.Limits.CatalogueFile, registry, cfg.Limits.ReloadEvery, log)
			return nil
		})
	}

	if has(roleCollector) {
		w, err := ingest.NewProducer(cfg.Kafka)
		if err != nil {
			return err
		}
		defer w.Close()
		col := ingest.NewCollector(cfg.Collector, cfg.EventOptions(), cfg.Privacy.Anonymizer, tokens, w, reg, log.With("role", roleCollector))
		checkOwners(cfg, col, registry, log)
		mux.Handle("/v1/events", col)
		// /readyz answers from a background check over one client: a
		// probe called every second must not open a connection each time.
		probe, err := ingest.NewKafkaProbe(cfg.Kafka, 0)
		if err != nil {
			return err
		}
		goRun("kafka probe", probe.Run)
		checks = append(checks, readyCheck{"kafka", probe.Check})
	}
	if has(roleSink) {
		sink, err := ingest.NewSink(cfg.Sink, cfg.Kafka, cfg.EventOptions(), cfg.Privacy.Anonymizer, db, reg, log.With("role", roleSink))
		if err != nil {
			return err
		}
		resolveOwners(cfg, sink, registry)
		// Erased customers' events are dropped from the first batch on.
		erased := privacy.NewBlocklist(cfg.Privacy.Config, db, reg, log.With("role", roleSink))
		if err := erased.Load(ctx); err != nil {
			return err
		}
		sink.DropErased(erased)
		goRun("erased customers", erased.Run)
		if !has(roleQuery) {
			reg.MustRegister(registry) // the view registers it otherwise
		}
		goRun(roleSink, sink.Run)
		checks = append(checks, readyCheck{"sink", sink.Ready}) // 503 while a storage fault holds the offsets
	}
	var agg *aggregate.Aggregator
	if has(roleAggregator) {
		agg = aggregate.NewAggregator(cfg.Aggregate, db, reg, log.With("role", roleAggregator))
		attributeUnassigned(agg, registry, db, reg)
		goRun(roleAggregator, agg.Run)
	}
	if has(roleQuery) {
		querier := aggregate.NewQuerier(db)
		if agg != nil {
			// The watermark of this process's aggregator, from memory.
			querier.SetLocalAggregator(agg)
		}
		view := limits.NewView(cfg.Limits, registry, querier, db, reg, log.With("role", roleQuery))
		defer view.Close()
		if view.AlertsOn() && cfg.Limits.AlertSender == limits.AlertSenderLease {
			// One sender among the query processes, elected through Kafka.
			lease := ingest.NewLease(ingest.LeaseConfig{SessionTimeout: cfg.Limits.AlertLeaseTimeout}, cfg.Kafka, "alerts", log.With("role", roleQuery))
			view.SetAlertGate(lease)
			reg.MustRegister(lease.Collectors()...)
			goRun("alert lease", lease.Run)
		}
		goRun("limits view", view.Run)
		// Reads that query the store are limited per token and run on
		// connections of their own; limits are served from memory.
		readLimiter := api.NewLimiter(cfg.API, reg)
		mux.Handle("/v1/usage", api.ReadEndpoint(readLimiter, tokens, api.NewUsageHandler(querier, tokens)))
		mux.Handle("GET /v1/limits/{api_key_id}", api.NewLimitsHandler(view, tokens))
		mux.Handle("GET /v1/limits", api.NewLimitChangesHandler(view, tokens))
		mux.Handle("/v1/events/stored", api.ReadEndpoint(readLimiter, tokens, api.NewStoredHandler(db, tokens)))
		mux.Handle("/v1/admin/unassigned", api.NewUnassignedHandler(db, tokens))
		erasures := privacy.NewService(cfg.Privacy.Config, db, reg, log.With("role", roleQuery))
		elog, err := privacy.OpenErasureLog(cfg.erasureLogPath())
		if err != nil {
			return err
		}
		erasures.SetErasureLog(elog)
		erasures.CatalogueKeys(catalogueKeys(registry))
		erasures.KeyOwners(keyOwners(registry))
		goRun("erasures", erasures.Run)
		priv := &api.Privacy{DB: db, Service: erasures, Tokens: tokens, AccountDeletionDelay: cfg.Privacy.AccountDeletionDelay, ReadLimiter: readLimiter,
			Records: privacyRecords(registry, view), Log: log.With("role", roleQuery)}
		priv.Register(mux)
		mountUI(cfg, mux, db, priv, tokens, querier, view, registry, readLimiter, reg, log.With("role", roleQuery))
	}
	if has(roleBilling) {
		if err := startBilling(cfg, db, registry, catalogue, mux, reg, log.With("role", roleBilling), goRun); err != nil {
			return err
		}
	}
	if db != nil {
		checks = append(checks, readyCheck{"clickhouse", db.Ping})
	}
	mux.Handle("/v1/openapi.yaml", api.NewOpenAPIHandler())
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	var stopping atomic.Bool // set while draining: /readyz answers 503
	checks = append([]readyCheck{{"stopping", func(context.Context) error {
		if stopping.Load() {
			return errors.New("the process is stopping")
		}
		return nil
	}}}, checks...)
	mux.Handle("/readyz", readyHandler(checks))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		httpx.WriteError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path))
	})

	srv := &http.Server{
		Addr:              cfg.HTTP.Addr,
		Handler:           instrumentHTTP(mux, reg),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       cfg.HTTP.ReadTimeout,
		WriteTimeout:      cfg.HTTP.ReadTimeout + 30*time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	tlsCfg, err := cfg.HTTP.TLS.Config()
	if err != nil {
		return err
	}
	srv.TLSConfig = tlsCfg
	if err := tlsutil.RegisterExpiry(reg, cfg.HTTP.TLS.CertFile, cfg.Kafka.TLS.CertFile, cfg.ClickHouse.TLS.CertFile); err != nil {
		return err
	}
	warnPlainHTTP(log, cfg.HTTP.Addr, tlsCfg != nil)
	ln, err := net.Listen("tcp", cfg.HTTP.Addr)
	if err != nil {
		return fmt.Errorf("http: %w", err)
	}
	go func() {
		var err error
		if tlsCfg != nil {
			err = srv.ServeTLS(ln, "", "")
		} else {
			err = srv.Serve(ln)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			runErr <- fmt.Errorf("http: %w", err)
		}
	}()
	scheme := "http"
	if tlsCfg != nil {
		scheme = "https"
	}
	log.Info("meterline ready", "url", scheme+"://"+ln.Addr().String())

	var result error
	select {
	case <-ctx.Done():
		log.Info("stopping")
		if d := cfg.HTTP.DrainDelay; d > 0 {
			drain(&stopping, d, log)
		}
	case result = <-runErr:
		log.Error("stopping after a fatal error", "err", result)
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.HTTP.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("http shutdown", "err", err)
	}
	cancelRun()
	wg.Wait()
	log.Info("stopped")
	return result
}

// servePprof serves net/http/pprof on its own listener, apart from the API
// (profiles expose internals and cost CPU; `meterline bench --profile`
// fetches them from the processes it starts).
func servePprof(addr string, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--pprof-addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	log.Info("pprof listening", "url", "http://"+ln.Addr().String()+"/debug/pprof/")
	return func() { _ = srv.Close() }, nil
}

// ensureTopics creates the topics, waiting up to a minute for the brokers.
func ensureTopics(ctx context.Context, k ingest.KafkaConfig, log *slog.Logger) error {
	deadline := time.Now().Add(time.Minute)
	for {
		tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := ingest.EnsureTopics(tctx, k)
		cancel()
		if err == nil {
			return nil
		}
		if ingest.IsSecurityError(err) {
			// Wrong credentials or an untrusted certificate: retrying cannot help.
			return fmt.Errorf("kafka: %w", err)
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("kafka not reachable at %s (is the broker running? `make run` starts one): %w", strings.Join(k.Brokers, ","), err)
		}
		log.Warn("waiting for kafka", "brokers", k.Brokers, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Second):
		}
	}
}

type readyCheck struct {
	name  string
	check func(context.Context) error
}

// readyHandler answers 200 when every dependency answers, 503 naming the
// ones that do not.
func readyHandler(checks []readyCheck) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		var failed []string
		for _, c := range checks {
			if err := c.check(ctx); err != nil {
				failed = append(failed, c.name+": "+err.Error())
			}
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if len(failed) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready:\n"+strings.Join(failed, "\n"))
			return
		}
		fmt.Fprintln(w, "ready")
	})
}

// drain keeps serving for d with /readyz answering 503, so that load
// balancers take the process out before its listener closes; a second
// SIGINT or SIGTERM ends the wait.
func drain(stopping *atomic.Bool, d time.Duration, log *slog.Logger) {
	stopping.Store(true)
	again := make(chan os.Signal, 1)
	signal.Notify(again, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(again)
	log.Info("draining: /readyz answers 503 while requests are still served", "for", d)
	select {
	case <-time.After(d):
	case <-again:
		log.Info("second signal: stopping without waiting for the drain")
	}
}
