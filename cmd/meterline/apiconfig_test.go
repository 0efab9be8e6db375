package main

import (
	"strings"
	"testing"
	"time"
)

// TestAPIReadSettings: the api section has its defaults, is set from the
// file and the environment (token_rate is a number with a fraction), and
// reaches the store's interactive-read configuration.
func TestAPIReadSettings(t *testing.T) {
	c, err := loadConfig("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.API.MaxExecutionTime != 10*time.Second || c.API.TokenConcurrency != 2 || c.API.TokenRate != 5 || c.API.TokenBurst != 20 ||
		c.API.Conns != 4 || c.API.QueueTimeout != 5*time.Second || c.API.MaxMemoryBytes != 1<<30 || c.API.MaxThreads != 2 || c.API.MaxRowsToRead != 0 {
		t.Fatalf("api defaults: %+v", c.API)
	}
	p := writeFile(t, "api:\n  max_execution_time: 3s\n  conns: 3\n")
	c, err = loadConfig(p, []string{"METERLINE_API_TOKEN_RATE=2.5", "METERLINE_API_MAX_ROWS_TO_READ=1000000"})
	if err != nil {
		t.Fatal(err)
	}
	if c.API.MaxExecutionTime != 3*time.Second || c.API.Conns != 3 || c.API.TokenRate != 2.5 || c.API.MaxRowsToRead != 1000000 {
		t.Fatalf("api from file and environment: %+v", c.API)
	}
	sc, err := storeConfig(c)
	if err != nil {
		t.Fatal(err)
	}
	if sc.Interactive.Conns != 3 || sc.Interactive.MaxExecutionTime != 3*time.Second || sc.Interactive.MaxRowsToRead != 1000000 || sc.Interactive.MaxThreads != 2 {
		t.Fatalf("store interactive config: %+v", sc.Interactive)
	}
	if _, err := loadConfig("", []string{"METERLINE_API_TOKEN_RATE=fast"}); err == nil || !strings.Contains(err.Error(), "METERLINE_API_TOKEN_RATE") {
		t.Fatalf("bad number: %v", err)
	}
	p = writeFile(t, "api:\n  token_concurrency: -1\n  max_execution_time: 1ms\n")
	c, err = loadConfig(p, nil)
	if err == nil {
		err = c.Validate()
	}
	if err == nil || !strings.Contains(err.Error(), "api.token_concurrency") || !strings.Contains(err.Error(), "api.max_execution_time") {
		t.Fatalf("bad api settings: %v", err)
	}
}
