package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/auth"
	"github.com/meterline/meterline/ingest"
	"github.com/meterline/meterline/internal/term"
	"github.com/meterline/meterline/store"
)

// runner is the state of one Run.
type runner struct {
	cfg     Config
	res     *Result
	t0      time.Time
	runID   string
	kcfg    ingest.KafkaConfig
	workDir string
	dataDir string

	collector, storage *child
	ingestURL          string // POST /v1/events
	queryURL           string // base URL of the query role
	metricsURLs        map[string]string
	ingestToken        string
	adminToken         string

	client *http.Client
	writer *kafka.Writer // ModeKafka
	gens   []*Generator

	// Totals over the whole run (probes included in accepted).
	sent, accepted, dups, late, failed, retries atomic.Int64
	distinctAccepted                            atomic.Int64
	processed0                                  float64

	mu      sync.Mutex
	phase   string
	samples []Sample
	peakSys map[string]int64
	lastCPU map[string]float64
	lastHWM map[string]int64

	probeMu sync.Mutex
	probes  []probe
	// pollEvery is the probe poll period: 100 ms in the latency phase,
	// 250 ms in the throughput phase, where each poll (a FINAL read of the
	// raw table) would otherwise take a noticeable share of the sink's CPU.
	pollEvery atomic.Int64

	db      store.Conn // this process's engine, for the check and the insert baseline
	closeDB func()
}

type probe struct {
	phase string
	sent  time.Time
	lat   float64 // seconds; <0 until counted
}

// Run runs one benchmark and returns its result (partial, with an error,
// when a phase failed). Progress goes to cfg.Progress; WriteTable and
// WriteFiles present the result.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	idb := make([]byte, 4)
	_, _ = rand.Read(idb)
	r := &runner{cfg: cfg, runID: hex.EncodeToString(idb), peakSys: map[string]int64{}, lastCPU: map[string]float64{}, lastHWM: map[string]int64{}}
	r.cfg.Traffic.Prefix = "b" + r.runID
	r.res = &Result{Started: time.Now().UTC(), Machine: machine(), Config: RunConfig{
		Mode: cfg.Mode, Target: cfg.Target, DurationSeconds: cfg.Duration.Seconds(), Rate: cfg.Rate,
		Connections: cfg.Connections, BatchEvents: cfg.BatchEvents, Partitions: cfg.Partitions,
		Customers: cfg.Traffic.Customers, KeysPerCustomer: cfg.Traffic.KeysPerCustomer,
		ErrorRate: max(cfg.Traffic.ErrorRate, 0), DupRate: max(cfg.Traffic.DupRate, 0), LateRate: max(cfg.Traffic.LateRate, 0),
		LatenessSeconds: cfg.Traffic.Lateness.Seconds(), Aggregator: cfg.Aggregator, BaselineEvents: cfg.BaselineEvents,
	}}
	r.client = &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		MaxIdleConns: cfg.Connections + 4, MaxIdleConnsPerHost: cfg.Connections + 4, DisableCompression: true, IdleConnTimeout: time.Minute,
	}}
	for w := 0; w < cfg.Connections; w++ {
		r.gens = append(r.gens, NewGenerator(r.cfg.Traffic, fmt.Sprintf("s%d", w), cfg.Seed+uint64(w)*7919))
	}

	if err := r.setup(ctx); err != nil {
		r.teardown()
		return nil, err
	}
	defer r.teardown()
	r.progressf("pipeline up in %s: %s\n", time.Since(r.res.Started).Round(100*time.Millisecond), r.describe())

	sctx, stopSampling := context.WithCancel(ctx)
	samplerDone := make(chan struct{})
	go func() { defer close(samplerDone); r.sampler(sctx) }()
	pctx, stopProbes := context.WithCancel(ctx)
	probesDone := make(chan struct{})
	go func() { defer close(probesDone); r.prober(pctx) }()

	name := "throughput"
	if cfg.Rate > 0 {
		name = "fixed-rate"
	}
	ph, err := r.runPhase(ctx, name, cfg.Rate, cfg.Duration, true)
	if err == nil {
		r.res.Phases = append(r.res.Phases, ph)
		if cfg.LatencyDuration > 0 && ph.Rate > 0 {
			rate := ph.Rate * cfg.LatencyShare
			ph2, err2 := r.runPhase(ctx, fmt.Sprintf("latency @%.0f%%", cfg.LatencyShare*100), rate, cfg.LatencyDuration, false)
			if err2 == nil {
				r.res.Phases = append(r.res.Phases, ph2)
			}
			err = err2
		}
	}
	// Let the last probes be counted.
	r.waitProbes(ctx, 15*time.Second)
	stopProbes()
	<-probesDone
	stopSampling()
	<-samplerDone
	for i := range r.res.Phases {
		r.res.Phases[i].Latency = r.latency(r.res.Phases[i].Name)
	}
	if err != nil {
		return r.res, err
	}
	r.collectProcs()
	r.stopChildren()
	r.check(ctx)
	if cfg.BaselineEvents > 0 {
		r.progressf("baselines: %d events through kafka-go (produce, consume) and one bulk insert\n", cfg.BaselineEvents)
		r.res.Baseline = r.baselines(ctx)
	}
	r.ratio()
	return r.res, nil
}

