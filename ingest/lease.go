package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
)

// Lease elects one holder among the processes that run it under the same
// name, through Kafka's group membership: every process joins the consumer
// group "<LeaseConfig.GroupPrefix><name>" on a topic of one partition
// (named after the events topic, so deployments sharing a Kafka cluster
// elect apart), and the member the group assigns that partition to holds
// the lease. Nothing
// is ever read or committed; the group coordinator does the election, the
// heartbeats keep it, and a holder that dies or loses the broker is
// replaced after the session timeout.
//
// At most one holder at any moment: the holder sends its own heartbeats
// and holds the lease only until SessionTimeout - SafetyMargin after it
// sent the last heartbeat the coordinator acknowledged. The coordinator
// received that heartbeat after it was sent, and evicts a member (or
// completes a rebalance without it) no earlier than SessionTimeout after
// the last heartbeat it received, so a holder cut off from Kafka stops
// holding at least SafetyMargin before any other member can be assigned
// the lease, whatever the state of its connections. It also stops as soon
// as its generation ends (a rebalance, a refused heartbeat). Held checks
// all of it on every call.
//
// What the lease cannot fence is work already under way when the lease
// is lost (a request in flight), and a holder that is paused between
// checking Held and acting (a stopped process, a long swap). Work guarded
// by a lease should therefore record the Token it acted under and carry
// an id the receiver can deduplicate.
type Lease struct {
	cfg  LeaseConfig
	kcfg KafkaConfig
	name string
	log  *slog.Logger
	// epoch is the origin of the terms' deadlines (monotonic clock).
	epoch time.Time
	// term is the generation in which this member holds the lease, nil
	// when it holds nothing.
	term atomic.Pointer[leaseTerm]
	// lastHeld: this member held the lease in the generation that just
	// ended; it asks for it again when it rejoins (stickyLease).
	lastHeld  atomic.Bool
	ready     chan struct{} // closed once the first election result is visible through Held
	readyOnce sync.Once
	// hb sends the holder's heartbeats (set up by Run).
	hb *kafka.Client
	m  leaseMetrics
	// dial, when set, opens the lease's connections to the brokers (tests
	// put a proxy between the lease and Kafka).
	dial func(ctx context.Context, network, address string) (net.Conn, error)
}

// leaseTerm is one generation in which this member was assigned the lease.
type leaseTerm struct {
	ctx        context.Context // the generation's: done when it ends
	generation int32
	// until is the end of the term's validity, in nanoseconds since the
	// lease's epoch: the send time of the last acknowledged heartbeat +
	// SessionTimeout - SafetyMargin.
	until atomic.Int64
}

// LeaseConfig tunes a Lease. Zero values take the defaults.
type LeaseConfig struct {
	// Topic is the one-partition topic the lease groups subscribe to; it
	// is created when missing. Default "<events topic>.leases".
	Topic string
	// GroupPrefix prefixes the lease name to form the consumer group.
	// Default "meterline-<events topic>-lease-".
	GroupPrefix string
	// SessionTimeout is how long a silent holder keeps the lease before
	// another process takes it over. Default 10s.
	SessionTimeout time.Duration
	// HeartbeatInterval is how often membership is confirmed; it must be
	// well below SessionTimeout. Default SessionTimeout / 5.
	HeartbeatInterval time.Duration
	// SafetyMargin is how long before the coordinator could evict it a
	// holder that hears nothing from Kafka stops holding: it holds until
	// SessionTimeout - SafetyMargin after it sent the last acknowledged
	// heartbeat. It covers the time between checking Held and acting,
	// and clocks that run at slightly different rates. Default
	// SessionTimeout / 5.
	SafetyMargin time.Duration
	// HeartbeatTimeout bounds one of the holder's heartbeats; it is below
	// the validity SessionTimeout - SafetyMargin, so a heartbeat that
	// hangs ends while the term is still valid. Default SessionTimeout / 3.
	HeartbeatTimeout time.Duration
}

