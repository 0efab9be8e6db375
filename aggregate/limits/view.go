package limits

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterline/meterline/store"
)

// UsageSource gives the usage the limits are checked against. The rollups'
// querier (aggregate.Querier) is the real one.
type UsageSource interface {
	// UnitsByCustomer returns each customer's billable units with event
	// time in [from, to), deduplicated.
	UnitsByCustomer(ctx context.Context, from, to time.Time) (map[string]float64, error)
}

// Config configures the limits view and usage alerts (the "limits" section
// of the configuration).
type Config struct {
	// CatalogueFile is the plan and customer catalogue (YAML). Empty means
	// no plans: every key is unknown. The process loads it with
	// LoadRegistry and watches it with WatchFile; the View only reads the
	// Registry it is given.
	CatalogueFile string `yaml:"catalogue_file"`
	// Refresh is how often usage is recomputed. Default 5s.
	Refresh time.Duration `yaml:"refresh"`
	// MaxStaleness is the oldest snapshot Lookup answers from; beyond it
	// Lookup returns ErrStale (and /v1/limits answers 503), because a
	// gateway enforcing a limit from old figures would let a customer run
	// far past it. Must exceed Refresh. Default 1m.
	MaxStaleness time.Duration `yaml:"max_staleness"`
	// ReloadEvery is how often WatchFile polls CatalogueFile. Default 10s.
	ReloadEvery time.Duration `yaml:"reload_every"`
	// WebhookSecret is the HMAC-SHA256 key of alert signatures, at least 16
	// bytes. Empty disables alerts (an unsigned alert could be forged by
	// anyone who learns the receiver's URL), which is logged at start.
	WebhookSecret string `yaml:"webhook_secret" secret:"true"`
	// WebhookTimeout bounds one delivery attempt, connection to response
	// headers and body. Default 10s.
	WebhookTimeout time.Duration `yaml:"webhook_timeout"`
	// RetryMin is the first wait between attempts of one alert; each
	// further wait doubles (with jitter). Default 5s.
	RetryMin time.Duration `yaml:"retry_min"`
	// RetryMax caps the wait between attempts. Default 1h.
	RetryMax time.Duration `yaml:"retry_max"`
	// MaxAttempts is how many times one alert is attempted before it is
	// recorded as failed. The defaults give about 6 to 12 hours of
	// retries, enough to ride out a receiver's outage. Default 20.
	MaxAttempts int `yaml:"max_attempts"`
	// DisableAlerts turns alert evaluation off in this process.
	DisableAlerts bool `yaml:"disable_alerts"`
	// AlertSender chooses which of the processes serving limits send
	// alerts: "lease" (default) elects one through a Kafka consumer group
	// (topic <kafka.topic>.leases), so several query processes never both send
	// an alert before either records it, and another takes over within
	// AlertLeaseTimeout when the sender dies; "always" sends from this
	// process without asking, for a single process without Kafka.
	AlertSender string `yaml:"alert_sender"`
	// AlertLeaseTimeout is how long a dead sender keeps the lease before
	// another process takes over. Default 10s.
	AlertLeaseTimeout time.Duration `yaml:"alert_lease_timeout"`
}

// Alert senders (Config.AlertSender).
const (
	AlertSenderLease  = "lease"
	AlertSenderAlways = "always"
)

// WithDefaults fills unset fields with their defaults.
func (c Config) WithDefaults() Config {
	if c.Refresh == 0 {
		c.Refresh = 5 * time.Second
	}
	if c.AlertSender == "" {
		c.AlertSender = AlertSenderLease
	}
	if c.AlertLeaseTimeout == 0 {
		c.AlertLeaseTimeout = 10 * time.Second
	}
	if c.MaxStaleness == 0 {
		c.MaxStaleness = time.Minute
	}
	if c.ReloadEvery == 0 {
		c.ReloadEvery = 10 * time.Second
	}
	if c.WebhookTimeout == 0 {
		c.WebhookTimeout = 10 * time.Second
	}
	if c.RetryMin == 0 {
		c.RetryMin = 5 * time.Second
	}
	if c.RetryMax == 0 {
		c.RetryMax = time.Hour
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 20
	}
	return c
}