func (r *runner) describe() string {
	if r.cfg.Target != "" {
		return "target " + r.cfg.Target
	}
	s := fmt.Sprintf("collector pid %d (%s), storage pid %d (%s), topic %s (%d partitions), broker %s",
		r.collector.pid(), r.collector.addr, r.storage.pid(), r.storage.addr, r.kcfg.Topic, r.cfg.Partitions, strings.Join(r.cfg.Brokers, ","))
	return s
}

// setup starts the child processes (or points at the target).
func (r *runner) setup(ctx context.Context) error {
	cfg := r.cfg
	if cfg.Target != "" {
		base := strings.TrimRight(cfg.Target, "/")
		r.ingestURL, r.queryURL = base+"/v1/events", base
		r.metricsURLs = map[string]string{"server": base + "/metrics"}
		r.ingestToken, r.adminToken = cfg.IngestToken, cfg.AdminToken
		r.kcfg = ingest.KafkaConfig{Brokers: cfg.Brokers, Topic: cfg.Topic}.WithDefaults()
		r.res.Notes = append(r.res.Notes, "driving a running server: per-process CPU and memory, profiles and the stored-rows check are unavailable; rates include whatever else the server does")
		if cfg.Mode == ModeKafka {
			if err := r.newWriter(); err != nil {
				return err
			}
		}
		return r.baseProcessed(ctx)
	}
	dir := cfg.WorkDir
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "meterline-bench-"); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	r.workDir = dir
	r.dataDir = filepath.Join(dir, "clickhouse")
	topic := "bench-" + r.runID
	r.kcfg = ingest.KafkaConfig{Brokers: cfg.Brokers, Topic: topic, Partitions: cfg.Partitions}.WithDefaults()
	r.ingestToken, r.adminToken = "bench-ingest-"+r.runID, "bench-admin-"+r.runID
	cfgPath := filepath.Join(dir, "meterline.yaml")
	yaml := fmt.Sprintf(`# written by meterline bench
log:
  level: warn
kafka:
  brokers: [%s]
  topic: %s
  partitions: %d
clickhouse:
  data_dir: %s
sink:
  group_id: %s-sink
auth:
  tokens:
    - name: bench-gateway
      sha256: %s
      scopes: [ingest]
    - name: bench-admin
      sha256: %s
      scopes: [admin]
`, strings.Join(cfg.Brokers, ", "), topic, cfg.Partitions, r.dataDir, topic, auth.Hash(r.ingestToken), auth.Hash(r.adminToken))
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
		return err
	}
	roles := "sink,query"
	if cfg.Aggregator {
		roles = "sink,aggregator,query"
	}
	r.progressf("starting the pipeline: `meterline serve --roles %s` (embedded engine in %s) and `--roles collector`\n", roles, r.dataDir)
	// Storage first: it opens the engine and creates the topics.
	var err error
	if r.storage, err = startChild(ctx, cfg.Binary, dir, "sink", cfgPath, roles, cfg.ProfileDir != ""); err != nil {
		return err
	}
	if r.collector, err = startChild(ctx, cfg.Binary, dir, "collector", cfgPath, "collector", cfg.ProfileDir != ""); err != nil {
		return err
	}
	r.ingestURL = "http://" + r.collector.addr + "/v1/events"
	r.queryURL = "http://" + r.storage.addr
	r.metricsURLs = map[string]string{"collector": "http://" + r.collector.addr + "/metrics", "sink": "http://" + r.storage.addr + "/metrics"}
	if cfg.Mode == ModeKafka {
		if err := r.newWriter(); err != nil {
			return err
		}
	}
	return r.baseProcessed(ctx)
}

