package main

import (
	"context"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/api"
	"github.com/meterline/meterline/auth"
	"github.com/meterline/meterline/billing"
	"github.com/meterline/meterline/store"
	"github.com/meterline/meterline/web"
)

// mountUI serves the web interface under /ui/ and the portal links'
// endpoint, POST /v1/portal/sessions, in the query role (ui.disabled turns
// both off).
func mountUI(cfg *Config, mux *http.ServeMux, db store.Conn, priv *api.Privacy, tokens *auth.Tokens, querier *aggregate.Querier, view *limits.View,
	registry *limits.Registry, readLimiter *api.Limiter, reg *prometheus.Registry, log *slog.Logger) {
	if cfg.UI.Disabled {
		return
	}
	tc, _ := cfg.HTTP.TLS.Config() // validated with the configuration
	ui := web.New(cfg.UI, web.Deps{Tokens: tokens, Usage: querier, Limits: view, Registry: registry, ReadLimiter: readLimiter, TLS: tc != nil,
		Health: web.RegistryHealth(reg), Log: log,
		Finance: financeReader(cfg, db), Privacy: priv, AlertsOn: view.AlertsOn,
		Deliveries: func(ctx context.Context, customer string, n int) ([]limits.Delivery, error) {
			return limits.RecentDeliveries(ctx, db, customer, n)
		}})
	mux.Handle("/ui/", ui.Handler())
	mux.Handle("/v1/portal/sessions", ui.PortalSessions())
}

// financeReader reads the finance pages' data: the mapping and the
// catalogue are read from their files at every call (a finance page is
// rare; it then always shows the mapping in force).
func financeReader(cfg *Config, db store.Conn) *billing.Reader {
	r := &billing.Reader{DB: db, Config: cfg.Billing}
	if cfg.Billing.MappingFile != "" {
		r.Load = func() (*billing.Mapping, billing.Plans, error) { return loadBillingPlans(cfg) }
	}
	return r
}

// loadBillingPlans is loadBilling with the catalogue as billing's plans.
func loadBillingPlans(cfg *Config) (*billing.Mapping, billing.Plans, error) {
	m, cat, err := loadBilling(cfg)
	if err != nil {
		return nil, nil, err
	}
	return m, limits.NewRegistry(cat), nil
}
