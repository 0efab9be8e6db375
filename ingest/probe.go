package ingest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
)

// KafkaProbe answers readiness checks from the result of a check that runs
// in the background over one long-lived client, so that /readyz, however
// often it is called, opens no connection of its own: the check reuses the
// transport's pooled connections.
type KafkaProbe struct {
	cfg      KafkaConfig
	interval time.Duration
	tr       *kafka.Transport
	client   *kafka.Client

	mu      sync.Mutex
	err     error
	at      time.Time // when err was measured; zero before the first check
	checked chan struct{}
	once    sync.Once
}

// DefaultProbeInterval is how often a KafkaProbe checks the brokers.
const DefaultProbeInterval = 2 * time.Second

// NewKafkaProbe builds a probe of the events topic; interval 0 means
// DefaultProbeInterval. Run must run for Check to answer.
func NewKafkaProbe(c KafkaConfig, interval time.Duration) (*KafkaProbe, error) {
	tr, err := c.Transport()
	if err != nil {
		return nil, err
	}
	if interval <= 0 {
		interval = DefaultProbeInterval
	}
	return &KafkaProbe{cfg: c, interval: interval, tr: tr, checked: make(chan struct{}),
		client: &kafka.Client{Addr: kafka.TCP(c.Brokers...), Transport: tr, Timeout: 3 * time.Second}}, nil
}

// Run checks every interval until ctx ends, then closes the connections.
func (p *KafkaProbe) Run(ctx context.Context) error {
	defer p.tr.CloseIdleConnections()
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, max(p.interval, 3*time.Second))
		err := p.check(cctx)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		p.mu.Lock()
		p.err, p.at = err, time.Now()
		p.mu.Unlock()
		p.once.Do(func() { close(p.checked) })
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// check reads the topic's metadata (kafka-go serves it from the transport's
// cache, which it refreshes in the background, and reports a failed refresh)
// and makes one round trip to a broker over a pooled connection.
func (p *KafkaProbe) check(ctx context.Context) error {
	md, err := p.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{p.cfg.Topic}})
	if err != nil {
		return p.cfg.explain(err)
	}
	for _, t := range md.Topics {
		if t.Error != nil {
			return fmt.Errorf("topic %q: %w", t.Name, t.Error)
		}
	}
	res, err := p.client.ApiVersions(ctx, &kafka.ApiVersionsRequest{})
	if err != nil {
		return p.cfg.explain(err)
	}
	if res.Error != nil {
		return res.Error
	}
	return nil
}

// Check returns the result of the last check. Before the first one it
// waits for it (bounded by ctx); a result older than three intervals is an
// error, since the checks themselves have stopped answering.
func (p *KafkaProbe) Check(ctx context.Context) error {
	select {
	case <-p.checked:
	case <-ctx.Done():
		return errors.New("no check of the brokers has finished yet")
	}
	p.mu.Lock()
	err, at := p.err, p.at
	p.mu.Unlock()
	if age := time.Since(at); age > 3*p.interval+3*time.Second {
		return fmt.Errorf("the last check of the brokers finished %s ago", age.Round(time.Second))
	}
	return err
}