func (r *runner) newWriter() error {
	w, err := ingest.NewProducer(r.kcfg)
	if err != nil {
		return err
	}
	r.writer = w
	return nil
}

func (r *runner) baseProcessed(ctx context.Context) error {
	p, err := r.processed(ctx)
	if err != nil {
		return fmt.Errorf("reading the sink's metrics: %w", err)
	}
	r.processed0 = p
	return nil
}

func (r *runner) teardown() {
	if r.writer != nil {
		_ = r.writer.Close()
	}
	r.stopChildren()
	if r.closeDB != nil {
		r.closeDB()
		r.closeDB, r.db = nil, nil
	}
	if r.cfg.Target == "" && r.kcfg.Topic != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		deleteTopics(ctx, r.kcfg, r.kcfg.Topic, r.kcfg.DeadLetterTopic)
		cancel()
	}
	if r.cfg.WorkDir == "" && r.workDir != "" {
		_ = os.RemoveAll(r.workDir)
	}
}

func (r *runner) stopChildren() {
	var wg sync.WaitGroup
	for _, c := range []*child{r.collector, r.storage} {
		if c != nil && c.alive() {
			wg.Add(1)
			go func() { defer wg.Done(); c.stop() }()
		}
	}
	wg.Wait()
}

// storageMetricsURL is where the sink's counters are read.
func (r *runner) storageMetricsURL() string {
	if u, ok := r.metricsURLs["sink"]; ok {
		return u
	}
	return r.metricsURLs["server"]
}

// processed is what the sink has dealt with: stored, dropped as an
// in-batch duplicate or a later copy of a stored id, dead-lettered, or
// dropped as erased.
func (r *runner) processed(ctx context.Context) (float64, error) {
	m, err := scrape(ctx, r.client, r.storageMetricsURL())
	if err != nil {
		return 0, err
	}
	return m["meterline_sink_events_stored_total"] + m["meterline_sink_duplicates_dropped_total"] + m["meterline_sink_duplicates_stored_total"] +
		m["meterline_sink_events_dead_lettered_total"] + m["meterline_sink_erased_events_dropped_total"], nil
}

// phaseCounters are one phase's totals.
type phaseCounters struct {
	seq                                         atomic.Int64
	sent, accepted, dups, late, failed, retries atomic.Int64
}