func (c LeaseConfig) withDefaults(k KafkaConfig) LeaseConfig {
	if c.Topic == "" {
		c.Topic = k.Topic + ".leases"
	}
	if c.GroupPrefix == "" {
		c.GroupPrefix = "meterline-" + k.Topic + "-lease-"
	}
	if c.SessionTimeout == 0 {
		c.SessionTimeout = 10 * time.Second
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = c.SessionTimeout / 5
	}
	if c.SafetyMargin == 0 {
		c.SafetyMargin = c.SessionTimeout / 5
	}
	if c.HeartbeatTimeout == 0 {
		c.HeartbeatTimeout = c.SessionTimeout / 3
	}
	return c
}

// validity is how long after sending an acknowledged heartbeat the term
// holds.
func (c LeaseConfig) validity() time.Duration { return c.SessionTimeout - c.SafetyMargin }

// NewLease returns a lease named name over the brokers of kcfg. It does no
// I/O until Run.
func NewLease(cfg LeaseConfig, kcfg KafkaConfig, name string, log *slog.Logger) *Lease {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	kcfg = kcfg.WithDefaults()
	l := &Lease{cfg: cfg.withDefaults(kcfg), kcfg: kcfg, name: name, log: log.With("lease", name),
		epoch: time.Now(), ready: make(chan struct{})}
	labels := prometheus.Labels{"lease": name}
	l.m = leaseMetrics{
		held: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "meterline_lease_held", ConstLabels: labels,
			Help: "1 while this process holds the lease, else 0.",
		}, func() float64 {
			if l.Held() {
				return 1
			}
			return 0
		}),
		generation: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meterline_lease_generation", ConstLabels: labels,
			Help: "The lease group's generation whose election result this process last made visible (holder or not); 0 before the first.",
		}),
		heartbeats: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterline_lease_heartbeats_total", ConstLabels: labels,
			Help: "Heartbeats the lease holder sent, by result: acked, refused (the generation is over) or failed (no answer in time).",
		}, []string{"result"}),
	}
	for _, r := range []string{"acked", "refused", "failed"} {
		l.m.heartbeats.WithLabelValues(r)
	}
	return l
}

type leaseMetrics struct {
	held       prometheus.GaugeFunc
	generation prometheus.Gauge
	heartbeats *prometheus.CounterVec
}

// Collectors returns the lease's metrics, labelled with its name, for
// registration: meterline_lease_held, meterline_lease_generation and
// meterline_lease_heartbeats_total{result}.
func (l *Lease) Collectors() []prometheus.Collector {
	return []prometheus.Collector{l.m.held, l.m.generation, l.m.heartbeats}
}

// Held reports whether this process holds the lease right now: it was
// assigned the lease in a generation that has not ended, and the last
// heartbeat the coordinator acknowledged was sent less than
// SessionTimeout - SafetyMargin ago.
func (l *Lease) Held() bool {
	_, ok := l.Token()
	return ok
}

// Token returns the generation in which this process holds the lease and
// whether it holds it right now (as Held). Generations of one group only
// grow while the group exists, so a holder can record the token with the
// work it does and refuse to act on work a newer one has claimed.
func (l *Lease) Token() (int64, bool) {
	t := l.term.Load()
	if t == nil || t.ctx.Err() != nil || l.since() >= t.until.Load() {
		return 0, false
	}
	return int64(t.generation), true
}

// since is the time since the lease's epoch, on the monotonic clock.
func (l *Lease) since() int64 { return int64(time.Since(l.epoch)) }

// Ready is closed once the first election has been decided for this
// process and the decision is visible through Held: it holds the lease,
// or it knows that another member does.
func (l *Lease) Ready() <-chan struct{} { return l.ready }

func (l *Lease) decided() { l.readyOnce.Do(func() { close(l.ready) }) }