// Validate reports every invalid setting at once.
func (c Config) Validate() error {
	var errs []error
	if c.Refresh < 100*time.Millisecond || c.Refresh > time.Hour {
		errs = append(errs, fmt.Errorf("limits.refresh: %s is out of range 100ms-1h", c.Refresh))
	}
	if c.MaxStaleness <= c.Refresh {
		errs = append(errs, fmt.Errorf("limits.max_staleness: %s must exceed limits.refresh (%s), or every answer would be stale", c.MaxStaleness, c.Refresh))
	}
	if c.ReloadEvery < 100*time.Millisecond || c.ReloadEvery > time.Hour {
		errs = append(errs, fmt.Errorf("limits.reload_every: %s is out of range 100ms-1h", c.ReloadEvery))
	}
	if c.WebhookSecret != "" && len(c.WebhookSecret) < 16 {
		errs = append(errs, errors.New("limits.webhook_secret: shorter than 16 bytes"))
	}
	if c.WebhookTimeout < 100*time.Millisecond || c.WebhookTimeout > 5*time.Minute {
		errs = append(errs, fmt.Errorf("limits.webhook_timeout: %s is out of range 100ms-5m", c.WebhookTimeout))
	}
	if c.RetryMin <= 0 || c.RetryMax < c.RetryMin {
		errs = append(errs, fmt.Errorf("limits.retry_min (%s) must be positive and not above limits.retry_max (%s)", c.RetryMin, c.RetryMax))
	}
	if c.MaxAttempts < 1 || c.MaxAttempts > 1000 {
		errs = append(errs, fmt.Errorf("limits.max_attempts: %d is out of range 1-1000", c.MaxAttempts))
	}
	if c.AlertSender != AlertSenderLease && c.AlertSender != AlertSenderAlways {
		errs = append(errs, fmt.Errorf("limits.alert_sender: %q is neither %q nor %q", c.AlertSender, AlertSenderLease, AlertSenderAlways))
	}
	if c.AlertLeaseTimeout < 6*time.Second || c.AlertLeaseTimeout > 5*time.Minute {
		// Kafka's group.min.session.timeout.ms is 6s by default.
		errs = append(errs, fmt.Errorf("limits.alert_lease_timeout: %s is out of range 6s-5m", c.AlertLeaseTimeout))
	}
	return errors.Join(errs...)
}

// Lookup errors.
var (
	// ErrUnknownKey: the API key is not in the catalogue.
	ErrUnknownKey = errors.New("unknown api key")
	// ErrStale: no usage snapshot younger than MaxStaleness (the usage
	// source has been failing, or the first refresh has not finished).
	ErrStale = errors.New("usage figures are stale")
)