// runPhase sends traffic at rate (0: as fast as possible) for dur, then
// waits until the sink has processed everything accepted.
func (r *runner) runPhase(ctx context.Context, name string, rate float64, dur time.Duration, profile bool) (Phase, error) {
	r.mu.Lock()
	r.phase = name
	r.mu.Unlock()
	if profile {
		r.pollEvery.Store(int64(250 * time.Millisecond))
	} else {
		r.pollEvery.Store(int64(100 * time.Millisecond))
	}
	if rate > 0 {
		r.progressf("phase %q: %s at %.0f events/s\n", name, dur, rate)
	} else {
		r.progressf("phase %q: %s as fast as the pipeline takes them\n", name, dur)
	}
	cpu0 := r.cpuNow()
	proc0, _ := r.processed(ctx)
	ph := Phase{Name: name, TargetRate: rate}
	var pc phaseCounters
	start := time.Now()
	end := start.Add(dur)
	if profile && r.cfg.ProfileDir != "" && r.collector != nil {
		go r.profile(ctx, dur)
	}
	var wg sync.WaitGroup
	errc := make(chan error, r.cfg.Connections)
	for w := 0; w < r.cfg.Connections; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.sender(ctx, w, rate, start, end, &pc); err != nil {
				errc <- err
			}
		}()
	}
	wg.Wait()
	sendEnd := time.Now()
	select {
	case err := <-errc:
		return ph, err
	default:
	}
	if ctx.Err() != nil {
		return ph, ctx.Err()
	}
	// Drain: everything accepted so far (probes too) must be processed.
	want := float64(r.accepted.Load())
	timeout := max(2*time.Minute, 4*dur)
	deadline := time.Now().Add(timeout)
	ph.Drained = true
	for {
		p, err := r.processed(ctx)
		if err == nil && p-r.processed0 >= want {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			ph.Drained = false
			r.res.Notes = append(r.res.Notes, fmt.Sprintf("phase %q: the sink had not stored every accepted event %s after sending stopped", name, timeout))
			break
		}
		if r.collector != nil && (!r.collector.alive() || !r.storage.alive()) {
			return ph, fmt.Errorf("a pipeline process exited:\ncollector:\n%s\nsink:\n%s", r.collector.logTail(15), r.storage.logTail(15))
		}
		time.Sleep(100 * time.Millisecond)
	}
	done := time.Now()
	r.mu.Lock()
	r.phase = ""
	r.mu.Unlock()
	ph.SendSeconds = sendEnd.Sub(start).Seconds()
	ph.DrainSeconds = done.Sub(sendEnd).Seconds()
	ph.Sent, ph.Accepted, ph.Duplicates, ph.Late = pc.sent.Load(), pc.accepted.Load(), pc.dups.Load(), pc.late.Load()
	ph.FailedBatch, ph.Retries = pc.failed.Load(), pc.retries.Load()
	ph.AcceptRate = float64(ph.Accepted) / ph.SendSeconds
	ph.Rate = float64(ph.Accepted) / done.Sub(start).Seconds()
	cpu1 := r.cpuNow()
	proc1, _ := r.processed(ctx)
	if len(cpu0) > 0 && ph.Accepted > 0 {
		ph.CPUPerMillion = map[string]float64{}
		for k, v := range cpu1 {
			// The sink's cost is per event it processed: when the phase
			// did not drain, that is fewer than were accepted.
			n := float64(ph.Accepted)
			if k == "sink" && proc1 > proc0 {
				n = proc1 - proc0
			}
			ph.CPUPerMillion[k] = (v - cpu0[k]) / n * 1e6
		}
	}
	r.mu.Lock()
	for _, s := range r.samples {
		if s.Phase == name && s.Lag > ph.MaxLag {
			ph.MaxLag = s.Lag
		}
	}
	r.mu.Unlock()
	r.progressf("\nphase %q: %d events accepted in %.1fs (%.0f/s), all stored %.1fs later: %.0f events/s sustained\n",
		name, ph.Accepted, ph.SendSeconds, ph.AcceptRate, ph.DrainSeconds, ph.Rate)
	return ph, nil
}

