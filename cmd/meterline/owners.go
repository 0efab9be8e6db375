package main

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/ingest"
	"github.com/meterline/meterline/privacy"
	"github.com/meterline/meterline/store"
)

// checkOwners makes the collector check events against the catalogue.
// Without a catalogue file there is nothing to check against: events keep
// the customer_id they carry (logged once, so a production setup without
// a catalogue does not go unnoticed).
func checkOwners(cfg *Config, col *ingest.Collector, registry *limits.Registry, log *slog.Logger) {
	if cfg.Limits.CatalogueFile == "" {
		log.Warn("no limits.catalogue_file: events are stored with the customer_id they carry, unchecked")
		return
	}
	col.CheckOwners(registry, cfg.Events.UnknownKeys)
}

// resolveOwners makes the sink take each event's customer from the
// catalogue (see checkOwners for the case without one).
func resolveOwners(cfg *Config, sink *ingest.Sink, registry *limits.Registry) {
	if cfg.Limits.CatalogueFile == "" {
		return
	}
	sink.ResolveCustomers(registry)
	sink.SetUnknownKeys(cfg.Events.UnknownKeys)
}

// attributeUnassigned makes the aggregator attribute unassigned events to
// the customers the catalogue now gives their keys to (never to an erased
// customer), and report what stays unassigned.
func attributeUnassigned(agg *aggregate.Aggregator, registry *limits.Registry, db store.Conn, reg prometheus.Registerer) {
	agg.SetAttribution(aggregate.Attribution{
		Owners: func() []aggregate.KeyOwner {
			var out []aggregate.KeyOwner
			for _, o := range registry.Ownerships() {
				out = append(out, aggregate.KeyOwner{APIKeyID: o.APIKeyID, CustomerID: o.CustomerID, From: o.From, Until: o.Until})
			}
			return out
		},
		Erased: func(ctx context.Context) (map[string]struct{}, error) { return privacy.ErasedCustomers(ctx, db) },
	}, reg)
}
