package aggregate

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterline/meterline/store"
)

// KeyOwner is one span during which a customer holds an API key, as the
// plan catalogue records it (limits.Ownership; this package cannot import
// limits). Zero From: since always; zero Until: for ever.
type KeyOwner struct {
	APIKeyID   string
	CustomerID string
	From       time.Time
	Until      time.Time
}

// Attribution moves unassigned events (stored with an empty customer_id
// because the catalogue did not know their key) to the customer that
// holds the key at each event's time, once the catalogue knows it. See
// Aggregator.SetAttribution.
type Attribution struct {
	// Owners returns the current catalogue's key ownerships.
	Owners func() []KeyOwner
	// Erased returns the customers whose data was erased: their spans are
	// skipped, so a catalogue entry cannot bring erased usage back. nil:
	// none.
	Erased func(context.Context) (map[string]struct{}, error)
}

// UnassignedKey is one API key with unassigned events.
type UnassignedKey struct {
	APIKeyID  string    `json:"api_key_id"`
	Events    uint64    `json:"events"`
	Units     float64   `json:"units"`
	FirstTime time.Time `json:"first_time"`
	LastTime  time.Time `json:"last_time"`
}

// farFuture stands for "no end" in span parameters (DateTime64 reaches 2299).
var farFuture = time.Date(2299, 1, 1, 0, 0, 0, 0, time.UTC)

// attributionMetrics are registered by SetAttribution.
type attributionMetrics struct {
	unassignedEvents prometheus.Gauge
	unassignedKeys   prometheus.Gauge
	attributed       prometheus.Counter
	errors           prometheus.Counter
}

// SetAttribution makes every tick first attribute unassigned events whose
// key the catalogue now gives to a customer, and report the unassigned
// events left (meterline_aggregate_unassigned_events and _keys). reg may
// be nil. Call before Run.
//
// An attribution copies each unassigned row with its owner at the row's
// time and a new ingested_at, then deletes exactly the unassigned rows
// that now have an attributed copy (a row a sink inserts meanwhile stays
// unassigned for the next tick). The copies are new rows to the next
// tick, which re-rolls their minutes for the owner and, since every dirty
// minute of a key also re-rolls its unassigned group, rewrites the
// unassigned group that lost them with zero requests. Both steps run
// under the tick's lock and are idempotent: a crash between them is
// repaired by the next pass (the repeated copy collapses with the first
// in the ReplacingMergeTree).
func (a *Aggregator) SetAttribution(at Attribution, reg prometheus.Registerer) {
	a.attr = &at
	a.am = attributionMetrics{
		unassignedEvents: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meterline_aggregate_unassigned_events",
			Help: "Stored events without a customer (their key belonged to no customer of the catalogue at their time), as of the last attribution pass. Never billed.",
		}),
		unassignedKeys: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meterline_aggregate_unassigned_keys",
			Help: "API keys with unassigned events, as of the last attribution pass.",
		}),
		attributed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meterline_aggregate_events_attributed_total",
			Help: "Unassigned events moved to the customer the catalogue now gives their key to.",
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meterline_aggregate_attribution_errors_total",
			Help: "Attribution passes that failed (retried at the next tick).",
		}),
	}
	if reg != nil {
		reg.MustRegister(a.am.unassignedEvents, a.am.unassignedKeys, a.am.attributed, a.am.errors)
	}
}

// attribute runs one attribution pass; the caller holds a.mu.
func (a *Aggregator) attribute(ctx context.Context) error {
	before, err := UnassignedKeys(ctx, a.db)
	if err != nil {
		return err
	}
	pending := map[string]uint64{}
	for _, k := range before {
		pending[k.APIKeyID] = k.Events
	}
	var spans []KeyOwner
	for _, o := range a.attr.Owners() {
		if _, ok := pending[o.APIKeyID]; ok {
			spans = append(spans, o)
		}
	}
	var erased map[string]struct{}
	if len(spans) > 0 && a.attr.Erased != nil {
		if erased, err = a.attr.Erased(ctx); err != nil {
			return fmt.Errorf("attribution: read erased customers: %w", err)
		}
	}
	var keys []string
	var total uint64
	for _, o := range spans {
		if _, gone := erased[o.CustomerID]; gone {
			continue
		}
		from, until := o.From, o.Until
		if from.IsZero() {
			from = time.Unix(0, 0)
		}
		if until.IsZero() {
			until = farFuture
		}
		if err := a.db.Exec(ctx, attributeCopySQL,
			store.P("customer", o.CustomerID), store.P("key", o.APIKeyID),
			store.P("from", from.UTC()), store.P("until", until.UTC())); err != nil {
			return fmt.Errorf("attribution: copy the events of key %q to %q: %w", o.APIKeyID, o.CustomerID, err)
		}
		if !slices.Contains(keys, o.APIKeyID) {
			keys = append(keys, o.APIKeyID)
		}
	}
	if len(keys) > 0 {
		if err := a.db.Exec(ctx, attributeDeleteSQL, store.P("keys", keys)); err != nil {
			return fmt.Errorf("attribution: remove the attributed unassigned events: %w", err)
		}
	}
	after := before
	if len(keys) > 0 {
		if after, err = UnassignedKeys(ctx, a.db); err != nil {
			return err
		}
		left := map[string]uint64{}
		for _, k := range after {
			left[k.APIKeyID] = k.Events
		}
		var moved uint64
		for _, k := range keys {
			moved += pending[k] - min(left[k], pending[k])
		}
		a.am.attributed.Add(float64(moved))
		a.log.Info("unassigned events attributed", "keys", len(keys), "events", moved)
	}
	for _, k := range after {
		total += k.Events
	}
	a.am.unassignedEvents.Set(float64(total))
	a.am.unassignedKeys.Set(float64(len(after)))
	return nil
}

// UnassignedKeys lists the keys with events stored without a customer,
// with their deduplicated counts: usage that is never billed until the
// catalogue gives the key to a customer (admins see it at
// GET /v1/admin/unassigned).
func UnassignedKeys(ctx context.Context, db store.Conn) ([]UnassignedKey, error) {
	rows, err := db.Query(ctx, unassignedKeysSQL)
	if err != nil {
		return nil, fmt.Errorf("list unassigned keys: %w", err)
	}
	defer func() { _ = rows.Close() }()
	out := []UnassignedKey{}
	for rows.Next() {
		var k UnassignedKey
		if err := rows.Scan(&k.APIKeyID, &k.Events, &k.Units, &k.FirstTime, &k.LastTime); err != nil {
			return nil, fmt.Errorf("list unassigned keys: %w", err)
		}
		k.FirstTime, k.LastTime = k.FirstTime.UTC(), k.LastTime.UTC()
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list unassigned keys: %w", err)
	}
	return out, nil
}

// attributeUnassigned runs an attribution pass before a tick, when set. A
// failure is logged and counted; the tick goes on (its figures are right
// for the rows as they are) and the next one retries.
func (a *Aggregator) attributeUnassigned(ctx context.Context) {
	if a.attr == nil {
		return
	}
	if err := a.attribute(ctx); err != nil && ctx.Err() == nil {
		a.am.errors.Inc()
		a.log.Warn("attributing unassigned events failed; retrying at the next tick", "err", err)
	}
}