// sender sends batches until end. With a rate, batch n of the phase (over
// all senders) is due at start + n*batch/rate.
func (r *runner) sender(ctx context.Context, w int, rate float64, start, end time.Time, pc *phaseCounters) error {
	g := r.gens[w]
	n := r.cfg.BatchEvents
	buf := make([]byte, 0, n*700)
	msgs := make([]kafka.Message, n)
	for ctx.Err() == nil {
		seq := pc.seq.Add(1) - 1
		if rate > 0 {
			due := start.Add(time.Duration(float64(seq) * float64(n) / rate * float64(time.Second)))
			if !due.Before(end) {
				return nil
			}
			if d := time.Until(due); d > 0 {
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(d):
				}
			}
		} else if !time.Now().Before(end) {
			return nil
		}
		d0, l0 := g.Dups, g.Late
		now := time.Now()
		var dups int
		var ok bool
		var retries int
		if r.cfg.Mode == ModeKafka {
			buf = buf[:0]
			for i := range msgs {
				s := len(buf)
				var key string
				var dup bool
				buf, key, dup = g.Append(buf, now)
				msgs[i] = kafka.Message{Key: []byte(key), Value: buf[s:len(buf):len(buf)]}
				if dup {
					dups++
				}
			}
			ok, retries = r.produce(ctx, msgs)
		} else {
			buf, dups = g.AppendBatch(buf[:0], n, now)
			ok, retries = r.post(ctx, buf, n)
		}
		late := g.Late - l0
		_ = d0
		pc.sent.Add(int64(n))
		r.sent.Add(int64(n))
		pc.dups.Add(int64(dups))
		r.dups.Add(int64(dups))
		pc.late.Add(late)
		r.late.Add(late)
		pc.retries.Add(int64(retries))
		if ok {
			pc.accepted.Add(int64(n))
			r.accepted.Add(int64(n))
			r.distinctAccepted.Add(int64(n - dups))
		} else {
			pc.failed.Add(1)
			r.failed.Add(1)
		}
	}
	return nil
}

// post sends one batch, retrying 503s and transport errors as a gateway
// would (the retried events are stored once).
func (r *runner) post(ctx context.Context, body []byte, n int) (ok bool, retries int) {
	for attempt := 0; attempt < 10 && ctx.Err() == nil; attempt++ {
		if attempt > 0 {
			retries++
			time.Sleep(200 * time.Millisecond)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.ingestURL, bytes.NewReader(body))
		if err != nil {
			return false, retries
		}
		req.Header.Set("Authorization", "Bearer "+r.ingestToken)
		req.Header.Set("Content-Type", "application/json")
		resp, err := r.client.Do(req)
		if err != nil {
			continue
		}
		var ans struct {
			Accepted int `json:"accepted"`
		}
		derr := json.NewDecoder(resp.Body).Decode(&ans)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusAccepted && derr == nil && ans.Accepted == n:
			return true, retries
		case resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusTooManyRequests:
			continue
		default:
			r.note(fmt.Sprintf("collector answered %d (accepted %d of %d)", resp.StatusCode, ans.Accepted, n))
			return false, retries
		}
	}
	return false, retries
}

func (r *runner) produce(ctx context.Context, msgs []kafka.Message) (ok bool, retries int) {
	for attempt := 0; attempt < 10 && ctx.Err() == nil; attempt++ {
		if attempt > 0 {
			retries++
			time.Sleep(200 * time.Millisecond)
		}
		if err := r.writer.WriteMessages(ctx, msgs...); err == nil {
			return true, retries
		}
	}
	return false, retries
}

var noteOnce sync.Map

// note adds a note once per distinct text.
func (r *runner) note(s string) {
	if _, dup := noteOnce.LoadOrStore(r.runID+s, true); dup {
		return
	}
	r.mu.Lock()
	r.res.Notes = append(r.res.Notes, s)
	r.mu.Unlock()
}

// cpuNow returns each child's CPU seconds so far (and the bench's own).
func (r *runner) cpuNow() map[string]float64 {
	out := map[string]float64{}
	if r.collector == nil {
		return out
	}
	for _, c := range []*child{r.collector, r.storage} {
		if st, err := readProc(c.pid()); err == nil {
			out[c.name] = st.CPUSeconds
		}
	}
	if st, err := readProc(os.Getpid()); err == nil {
		out["bench"] = st.CPUSeconds
	}
	return out
}