// Run takes part in the election until ctx ends, retrying with backoff
// while Kafka cannot be reached (the lease is not held meanwhile). It
// returns nil when ctx ends.
func (l *Lease) Run(ctx context.Context) error {
	defer l.term.Store(nil)
	if err := l.ensureTopic(ctx); err != nil {
		return err
	}
	gcfg, err := l.groupConfig()
	if err != nil {
		return err
	}
	group, err := kafka.NewConsumerGroup(gcfg)
	if err != nil {
		return fmt.Errorf("lease %s: %w", l.name, err)
	}
	defer group.Close()
	defer l.hb.Transport.(*kafka.Transport).CloseIdleConnections()
	for {
		gen, err := group.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, kafka.ErrGroupClosed) {
				return nil
			}
			level := slog.LevelWarn
			if errors.Is(err, kafka.RebalanceInProgress) {
				level = slog.LevelDebug // the normal way into a new generation
			}
			l.log.Log(ctx, level, "lease election failed; retrying", "err", err)
			continue // the group backs off by JoinGroupBackoff itself
		}
		if !l.runGeneration(ctx, gen) {
			return nil
		}
	}
}

// groupConfig is the consumer group the lease is elected through; it also
// sets up the client of the holder's heartbeats.
func (l *Lease) groupConfig() (kafka.ConsumerGroupConfig, error) {
	dialer, err := l.kcfg.Dialer()
	if err != nil {
		return kafka.ConsumerGroupConfig{}, err
	}
	dialer.DialFunc = l.dial
	tr, err := l.kcfg.Transport()
	if err != nil {
		return kafka.ConsumerGroupConfig{}, err
	}
	tr.Dial = l.dial
	l.hb = &kafka.Client{Addr: kafka.TCP(l.kcfg.Brokers...), Transport: tr, Timeout: l.cfg.HeartbeatTimeout}
	return kafka.ConsumerGroupConfig{
		ID:                l.cfg.GroupPrefix + l.name,
		Brokers:           l.kcfg.Brokers,
		Dialer:            dialer,
		Topics:            []string{l.cfg.Topic},
		SessionTimeout:    l.cfg.SessionTimeout,
		RebalanceTimeout:  l.cfg.SessionTimeout,
		HeartbeatInterval: l.cfg.HeartbeatInterval,
		JoinGroupBackoff:  time.Second,
		GroupBalancers:    []kafka.GroupBalancer{stickyLease{l}},
		// The group's own requests (its heartbeats, and joins, which
		// wait up to the rebalance timeout plus the broker's initial
		// rebalance delay on top of this) get kafka-go's default or half
		// the session timeout, below the session timeout either way.
		// Holding does not depend on them: Held has its own deadline.
		Timeout: max(5*time.Second, l.cfg.SessionTimeout/2),
		ErrorLogger: kafka.LoggerFunc(func(msg string, args ...any) {
			l.log.Debug("kafka lease group: " + fmt.Sprintf(msg, args...))
		}),
	}, nil
}

// runGeneration takes part in one generation until it ends; it reports
// false when ctx ended first.
func (l *Lease) runGeneration(ctx context.Context, gen *kafka.Generation) bool {
	holds := len(gen.Assignments[l.cfg.Topic]) > 0
	l.lastHeld.Store(holds)
	ended := make(chan struct{})
	gen.Start(func(gctx context.Context) {
		defer close(ended)
		if gctx.Err() != nil {
			return // the generation ended before it began here
		}
		if !holds {
			l.m.generation.Set(float64(gen.ID))
			l.decided() // another member holds it; Held is false
			<-gctx.Done()
			return
		}
		l.hold(gctx, gen)
	})
	select {
	case <-ended:
		return true
	case <-ctx.Done():
		l.term.Store(nil)
		return false
	}
}

