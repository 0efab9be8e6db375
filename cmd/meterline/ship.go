package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meterline/meterline/ship"
)

const shipUsage = `Usage: meterline ship caddy --config FILE [flags]

Ship a gateway's access log to the collector as v1 request events.

  caddy   Caddy's JSON access log, from a file it follows (with a position
          file: a restart neither loses nor repeats a line) or from a TCP
          listener for Caddy's output net

The configuration file, the field mapping and the route rules are in
docs/gateways.md; deploy/caddy/ has a tested Caddyfile and configuration.
`

func runShip(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, shipUsage)
		return errUsage
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Fprint(stdout, shipUsage)
		return nil
	case "caddy":
		return runShipCaddy(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "unknown ship source %q\n\n%s", args[0], shipUsage)
	return errUsage
}

func runShipCaddy(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("ship caddy", "ship caddy --config FILE [--metrics-addr ADDR] [--log-level LEVEL] [--log-format text|json]", stderr)
	config := fs.String("config", "", "the shipper's YAML configuration `file` (required; see docs/gateways.md)")
	metricsAddr := fs.String("metrics-addr", "", "serve GET /metrics on this `address` (overrides metrics_addr)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	format := fs.String("log-format", "text", "text or json")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := noArgs(fs, stderr); err != nil {
		return err
	}
	if *config == "" {
		fmt.Fprintln(stderr, "--config is required")
		fs.Usage()
		return errUsage
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(stderr, "--log-level %q: want debug, info, warn or error\n", *level)
		return errUsage
	}
	opts := &slog.HandlerOptions{Level: lvl}
	var log *slog.Logger
	switch *format {
	case "text":
		log = slog.New(slog.NewTextHandler(stderr, opts))
	case "json":
		log = slog.New(slog.NewJSONHandler(stderr, opts))
	default:
		fmt.Fprintf(stderr, "--log-format %q: want text or json\n", *format)
		return errUsage
	}
	cfg, err := ship.LoadCaddyConfig(*config, os.Getenv)
	if err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	if *metricsAddr != "" {
		cfg.MetricsAddr = *metricsAddr
	}
	reg := prometheus.NewRegistry()
	s, err := ship.NewCaddyShipper(cfg, reg, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if cfg.MetricsAddr != "" {
		ln, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			return fmt.Errorf("metrics_addr: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server stopped", "err", err)
			}
		}()
		defer srv.Close()
		log.Info("metrics served", "addr", ln.Addr().String())
	}
	return s.Run(ctx)
}