// sampler records a sample every second and prints the progress line.
func (r *runner) sampler(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	r.t0 = time.Now()
	var prev Sample
	for {
		select {
		case <-ctx.Done():
			r.progressf("\n")
			return
		case <-tick.C:
		}
		s := r.sample(ctx)
		r.mu.Lock()
		r.samples = append(r.samples, s)
		r.res.Samples = r.samples
		r.mu.Unlock()
		dt := s.T - prev.T
		if dt <= 0 {
			dt = 1
		}
		line := fmt.Sprintf("%5.0fs %-14s sent %s  accepted %s  stored %s  lag %s  in %s/s  stored %s/s",
			s.T, s.Phase, si(float64(s.Sent)), si(float64(s.Accepted)), si(float64(s.Processed)), si(float64(s.Lag)),
			si(float64(s.Accepted-prev.Accepted)/dt), si(float64(s.Processed-prev.Processed)/dt))
		if c, ok := s.CPU["collector"]; ok {
			line += fmt.Sprintf("  cpu col %.0f%% sink %.0f%%", (c-prev.CPU["collector"])/dt*100, (s.CPU["sink"]-prev.CPU["sink"])/dt*100)
		}
		if term.IsTerminal(r.cfg.Progress) {
			r.progressf("\r%-150s", line)
		} else if len(r.samples)%5 == 0 {
			r.progressf("%s\n", line)
		}
		prev = s
	}
}

func (r *runner) sample(ctx context.Context) Sample {
	r.mu.Lock()
	phase := r.phase
	r.mu.Unlock()
	s := Sample{T: time.Since(r.t0).Seconds(), Phase: phase, Sent: r.sent.Load(), Accepted: r.accepted.Load()}
	mctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if m, err := scrape(mctx, r.client, r.storageMetricsURL()); err == nil {
		s.Processed = int64(m["meterline_sink_events_stored_total"] + m["meterline_sink_duplicates_dropped_total"] + m["meterline_sink_duplicates_stored_total"] +
			m["meterline_sink_events_dead_lettered_total"] + m["meterline_sink_erased_events_dropped_total"] - r.processed0)
		s.GoSys = int64(m["go_memstats_sys_bytes"])
		s.Lag = int64(m["meterline_sink_consumer_lag_messages"])
		r.trackPeak("sink", s.GoSys)
	}
	if u, ok := r.metricsURLs["collector"]; ok {
		if m, err := scrape(mctx, r.client, u); err == nil {
			r.trackPeak("collector", int64(m["go_memstats_sys_bytes"]))
		}
	}
	if lag, err := groupLag(mctx, r.kcfg, r.group()); err == nil {
		s.Lag = lag
	}
	if r.collector != nil {
		s.CPU = map[string]float64{}
		s.RSS = map[string]int64{}
		for _, c := range []*child{r.collector, r.storage} {
			if st, err := readProc(c.pid()); err == nil {
				s.CPU[c.name] = st.CPUSeconds
				s.RSS[c.name] = st.RSSBytes
				r.mu.Lock()
				r.lastCPU[c.name] = st.CPUSeconds
				r.lastHWM[c.name] = st.HWMBytes
				r.mu.Unlock()
			}
		}
		if st, err := readProc(os.Getpid()); err == nil {
			s.CPU["bench"] = st.CPUSeconds
		}
	}
	return s
}

func (r *runner) group() string {
	if r.cfg.Target != "" {
		return r.cfg.Group
	}
	return r.kcfg.Topic + "-sink"
}

func (r *runner) trackPeak(name string, v int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if v > r.peakSys[name] {
		r.peakSys[name] = v
	}
}

