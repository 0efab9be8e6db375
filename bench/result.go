package bench

import "time"

// Result is everything one run measured; it is what bench.json holds.
type Result struct {
	Started  time.Time `json:"started"`
	Command  string    `json:"command"`
	Machine  Machine   `json:"machine"`
	Config   RunConfig `json:"config"`
	Phases   []Phase   `json:"phases"`
	Baseline Baseline  `json:"baseline"`
	// Ratio is the throughput phase's sustained rate divided by
	// min(raw consume, raw insert); 0 when a baseline is missing.
	Ratio float64 `json:"ratio_to_baseline"`
	// Limit names the slower baseline ("kafka consume" or "engine insert").
	Limit string   `json:"limiting_baseline"`
	Check Check    `json:"stored_check"`
	Procs []Proc   `json:"processes"`
	Notes []string `json:"notes,omitempty"`
	// Samples are taken once a second over the whole run.
	Samples []Sample `json:"samples"`
}

// Machine describes where the run happened.
type Machine struct {
	CPUs     int    `json:"cpus"`
	MemBytes int64  `json:"mem_bytes"`
	CPUModel string `json:"cpu_model"`
	Kernel   string `json:"kernel"`
	Go       string `json:"go"`
	Version  string `json:"meterline_version"`
}

// RunConfig is the part of Config a reader of the results needs.
type RunConfig struct {
	Mode            string  `json:"mode"`
	Target          string  `json:"target,omitempty"`
	DurationSeconds float64 `json:"duration_seconds"`
	Rate            float64 `json:"rate"`
	Connections     int     `json:"connections"`
	BatchEvents     int     `json:"batch_events"`
	Partitions      int     `json:"partitions"`
	Customers       int     `json:"customers"`
	KeysPerCustomer int     `json:"keys_per_customer"`
	ErrorRate       float64 `json:"error_rate"`
	DupRate         float64 `json:"dup_rate"`
	LateRate        float64 `json:"late_rate"`
	LatenessSeconds float64 `json:"lateness_seconds"`
	Aggregator      bool    `json:"aggregator"`
	BaselineEvents  int     `json:"baseline_events"`
}

// Phase is one traffic phase: the throughput phase (as fast as possible or
// at --rate) and the optional latency phase.
type Phase struct {
	Name       string  `json:"name"`
	TargetRate float64 `json:"target_rate"` // 0: as fast as possible
	// SendSeconds is how long traffic was sent; DrainSeconds how long the
	// pipeline then took to store what was accepted.
	SendSeconds  float64 `json:"send_seconds"`
	DrainSeconds float64 `json:"drain_seconds"`
	Sent         int64   `json:"events_sent"`
	Accepted     int64   `json:"events_accepted"`
	Duplicates   int64   `json:"duplicates_sent"`
	Late         int64   `json:"late_sent"`
	FailedBatch  int64   `json:"failed_batches"`
	Retries      int64   `json:"retried_batches"`
	// AcceptRate is accepted events per second of sending.
	AcceptRate float64 `json:"accept_rate"`
	// Rate is the sustained rate from acceptance to stored row: events
	// accepted divided by the time from the first send until the last of
	// them was stored (sending plus draining).
	Rate float64 `json:"sustained_rate"`
	// Drained is false when the pipeline did not store everything within
	// the drain timeout.
	Drained bool `json:"drained"`
	// Latency is from POST (or produce) of a probe event until GET
	// /v1/usage counts it.
	Latency Latency `json:"queryable_latency"`
	// CPU seconds per million accepted events, per process.
	CPUPerMillion map[string]float64 `json:"cpu_seconds_per_million_events"`
	MaxLag        int64              `json:"max_lag_messages"`
}

// Latency summarises probe latencies.
type Latency struct {
	Probes int     `json:"probes"`
	P50    float64 `json:"p50_seconds"`
	P90    float64 `json:"p90_seconds"`
	P99    float64 `json:"p99_seconds"`
	Max    float64 `json:"max_seconds"`
	Lost   int     `json:"not_counted"`
}

// Baseline holds the raw rates of the parts underneath, measured in the
// same run on the same events.
type Baseline struct {
	Events        int     `json:"events"`
	KafkaProduce  float64 `json:"kafka_produce_rate"`
	KafkaConsume  float64 `json:"kafka_consume_rate"`
	Insert        float64 `json:"insert_rate"`
	InsertSeconds float64 `json:"insert_seconds"`
	Error         string  `json:"error,omitempty"`
}

// Check compares the stored rows with what was sent.
type Check struct {
	Done           bool   `json:"done"`
	DistinctSent   int64  `json:"distinct_ids_accepted"`
	StoredDistinct int64  `json:"stored_distinct_ids"`
	StoredRows     int64  `json:"stored_rows_final"`
	OK             bool   `json:"ok"`
	Note           string `json:"note,omitempty"`
}

// Proc is one child process's totals.
type Proc struct {
	Name       string  `json:"name"`
	Roles      string  `json:"roles"`
	CPUSeconds float64 `json:"cpu_seconds"`
	PeakRSS    int64   `json:"peak_rss_bytes"`
	// PeakGoSys is the peak of go_memstats_sys_bytes: memory the Go runtime
	// holds. In the sink process the rest of the RSS is the embedded engine's.
	PeakGoSys int64 `json:"peak_go_sys_bytes"`
	// EngineShare is PeakRSS minus PeakGoSys for the process holding the
	// embedded engine (0 elsewhere).
	EngineShare int64 `json:"engine_share_bytes"`
}

// Sample is the state of the run at one instant.
type Sample struct {
	T         float64            `json:"t"` // seconds since the run started
	Phase     string             `json:"phase"`
	Sent      int64              `json:"sent"`
	Accepted  int64              `json:"accepted"`
	Processed int64              `json:"processed"` // stored + in-batch duplicates + dead letters
	Lag       int64              `json:"lag"`
	CPU       map[string]float64 `json:"cpu_seconds,omitempty"`
	RSS       map[string]int64   `json:"rss_bytes,omitempty"`
	GoSys     int64              `json:"sink_go_sys_bytes,omitempty"`
}
