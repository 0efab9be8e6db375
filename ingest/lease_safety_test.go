package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/internal/testenv"
)

// TestLeaseEndedGenerationNeverHeld hands the lease a real generation (of
// its own group, on the real broker) in which it was assigned the lease
// but which has already ended: the lease must not claim it, not even for
// a moment (no "lease acquired", Held false).
func TestLeaseEndedGenerationNeverHeld(t *testing.T) {
	brokers := testenv.KafkaBrokers(t)
	rec := &logRecorder{}
	l := NewLease(LeaseConfig{Topic: testenv.Unique("leases"), SessionTimeout: 6 * time.Second},
		KafkaConfig{Brokers: brokers}.WithDefaults(), testenv.Unique("alerts"), slog.New(rec))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := l.ensureTopic(ctx); err != nil {
		t.Fatal(err)
	}
	gcfg, err := l.groupConfig()
	if err != nil {
		t.Fatal(err)
	}
	group, err := kafka.NewConsumerGroup(gcfg)
	if err != nil {
		t.Fatal(err)
	}
	var gen *kafka.Generation
	for gen == nil { // a join may time out on a loaded machine: the group retries
		if gen, err = group.Next(ctx); err != nil && ctx.Err() != nil {
			t.Fatal(err)
		}
	}
	if len(gen.Assignments[l.cfg.Topic]) == 0 {
		t.Fatal("the only member of the group was not assigned the lease")
	}
	// Closing the group ends the generation (and leaves the group).
	if err := group.Close(); err != nil {
		t.Fatal(err)
	}
	var everHeld atomic.Bool
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			if l.Held() {
				everHeld.Store(true)
			}
			select {
			case <-stop:
				return
			default:
			}
		}
	}()
	l.runGeneration(ctx, gen)
	close(stop)
	<-watched
	if msgs := rec.messages(); contains(msgs, "lease acquired") || everHeld.Load() || l.Held() {
		t.Fatalf("an ended generation was taken as held (seen held: %v; log: %q)", everHeld.Load(), msgs)
	}
}

// TestLeaseReadyMeansHeldIsVisible: once Ready is closed, Held already
// tells the election's result: the only member holds the lease at that
// very moment, without waiting.
func TestLeaseReadyMeansHeldIsVisible(t *testing.T) {
	brokers := testenv.KafkaBrokers(t)
	k := KafkaConfig{Brokers: brokers}.WithDefaults()
	for round := range 3 {
		l := NewLease(LeaseConfig{Topic: testenv.Unique("leases"), SessionTimeout: 6 * time.Second}, k, testenv.Unique("alerts"), quietLog())
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- l.Run(ctx) }()
		select {
		case <-l.Ready():
		case <-time.After(time.Minute):
			t.Fatal("the only member never learnt the election's result")
		}
		held := l.Held()
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if !held {
			t.Fatalf("round %d: Ready closed but Held is false on the only member", round)
		}
	}
}