// collectProcs records each child's totals, before the children stop.
func (r *runner) collectProcs() {
	if r.collector == nil {
		return
	}
	for _, c := range []*child{r.collector, r.storage} {
		st, err := readProc(c.pid())
		r.mu.Lock()
		if err == nil {
			r.lastCPU[c.name], r.lastHWM[c.name] = st.CPUSeconds, st.HWMBytes
		}
		p := Proc{Name: c.name, CPUSeconds: r.lastCPU[c.name], PeakRSS: r.lastHWM[c.name], PeakGoSys: r.peakSys[c.name]}
		r.mu.Unlock()
		p.Roles = "collector"
		if c == r.storage {
			p.Roles = "sink,query"
			if r.cfg.Aggregator {
				p.Roles = "sink,aggregator,query"
			}
			p.EngineShare = max(p.PeakRSS-p.PeakGoSys, 0)
		}
		r.res.Procs = append(r.res.Procs, p)
	}
}

// groupLag is the events not yet committed by group: end offsets minus
// committed offsets, over the topic's partitions.
func groupLag(ctx context.Context, k ingest.KafkaConfig, group string) (int64, error) {
	tr, err := k.Transport()
	if err != nil {
		return 0, err
	}
	defer tr.CloseIdleConnections()
	c := &kafka.Client{Addr: kafka.TCP(k.Brokers...), Transport: tr, Timeout: 3 * time.Second}
	md, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{k.Topic}})
	if err != nil {
		return 0, err
	}
	if len(md.Topics) != 1 || md.Topics[0].Error != nil {
		return 0, fmt.Errorf("topic %s not found", k.Topic)
	}
	var parts []int
	var reqs []kafka.OffsetRequest
	for _, p := range md.Topics[0].Partitions {
		parts = append(parts, p.ID)
		reqs = append(reqs, kafka.LastOffsetOf(p.ID))
	}
	ends, err := c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{k.Topic: reqs}})
	if err != nil {
		return 0, err
	}
	committed, err := c.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{k.Topic: parts}})
	if err != nil {
		return 0, err
	}
	if committed.Error != nil {
		return 0, committed.Error
	}
	done := map[int]int64{}
	for _, p := range committed.Topics[k.Topic] {
		done[p.Partition] = max(p.CommittedOffset, 0)
	}
	var lag int64
	for _, p := range ends.Topics[k.Topic] {
		if p.Error != nil {
			return 0, p.Error
		}
		lag += max(p.LastOffset-done[p.Partition], 0)
	}
	return lag, nil
}

// prober sends one probe event every 250 ms, one at a time, and polls
// GET /v1/usage for the probe customer (every pollEvery): a probe's latency
// is from its send until the usage count includes it.
func (r *runner) prober(ctx context.Context) {
	cust := r.cfg.Traffic.Prefix + "-probe"
	key := r.cfg.Traffic.Prefix + "-probe-key"
	from := time.Now().Add(-time.Hour).UTC().Truncate(time.Hour)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.pollProbes(ctx, cust, from)
	}()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-tick.C:
		}
		r.mu.Lock()
		phase := r.phase
		r.mu.Unlock()
		if phase == "" {
			continue
		}
		now := time.Now()
		ev := fmt.Appendf(nil, `{"id":"%s-probe-%d","time":"%s","api_key_id":"%s","customer_id":"%s","method":"GET","route":"/probe","status":200,"latency_ms":1}`,
			r.cfg.Traffic.Prefix, i, now.UTC().Format("2006-01-02T15:04:05.000Z"), key, cust)
		var ok bool
		if r.cfg.Mode == ModeKafka {
			ok, _ = r.produce(ctx, []kafka.Message{{Key: []byte(key), Value: ev}})
		} else {
			body := append(append([]byte{'['}, ev...), ']')
			ok, _ = r.post(ctx, body, 1)
		}
		if !ok {
			continue
		}
		r.accepted.Add(1)
		r.probeMu.Lock()
		r.probes = append(r.probes, probe{phase: phase, sent: now, lat: -1})
		r.probeMu.Unlock()
	}
}