// hold keeps the lease through gen: it heartbeats every HeartbeatInterval
// and extends the term on each acknowledged heartbeat. It returns, which
// ends the generation, when the coordinator refuses a heartbeat (the
// generation is over) or the term lapsed without an acknowledgement (the
// coordinator may be evicting this member); the group then rejoins.
func (l *Lease) hold(gctx context.Context, gen *kafka.Generation) {
	t := &leaseTerm{ctx: gctx, generation: gen.ID}
	// Not held until the first acknowledgement; given up like a lapsed
	// term if none comes within the validity.
	t.until.Store(l.since() + int64(l.cfg.validity()))
	defer func() {
		if l.term.CompareAndSwap(t, nil) {
			l.log.Info("lease released", "generation", gen.ID)
		}
	}()
	tick := time.NewTicker(l.cfg.HeartbeatInterval)
	defer tick.Stop()
	for {
		sent := l.since()
		refused, err := l.heartbeat(gctx, gen)
		switch {
		case gctx.Err() != nil:
			return
		case refused != nil:
			l.m.heartbeats.WithLabelValues("refused").Inc()
			l.log.Debug("lease heartbeat refused; the generation is over", "generation", gen.ID, "err", refused)
			return
		case err == nil:
			l.m.heartbeats.WithLabelValues("acked").Inc()
			t.until.Store(sent + int64(l.cfg.validity()))
			if l.term.Load() != t {
				l.term.Store(t)
				l.m.generation.Set(float64(gen.ID))
				l.log.Info("lease acquired", "generation", gen.ID)
				l.decided()
			}
		case l.since() >= t.until.Load():
			l.m.heartbeats.WithLabelValues("failed").Inc()
			l.log.Warn("lease lapsed: no heartbeat acknowledged in time", "generation", gen.ID, "err", err)
			return
		default:
			l.m.heartbeats.WithLabelValues("failed").Inc()
			l.log.Debug("lease heartbeat failed; retrying", "generation", gen.ID, "err", err)
		}
		select {
		case <-gctx.Done():
			return
		case <-tick.C:
		}
	}
}

// heartbeat sends one heartbeat for gen. refused is the coordinator's
// error answer (the generation is over); err a failure to get an answer.
func (l *Lease) heartbeat(ctx context.Context, gen *kafka.Generation) (refused, err error) {
	resp, err := l.hb.Heartbeat(ctx, &kafka.HeartbeatRequest{GroupID: gen.GroupID, GenerationID: gen.ID, MemberID: gen.MemberID})
	if err != nil {
		return nil, err
	}
	return resp.Error, nil
}

// ensureTopic creates the lease topic (one partition) when it is missing,
// unless kafka.create_topics is off (then the operator creates it).
func (l *Lease) ensureTopic(ctx context.Context) error {
	if l.kcfg.CreateTopics != nil && !*l.kcfg.CreateTopics {
		return nil
	}
	tr, err := l.kcfg.Transport()
	if err != nil {
		return err
	}
	tr.Dial = l.dial
	defer tr.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(l.kcfg.Brokers...), Transport: tr, Timeout: 10 * time.Second}
	for attempt := 0; ; attempt++ {
		resp, err := client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
			Topic: l.cfg.Topic, NumPartitions: 1, ReplicationFactor: max(l.kcfg.ReplicationFactor, 1),
		}}})
		if err == nil {
			err = resp.Errors[l.cfg.Topic]
		}
		if err == nil || errors.Is(err, kafka.TopicAlreadyExists) {
			return nil
		}
		if ctx.Err() != nil {
			return nil
		}
		l.log.Warn("creating the lease topic failed; retrying", "topic", l.cfg.Topic, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(min(time.Duration(attempt+1)*time.Second, 30*time.Second)):
		}
	}
}

// stickyLease is the group's assignor: the lease (every partition of the
// lease topic) goes to the member that held it in the last generation, so
// a process joining or leaving does not move it from a live holder (each
// move is a moment without a sender and a delivery handed over); with no
// such member, to the member with the smallest id.
type stickyLease struct{ l *Lease }

func (stickyLease) ProtocolName() string { return "meterline-sticky-lease" }

func (b stickyLease) UserData() ([]byte, error) {
	if b.l.lastHeld.Load() {
		return []byte{1}, nil
	}
	return []byte{0}, nil
}

func (stickyLease) AssignGroups(members []kafka.GroupMember, partitions []kafka.Partition) kafka.GroupMemberAssignments {
	out := kafka.GroupMemberAssignments{}
	if len(members) == 0 {
		return out
	}
	pick := members[0]
	for _, m := range members {
		out[m.ID] = map[string][]int{}
		pickHeld := len(pick.UserData) == 1 && pick.UserData[0] == 1
		mHeld := len(m.UserData) == 1 && m.UserData[0] == 1
		if (mHeld && !pickHeld) || (mHeld == pickHeld && m.ID < pick.ID) {
			pick = m
		}
	}
	for _, p := range partitions {
		out[pick.ID][p.Topic] = append(out[pick.ID][p.Topic], p.ID)
	}
	return out
}
