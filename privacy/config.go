package privacy

import (
	"errors"
	"fmt"
	"time"
)

// Config configures erasures. Its settings sit in the privacy section of
// the configuration, beside the anonymisation settings.
type Config struct {
	// AccountDeletionDelay is how long after an account is marked deleted
	// its data is erased. Default 2160h (90 days).
	AccountDeletionDelay time.Duration `yaml:"account_deletion_delay"`
	// ErasureCheckInterval is how often due erasures (account deletions
	// past their delay, retries of failed ones) are looked for; requests
	// made through the API start at once. Default 24h (a daily job).
	ErasureCheckInterval time.Duration `yaml:"erasure_check_interval"`
	// ErasedRefresh is how often a sink reloads the erased customers. An
	// erasure double-checks the tables 2 × this after it starts. Default 5s.
	ErasedRefresh time.Duration `yaml:"erased_refresh"`
	// ErasureLog is the append-only file that keeps a copy of every
	// erasure request outside the database, so that a restore from a
	// backup re-applies the erasures recorded since (see ErasureLog).
	// It must lie outside the data directory. Default (set by the
	// command): erasures.jsonl beside the embedded engine's data
	// directory (.run/erasures.jsonl).
	ErasureLog string `yaml:"erasure_log"`
}

// WithDefaults fills unset fields.
func (c Config) WithDefaults() Config {
	if c.AccountDeletionDelay == 0 {
		c.AccountDeletionDelay = 90 * 24 * time.Hour
	}
	if c.ErasureCheckInterval == 0 {
		c.ErasureCheckInterval = 24 * time.Hour
	}
	if c.ErasedRefresh == 0 {
		c.ErasedRefresh = 5 * time.Second
	}
	return c
}

// Validate reports every invalid setting by its YAML path.
func (c Config) Validate() error {
	var errs []error
	if c.AccountDeletionDelay < 0 || c.AccountDeletionDelay > 10*366*24*time.Hour {
		errs = append(errs, fmt.Errorf("privacy.account_deletion_delay: %s is out of range 0-87840h", c.AccountDeletionDelay))
	}
	if c.ErasureCheckInterval < time.Second || c.ErasureCheckInterval > 7*24*time.Hour {
		errs = append(errs, fmt.Errorf("privacy.erasure_check_interval: %s is out of range 1s-168h", c.ErasureCheckInterval))
	}
	if c.ErasedRefresh < 10*time.Millisecond || c.ErasedRefresh > 10*time.Minute {
		errs = append(errs, fmt.Errorf("privacy.erased_refresh: %s is out of range 10ms-10m", c.ErasedRefresh))
	}
	return errors.Join(errs...)
}