// Limit is one API key's usage against its plan in the current period.
type Limit struct {
	// APIKeyID is the key asked about.
	APIKeyID string `json:"api_key_id"`
	// CustomerID is the key's owner and PlanID the owner's plan.
	CustomerID string `json:"customer_id"`
	PlanID     string `json:"plan_id"`
	// Used are the customer's units in the period (all of its keys), as of
	// AsOf.
	Used float64 `json:"used"`
	// Included are the plan's included units per period.
	Included float64 `json:"included"`
	// HardLimit is nil when the plan has none. It points into a snapshot
	// shared by every caller: read it, never write through it.
	HardLimit *float64 `json:"hard_limit"`
	// Remaining is Included - Used, floored at 0.
	Remaining float64 `json:"remaining"`
	// OverIncluded: Used > Included (the next unit is beyond the plan).
	OverIncluded bool `json:"over_included"`
	// OverHardLimit: Used >= HardLimit, the point at which the gateway
	// should refuse.
	OverHardLimit bool `json:"over_hard_limit"`
	// PeriodStart and ResetAt bound the period: a calendar month in UTC;
	// ResetAt is the next period's start.
	PeriodStart time.Time `json:"period_start"`
	ResetAt     time.Time `json:"reset_at"`
	// AsOf is when the snapshot's computation started: usage after it may
	// be missing. StalenessSeconds is the caller's now minus AsOf.
	AsOf             time.Time `json:"as_of"`
	StalenessSeconds float64   `json:"staleness_seconds"`
	// Status is the key's status at the caller's now: active, or
	// disabled, expired or not_yet_valid (a gateway answers those 403).
	Status KeyStatus `json:"status"`
	// NotBefore and ExpiresAt are the key's validity bounds, nil when it
	// has none. Like HardLimit they point into shared data.
	NotBefore *time.Time `json:"not_before,omitempty"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	// RateLimits are the plan's per-key rate limits, shortest window
	// first; empty when it has none. Shared: do not modify.
	RateLimits []RateLimit `json:"rate_limits"`
	// BillRejected: the plan bills requests a gateway refuses; otherwise
	// a gateway reports them with 0 units.
	BillRejected bool `json:"bill_rejected"`
}

// snapshot is one refresh's result. It is never modified after it is
// published, so Lookup reads it without locks.
type snapshot struct {
	periodStart, resetAt time.Time
	asOf                 time.Time
	used                 map[string]float64 // customer id -> units
}

// View serves limits from an in-memory snapshot of the current period's
// usage, refreshed in the background, and sends usage alerts after each
// refresh.
type View struct {
	cfg  Config
	reg  *Registry
	src  UsageSource
	db   store.Conn
	log  *slog.Logger
	now  func() time.Time
	snap atomic.Pointer[snapshot]
	m    viewMetrics

	alerts *alerter // nil when alerts are off
	gate   AlertGate

	changes *changes // what GET /v1/limits?since= answers
}

// AlertGate says whether this process may send usage alerts now. With
// several processes serving limits, a gate that only one of them passes at
// a time (ingest.Lease) keeps two processes from both sending an alert
// before either has recorded it.
type AlertGate interface {
	Held() bool
}

// SetAlertGate makes the View evaluate and send alerts only while g is
// held; a delivery in progress stops before its next attempt once g is
// lost, and the holder that follows picks it up from alert_deliveries.
// Each attempt is also fenced through alert_deliveries (see claim), under
// g's generation when g is an AlertFence (ingest.Lease is). Call it
// before Run.
func (v *View) SetAlertGate(g AlertGate) { v.gate = g }

// AlertsOn reports whether this View evaluates alerts at all (a secret, a
// database and alerts not disabled).
func (v *View) AlertsOn() bool { return v.alerts != nil }

// sending reports whether alerts may go out from this process now.
func (v *View) sending() bool { return v.gate == nil || v.gate.Held() }

type viewMetrics struct {
	refreshDuration prometheus.Histogram
	refreshErrors   prometheus.Counter
	deliveries      *prometheus.CounterVec
	sender          prometheus.GaugeFunc
	pending         prometheus.GaugeFunc
}

// NewView wires a View. It does no I/O; Lookup answers ErrStale until the
// first Refresh. db holds the alert_deliveries table (migration 0003); a
// nil db, an empty WebhookSecret or DisableAlerts turns alerts off. prom
// may be nil (no metrics registered); log may be nil.
func NewView(cfg Config, reg *Registry, src UsageSource, db store.Conn, prom prometheus.Registerer, log *slog.Logger) *View {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		reg = NewRegistry(nil)
	}
	v := &View{cfg: cfg.WithDefaults(), reg: reg, src: src, db: db, log: log, now: time.Now, changes: newChanges()}
	v.m = viewMetrics{
		refreshDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meterline_limits_refresh_duration_seconds",
			Help:    "Duration of successful refreshes of the limits view's usage snapshot.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		refreshErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meterline_limits_refresh_errors_total",
			Help: "Failed refreshes of the limits view (usage source, or the alert state in ClickHouse).",
		}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterline_alerts_deliveries_total",
			Help: "Usage alert delivery attempts, by outcome (delivered, retrying, failed).",
		}, []string{"outcome"}),
	}
	v.m.sender = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "meterline_alerts_sender",
		Help: "1 while this process evaluates and sends usage alerts (alerts on and, with several processes, the alert lease held), else 0.",
	}, func() float64 {
		if v.alerts != nil && v.sending() {
			return 1
		}
		return 0
	})
	v.m.pending = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "meterline_alerts_pending",
		Help: "Usage alerts queued or being delivered (waiting between retries included) in this process.",
	}, func() float64 {
		if v.alerts == nil {
			return 0
		}
		return float64(v.alerts.pending.Load())
	})
	for _, o := range []string{outcomeDelivered, outcomeRetrying, outcomeFailed} {
		v.m.deliveries.WithLabelValues(o)
	}
	if prom != nil {
		staleness := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "meterline_limits_staleness_seconds",
			Help: "Age of the limits view's usage snapshot (-1 before the first refresh).",
		}, func() float64 {
			s := v.snap.Load()
			if s == nil {
				return -1
			}
			return v.now().Sub(s.asOf).Seconds()
		})
		prom.MustRegister(v.m.refreshDuration, v.m.refreshErrors, v.m.deliveries, staleness, v.m.sender, v.m.pending)
		// The registry may be shared with the sink, which may have
		// registered it already.
		if err := prom.Register(reg); err != nil {
			if are := (prometheus.AlreadyRegisteredError{}); !errors.As(err, &are) {
				panic(err)
			}
		}
	}
	switch {
	case v.cfg.DisableAlerts:
		log.Info("usage alerts disabled in this process (limits.disable_alerts)")
	case db == nil:
		log.Warn("usage alerts disabled: no ClickHouse connection to record deliveries")
	case v.cfg.WebhookSecret == "":
		log.Warn("usage alerts disabled: limits.webhook_secret is empty, and alerts are never sent unsigned")
	default:
		v.alerts = newAlerter(v)
	}
	return v
}

// periodOf returns the calendar month (UTC) holding t: its start and the
// next one's. time.Date normalises month 13 to January of the next year.
func periodOf(t time.Time) (start, next time.Time) {
	y, m, _ := t.UTC().Date()
	return time.Date(y, m, 1, 0, 0, 0, 0, time.UTC), time.Date(y, m+1, 1, 0, 0, 0, 0, time.UTC)
}

// Lookup returns apiKeyID's limit as of the current snapshot. It does no
// I/O, takes no lock and allocates nothing: three map reads in the
// catalogue (key, customer, plan) and one in the snapshot. Errors: ErrUnknownKey (checked first: the catalogue is always
// current), ErrStale.
//
// Between a period's end and the first refresh after it, the snapshot
// describes the previous period. Lookup then answers for the new period
// with Used 0: as of AsOf, which precedes the new period, nothing of it
// had been used. StalenessSeconds tells the caller how old that is.
func (v *View) Lookup(apiKeyID string, now time.Time) (Limit, error) {
	ix := v.reg.cur.Load()
	custID, st, ok := ix.keyAt(apiKeyID, now)
	if !ok {
		return Limit{}, ErrUnknownKey
	}
	cust := ix.customers[custID]
	plan := ix.plans[cust.Plan]
	if plan == nil {
		// Only an unvalidated catalogue gets here.
		return Limit{}, ErrUnknownKey
	}
	s := v.snap.Load()
	if s == nil {
		return Limit{}, ErrStale
	}
	age := now.Sub(s.asOf)
	if age > v.cfg.MaxStaleness {
		return Limit{}, ErrStale
	}
	l := Limit{
		APIKeyID:     apiKeyID,
		CustomerID:   custID,
		PlanID:       plan.ID,
		Included:     plan.IncludedUnits,
		HardLimit:    plan.hardLimit,
		PeriodStart:  s.periodStart,
		ResetAt:      s.resetAt,
		AsOf:         s.asOf,
		Status:       st.StatusAt(now),
		RateLimits:   plan.RateLimits,
		BillRejected: plan.BillRejected,
	}
	if !st.NotBefore.IsZero() {
		l.NotBefore = &st.NotBefore
	}
	if !st.ExpiresAt.IsZero() {
		l.ExpiresAt = &st.ExpiresAt
	}
	switch {
	case now.Before(s.periodStart):
		// The caller's clock is behind the snapshot's period: there is no
		// figure for the period it asks about.
		return Limit{}, ErrStale
	case !now.Before(s.resetAt):
		l.PeriodStart, l.ResetAt = periodOf(now)
	default:
		l.Used = s.used[custID]
	}
	l.StalenessSeconds = max(age.Seconds(), 0)
	l.Remaining = max(l.Included-l.Used, 0)
	l.OverIncluded = l.Used > l.Included
	l.OverHardLimit = l.HardLimit != nil && l.Used >= *l.HardLimit
	return l, nil
}

// AsOf returns when the current snapshot was computed (zero before the
// first successful refresh), for readiness checks.
func (v *View) AsOf() time.Time {
	if s := v.snap.Load(); s != nil {
		return s.asOf
	}
	return time.Time{}
}

// Refresh computes the current period's usage once, publishes it, then
// evaluates alerts. Deliveries run in the background; Refresh does not
// wait for them. On a usage error the previous snapshot stays (and grows
// stale). An error checking the alert state is returned after the
// snapshot was published.
func (v *View) Refresh(ctx context.Context) error {
	start := time.Now()
	now := v.now()
	from, to := periodOf(now)
	// The whole period, not [from, now): events accepted with a time
	// slightly ahead of the clock (gateway clock skew) count as soon as
	// they are stored.
	// Without customers in the catalogue no key has a limit (Lookup
	// answers ErrUnknownKey) and no alert is due: the usage read, a scan
	// of the month's rollups for every customer, is skipped and the
	// snapshot is published empty, so readiness and staleness still hold.
	var used map[string]float64
	if ix := v.reg.cur.Load(); ix != nil && len(ix.customers) > 0 {
		var err error
		used, err = v.src.UnitsByCustomer(ctx, from, to)
		if err != nil {
			v.m.refreshErrors.Inc()
			return fmt.Errorf("limits: refresh usage: %w", err)
		}
	}
	s := &snapshot{periodStart: from, resetAt: to, asOf: now, used: maps.Clone(used)}
	if s.used == nil {
		s.used = map[string]float64{}
	}
	v.snap.Store(s)
	v.changes.update(v.reg.cur.Load(), s, now)
	v.m.refreshDuration.Observe(time.Since(start).Seconds())
	if v.alerts != nil && v.sending() {
		if err := v.alerts.evaluate(ctx, s); err != nil {
			v.m.refreshErrors.Inc()
			return fmt.Errorf("limits: alerts: %w", err)
		}
	}
	return nil
}

// Run refreshes at once and then every Refresh until ctx ends. A failing
// refresh is logged and retried at the next tick. When ctx ends, Run
// cancels the alert deliveries in progress, waits for them to record
// their last attempt, and returns nil. A View runs once.
func (v *View) Run(ctx context.Context) error {
	v.log.Info("limits view started", "refresh", v.cfg.Refresh, "max_staleness", v.cfg.MaxStaleness, "alerts", v.alerts != nil)
	defer v.Close()
	t := time.NewTicker(v.cfg.Refresh)
	defer t.Stop()
	for {
		// A hung source must not hold the loop beyond the point where the
		// snapshot is stale anyway.
		rctx, cancel := context.WithTimeout(ctx, v.cfg.MaxStaleness)
		err := v.Refresh(rctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			v.log.Warn("limits refresh failed", "err", err, "as_of", v.AsOf())
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Close cancels the alert deliveries in progress and waits until each has
// recorded its last attempt. Run calls it on exit; tests that drive
// Refresh directly call it themselves. Lookup keeps working.
func (v *View) Close() {
	if v.alerts != nil {
		v.alerts.close()
	}
}

// newHTTPClient is the webhook client: bounded by the timeout, and not
// following redirects, since a redirected POST would either lose its body
// or send the signed alert to a host the catalogue does not name.
func newHTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// onceGroup tracks background goroutines; a tiny wrapper so close can
// refuse new ones after it started waiting.
type onceGroup struct {
	mu     sync.Mutex
	wg     sync.WaitGroup
	closed bool
}

// Go runs f in a goroutine unless the group is closed; it reports whether
// it did.
func (g *onceGroup) Go(f func()) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.wg.Go(f)
	return true
}

// closeAndWait refuses new goroutines and waits for the running ones.
func (g *onceGroup) closeAndWait() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.wg.Wait()
}
