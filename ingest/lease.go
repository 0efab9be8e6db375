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
// A holder stops holding as soon as its generation ends: when a heartbeat
// fails or the group rebalances. Since the coordinator evicts a silent
// member only after the session timeout, which is longer than the
// heartbeat interval, a holder cut off from Kafka notices before anyone
// else can be elected. What the lease cannot fence is a holder that is
// paused for longer than the session timeout (a stopped process, a long
// swap): when it resumes, it may act for a moment before its next
// heartbeat fails. Work guarded by a lease should therefore still be
// idempotent or carry an id the receiver can deduplicate.
type Lease struct {
	cfg  LeaseConfig
	kcfg KafkaConfig
	name string
	log  *slog.Logger
	held atomic.Bool
	// lastHeld: this member held the lease in the generation that just
	// ended; it asks for it again when it rejoins (stickyLease).
	lastHeld  atomic.Bool
	ready     chan struct{} // closed after the first election result
	readyOnce sync.Once
	// dial, when set, opens the lease's connections to the brokers (tests
	// put a proxy between the lease and Kafka).
	dial func(ctx context.Context, network, address string) (net.Conn, error)
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
	return c
}

// NewLease returns a lease named name over the brokers of kcfg. It does no
// I/O until Run.
func NewLease(cfg LeaseConfig, kcfg KafkaConfig, name string, log *slog.Logger) *Lease {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	kcfg = kcfg.WithDefaults()
	return &Lease{cfg: cfg.withDefaults(kcfg), kcfg: kcfg, name: name, log: log.With("lease", name), ready: make(chan struct{})}
}

// Held reports whether this process holds the lease right now.
func (l *Lease) Held() bool { return l.held.Load() }

// Ready is closed once the first election has been decided for this
// process (it holds the lease or knows that another member does).
func (l *Lease) Ready() <-chan struct{} { return l.ready }

// Run takes part in the election until ctx ends, retrying with backoff
// while Kafka cannot be reached (the lease is not held meanwhile). It
// returns nil when ctx ends.
func (l *Lease) Run(ctx context.Context) error {
	defer l.held.Store(false)
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

// groupConfig is the consumer group the lease is elected through.
func (l *Lease) groupConfig() (kafka.ConsumerGroupConfig, error) {
	dialer, err := l.kcfg.Dialer()
	if err != nil {
		return kafka.ConsumerGroupConfig{}, err
	}
	dialer.DialFunc = l.dial
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
		Timeout:           l.cfg.SessionTimeout,
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
		if holds {
			l.held.Store(true)
			l.log.Info("lease acquired", "generation", gen.ID)
		}
		<-gctx.Done()
		if holds {
			l.held.Store(false)
			l.log.Info("lease released", "generation", gen.ID)
		}
	})
	l.readyOnce.Do(func() { close(l.ready) })
	select {
	case <-ended:
		return true
	case <-ctx.Done():
		l.held.Store(false)
		return false
	}
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
