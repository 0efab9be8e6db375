package privacy

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterline/meterline/store"
)

// Blocklist is the set of erased customers, reloaded from privacy_erasures:
// the sink asks it about every event (ingest.ErasedCustomers).
type Blocklist struct {
	db      store.Conn
	refresh time.Duration
	log     *slog.Logger
	set     atomic.Pointer[map[string]struct{}]
	size    prometheus.GaugeFunc
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
	b.size = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "meterline_privacy_erased_customers",
		Help: "Customers whose events the sink drops because their data was erased.",
	}, func() float64 { return float64(len(*b.set.Load())) })
	if reg != nil {
		reg.MustRegister(b.size)
	}
	return b
}

// Erased reports whether the customer's data was erased.
func (b *Blocklist) Erased(customerID string) bool {
	_, ok := (*b.set.Load())[customerID]
	return ok
}

// Load reads the erased customers once.
func (b *Blocklist) Load(ctx context.Context) error {
	set, err := ErasedCustomers(ctx, b.db)
	if err != nil {
		return err
	}
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