func (r *runner) pollProbes(ctx context.Context, cust string, from time.Time) {
	q := url.Values{"customer_id": {cust}, "from": {from.Format(time.RFC3339)}, "window": {"hour"}}
	u := r.queryURL + "/v1/usage?" + q.Encode()
	for {
		every := time.Duration(r.pollEvery.Load())
		if every <= 0 {
			every = 100 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
		n, err := r.usageCount(ctx, u)
		if err != nil {
			continue
		}
		now := time.Now()
		r.probeMu.Lock()
		for i := 0; i < len(r.probes) && int64(i) < n; i++ {
			if r.probes[i].lat < 0 {
				r.probes[i].lat = now.Sub(r.probes[i].sent).Seconds()
			}
		}
		r.probeMu.Unlock()
	}
}

func (r *runner) usageCount(ctx context.Context, u string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+r.adminToken)
	resp, err := r.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		r.note(fmt.Sprintf("GET /v1/usage answered %d: %s", resp.StatusCode, strings.TrimSpace(string(b))))
		return 0, errors.New(resp.Status)
	}
	var ans struct {
		Rows []struct {
			Requests int64 `json:"requests"`
		} `json:"rows"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&ans); err != nil {
		return 0, err
	}
	var n int64
	for _, row := range ans.Rows {
		n += row.Requests
	}
	return n, nil
}

// waitProbes waits until every probe sent was counted, or timeout.
func (r *runner) waitProbes(ctx context.Context, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		r.probeMu.Lock()
		pending := 0
		for _, p := range r.probes {
			if p.lat < 0 {
				pending++
			}
		}
		r.probeMu.Unlock()
		if pending == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (r *runner) latency(phase string) Latency {
	r.probeMu.Lock()
	defer r.probeMu.Unlock()
	var l Latency
	var lats []float64
	for _, p := range r.probes {
		if p.phase != phase {
			continue
		}
		l.Probes++
		if p.lat < 0 {
			l.Lost++
			continue
		}
		lats = append(lats, p.lat)
	}
	if len(lats) == 0 {
		return l
	}
	slices.Sort(lats)
	q := func(p float64) float64 { return lats[min(len(lats)-1, int(p*float64(len(lats))))] }
	l.P50, l.P90, l.P99, l.Max = q(0.5), q(0.9), q(0.99), lats[len(lats)-1]
	return l
}

// profile takes CPU and allocation profiles of both children in the middle
// of the throughput phase.
func (r *runner) profile(ctx context.Context, dur time.Duration) {
	if err := os.MkdirAll(r.cfg.ProfileDir, 0o755); err != nil {
		r.note("profiles: " + err.Error())
		return
	}
	secs := int(min(30, max(2, dur.Seconds()/2)))
	select {
	case <-ctx.Done():
		return
	case <-time.After(dur / 4):
	}
	var wg sync.WaitGroup
	for _, c := range []*child{r.collector, r.storage} {
		for _, kind := range []string{"profile", "allocs"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				name := "cpu"
				if kind == "allocs" {
					name = "allocs"
				}
				path := filepath.Join(r.cfg.ProfileDir, c.name+"."+name+".pprof")
				u := fmt.Sprintf("http://%s/debug/pprof/%s?seconds=%d", c.pprofAddr, kind, secs)
				if err := fetch(ctx, u, path); err != nil {
					r.note("profile " + path + ": " + err.Error())
				}
			}()
		}
	}
	wg.Wait()
	r.progressf("\nprofiles (%ds, from %s into the run) written to %s\n", secs, dur/4, r.cfg.ProfileDir)
}

func (r *runner) progressf(format string, args ...any) {
	if r.cfg.Progress != nil {
		fmt.Fprintf(r.cfg.Progress, format, args...)
	}
}

// si formats n with a k/M suffix.
func si(n float64) string {
	switch {
	case n >= 1e6 || n <= -1e6:
		return fmt.Sprintf("%.2fM", n/1e6)
	case n >= 1e4 || n <= -1e4:
		return fmt.Sprintf("%.0fk", n/1e3)
	case n >= 1e3 || n <= -1e3:
		return fmt.Sprintf("%.1fk", n/1e3)
	}
	return fmt.Sprintf("%.0f", n)
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err == nil {
			m.MemBytes = kb << 10
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}
