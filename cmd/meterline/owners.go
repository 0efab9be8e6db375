package main

import (
	"log/slog"

	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/ingest"
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
