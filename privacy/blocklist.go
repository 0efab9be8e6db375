package privacy

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterline/meterline/store"
)

// Blocklist is the set of erased customers and of their API keys, reloaded
// from privacy_erasures: the sink asks it about every event
// (ingest.ErasedCustomers, ingest.ErasedKeys). The keys are those recorded
// with each erasure, so an event of an erased customer's key is dropped
// even without a customer_id and after the key left the catalogue.
type Blocklist struct {
	db      store.Conn
	refresh time.Duration
	log     *slog.Logger
	set     atomic.Pointer[map[string]struct{}]
	keys    atomic.Pointer[map[string]struct{}]
	size    prometheus.GaugeFunc
	nkeys   prometheus.GaugeFunc
}

// NewBlocklist returns an empty Blocklist; call Load before the sink starts
// and Run to keep it fresh. reg may be nil.
func NewBlocklist(cfg Config, db store.Conn, reg prometheus.Registerer, log *slog.Logger) *Blocklist {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Blocklist{db: db, refresh: cfg.WithDefaults().ErasedRefresh, log: log}
	empty := map[string]struct{}{}
	b.set.Store(&empty)
	noKeys := map[string]struct{}{}
	b.keys.Store(&noKeys)
	b.nkeys = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "meterline_privacy_erased_keys",
		Help: "API keys of erased customers whose events the sink drops, with or without a customer_id.",
	}, func() float64 { return float64(len(*b.keys.Load())) })
	b.size = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "meterline_privacy_erased_customers",
		Help: "Customers whose events the sink drops because their data was erased.",
	}, func() float64 { return float64(len(*b.set.Load())) })
	if reg != nil {
		reg.MustRegister(b.size, b.nkeys)
	}
	return b
}

// Erased reports whether the customer's data was erased.
func (b *Blocklist) Erased(customerID string) bool {
	_, ok := (*b.set.Load())[customerID]
	return ok
}

// KeyErased reports whether the API key belonged to an erased customer.
func (b *Blocklist) KeyErased(apiKeyID string) bool {
	_, ok := (*b.keys.Load())[apiKeyID]
	return ok
}

// Load reads the erased customers and their keys once.
func (b *Blocklist) Load(ctx context.Context) error {
	set, err := ErasedCustomers(ctx, b.db)
	if err != nil {
		return err
	}
	keys, err := ErasedKeys(ctx, b.db)
	if err != nil {
		return err
	}
	b.keys.Store(&keys)
	b.set.Store(&set)
	return nil
}

// Run reloads the list every refresh interval until ctx ends. A failed
// reload keeps the last list.
func (b *Blocklist) Run(ctx context.Context) error {
	t := time.NewTicker(b.refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := b.Load(ctx); err != nil && ctx.Err() == nil {
				b.log.Warn("reloading erased customers failed; keeping the last list", "err", err)
			}
		}
	}
}
