package aggregate

import (
	"errors"
	"fmt"
	"time"
)

// Config configures the Aggregator.
type Config struct {
	// Interval is the time between ticks. A late event is counted in the
	// rollups within about Interval + Settle. Default 10s.
	Interval time.Duration `yaml:"interval"`
	// Settle is how far behind now a tick's bound stays, so that a sink
	// insert stamped before the bound has landed when the tick reads.
	// Default 5s.
	Settle time.Duration `yaml:"settle"`
	// Overlap is how far before the last watermark each tick looks again:
	// harmless re-work that covers clock skew between the sink's and the
	// aggregator's machines and inserts slower than Settle. Default 2m.
	Overlap time.Duration `yaml:"overlap"`
}

// Defaults of Config.
const (
	DefaultInterval = 10 * time.Second
	DefaultSettle   = 5 * time.Second
	DefaultOverlap  = 2 * time.Minute
)

// WithDefaults fills unset (zero) fields with their defaults. A zero Settle
// or Overlap is replaced too; use a tiny positive value to mean "almost none".
func (c Config) WithDefaults() Config {
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.Settle == 0 {
		c.Settle = DefaultSettle
	}
	if c.Overlap == 0 {
		c.Overlap = DefaultOverlap
	}
	return c
}

// Validate reports every invalid setting, naming it by its YAML path.
func (c Config) Validate() error {
	var errs []error
	if c.Interval < 100*time.Millisecond || c.Interval > time.Hour {
		errs = append(errs, fmt.Errorf("aggregate.interval: %s is out of range 100ms-1h", c.Interval))
	}
	if c.Settle < 0 || c.Settle > 10*time.Minute {
		errs = append(errs, fmt.Errorf("aggregate.settle: %s is out of range 0-10m", c.Settle))
	}
	if c.Overlap < 0 || c.Overlap > 24*time.Hour {
		errs = append(errs, fmt.Errorf("aggregate.overlap: %s is out of range 0-24h", c.Overlap))
	}
	return errors.Join(errs...)
}