// TestLeaseCutOffHolderStopsBeforeEviction puts a TCP proxy between the
// holder and the real broker and makes it drop every byte, without
// closing a connection (a network partition, not a crash). The holder
// must report not-held while the broker still counts it as a member, that
// is before the session timeout lets the broker give the lease to the
// other member; the other member then takes over, and the two never hold
// it at once.
func TestLeaseCutOffHolderStopsBeforeEviction(t *testing.T) {
	brokers := testenv.KafkaBrokers(t)
	// The default margins (a fifth of the session timeout, 2s here) leave
	// the test's polling loop seconds to see the holder stop first.
	cfg := LeaseConfig{Topic: testenv.Unique("leases"), SessionTimeout: 10 * time.Second}
	name := testenv.Unique("alerts")
	px := newBlackholeProxy(t)

	run := func(l *Lease) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- l.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		select {
		case <-l.Ready():
		case <-time.After(time.Minute):
			t.Fatal("a member never learnt the election's result")
		}
	}
	holderID := testenv.Unique("cut-off-holder")
	a := NewLease(cfg, KafkaConfig{Brokers: brokers, ClientID: holderID}.WithDefaults(), name, quietLog())
	a.dial = px.dial
	run(a)
	testenv.Eventually(t, time.Minute, func() error {
		if !a.Held() {
			return errors.New("the first member does not hold the lease")
		}
		return nil
	})
	b := NewLease(cfg, KafkaConfig{Brokers: brokers}.WithDefaults(), name, quietLog())
	run(b)
	kc := testenv.KafkaClient(brokers)
	groupID := a.cfg.GroupPrefix + name
	members := func() (holderIn bool, n int, err error) {
		g, err := kc.DescribeGroups(context.Background(), &kafka.DescribeGroupsRequest{GroupIDs: []string{groupID}})
		if err != nil {
			return false, 0, err
		}
		if len(g.Groups) != 1 {
			return false, 0, fmt.Errorf("%d groups", len(g.Groups))
		}
		if g.Groups[0].Error != nil {
			return false, 0, g.Groups[0].Error
		}
		for _, m := range g.Groups[0].Members {
			if m.ClientID == holderID {
				holderIn = true
			}
		}
		return holderIn, len(g.Groups[0].Members), nil
	}
	testenv.Eventually(t, time.Minute, func() error {
		if in, n, err := members(); err != nil || !in || n != 2 {
			return fmt.Errorf("group: holder in %v, %d members (%v); want both", in, n, err)
		}
		if !a.Held() || b.Held() {
			return fmt.Errorf("held: first %v, second %v; want the first alone", a.Held(), b.Held())
		}
		return nil
	})

	px.blackhole()
	cut := time.Now()
	var released time.Duration // when the holder stopped holding, after the cut
	deadline := time.Now().Add(2 * time.Minute)
	for {
		aHeld, bHeld := a.Held(), b.Held()
		if aHeld && bHeld {
			t.Fatal("both members hold the lease")
		}
		if !aHeld && released == 0 {
			released = time.Since(cut)
		}
		// Held is sampled before the group is described: a holder seen
		// not holding while the broker still lists it stopped first.
		in, _, err := members()
		if err == nil && !in {
			// The broker has evicted the holder: the lease may be elsewhere.
			if aHeld || released == 0 {
				t.Fatalf("the cut-off holder still held the lease when the broker evicted it (%s after the cut)", time.Since(cut).Round(time.Millisecond))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the broker never evicted the cut-off holder")
		}
	}
	evicted := time.Since(cut)
	testenv.Eventually(t, time.Minute, func() error {
		if a.Held() {
			t.Fatal("the cut-off holder holds the lease again")
		}
		if !b.Held() {
			return errors.New("the second member does not hold the lease yet")
		}
		return nil
	})
	t.Logf("after the cut: holder stopped at %s, broker evicted it at %s, other member took over at %s (session timeout %s)",
		released.Round(time.Millisecond), evicted.Round(time.Millisecond), time.Since(cut).Round(time.Millisecond), cfg.SessionTimeout)
}

// blackholeProxy forwards TCP connections to the addresses the lease
// dials, until blackhole: from then on it reads and drops every byte in
// both directions and opens nothing new upstream, while keeping every
// connection open.
type blackholeProxy struct {
	t    *testing.T
	mu   sync.Mutex
	lns  map[string]net.Listener // upstream address -> proxy listener
	hole atomic.Bool
	wg   sync.WaitGroup
	open []net.Conn
}

func newBlackholeProxy(t *testing.T) *blackholeProxy {
	p := &blackholeProxy{t: t, lns: map[string]net.Listener{}}
	t.Cleanup(func() {
		p.mu.Lock()
		for _, ln := range p.lns {
			_ = ln.Close()
		}
		for _, c := range p.open {
			_ = c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *blackholeProxy) blackhole() { p.hole.Store(true) }

// dial is the lease's dial function: it connects to the proxy of address.
func (p *blackholeProxy) dial(ctx context.Context, network, address string) (net.Conn, error) {
	p.mu.Lock()
	ln, ok := p.lns[address]
	if !ok {
		var err error
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			p.mu.Unlock()
			return nil, err
		}
		p.lns[address] = ln
		p.wg.Go(func() { p.accept(ln, address) })
	}
	p.mu.Unlock()
	var d net.Dialer
	return d.DialContext(ctx, network, ln.Addr().String())
}

func (p *blackholeProxy) track(c net.Conn) {
	p.mu.Lock()
	p.open = append(p.open, c)
	p.mu.Unlock()
}

func (p *blackholeProxy) accept(ln net.Listener, upstream string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		p.track(c)
		if p.hole.Load() {
			p.wg.Go(func() { _, _ = io.Copy(io.Discard, c) })
			continue
		}
		u, err := net.Dial("tcp", upstream)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.track(u)
		p.wg.Go(func() { p.pipe(u, c) })
		p.wg.Go(func() { p.pipe(c, u) })
	}
}

// pipe copies from src to dst until src closes; once blackholed, it keeps
// reading src and drops what it reads.
func (p *blackholeProxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.hole.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// logRecorder is a slog handler that keeps the messages logged.
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	r.msgs = append(r.msgs, rec.Message)
	r.mu.Unlock()
	return nil
}
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *logRecorder) WithGroup(string) slog.Handler      { return r }
func (r *logRecorder) messages() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.msgs...)
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}
