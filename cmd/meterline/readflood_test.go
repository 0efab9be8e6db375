package main

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meterline/meterline/auth"
	"github.com/meterline/meterline/internal/testenv"
)

const (
	floodToken = "flood-dashboard"
	calmToken  = "calm-dashboard"
)

// TestReadFloodDoesNotSlowIngestion runs one serve (every role, default
// read limits) and, while events of two customers flow through the
// collector, Kafka and the sink, floods /v1/usage with eight parallel
// 400-day group_by queries from one customer's token. Every event posted
// during the flood is stored while the flood goes on, the flood is answered
// 429 for what goes over its token's limits, and the other customer's token
// is answered 200 every time meanwhile.
func TestReadFloodDoesNotSlowIngestion(t *testing.T) {
	testenv.Require(t, testenv.EnvChdb)
	brokers := testenv.KafkaBrokers(t)
	topic := testenv.Unique("flood")
	flood, calm := testenv.Unique("flood"), testenv.Unique("calm")
	dir := t.TempDir()
	catalogue := filepath.Join(dir, "catalogue.yaml")
	if err := os.WriteFile(catalogue, []byte(fmt.Sprintf(`plans:
  - {id: starter, included_units: 1000000, hard_limit: 2000000}
customers:
  - {id: %s, plan: starter, keys: [%s-key]}
  - {id: %s, plan: starter, keys: [%s-key]}
`, flood, flood, calm, calm)), 0o600); err != nil {
		t.Fatal(err)
	}
	// More tokens in the auth.tokens list, then the catalogue.
	extra := fmt.Sprintf(`    - name: flood-dash
      sha256: %s
      scopes: [customer:%s]
    - name: calm-dash
      sha256: %s
      scopes: [customer:%s]
limits:
  catalogue_file: %s
aggregate:
  interval: 1s
`, auth.Hash(floodToken), flood, auth.Hash(calmToken), calm, catalogue)
	cfgPath, addr := writeConfig(t, strings.Join(brokers, ","), topic, extra)
	_, logs := start(t, cfgPath, addr)
	// The sink has joined its group once an event is stored.
	postEvents(t, addr, customerEvents("warm", calm, 1))
	testenv.Eventually(t, 90*time.Second, func() error {
		n, err := metric(addr, "meterline_sink_events_stored_total")
		if err != nil || n < 1 {
			return fmt.Errorf("stored %v, %v", n, err)
		}
		return nil
	})

	usage := func(client *http.Client, token, customer string) (code int, body string, retryAfter time.Duration) {
		q := url.Values{}
		q.Set("customer_id", customer)
		// 400 days up to the server's now, the longest range allowed.
		q.Set("from", time.Now().Add(-400*24*time.Hour+10*time.Minute).UTC().Format(time.RFC3339))
		q.Set("window", "day")
		q.Set("group_by", "route,api_key_id,status_class,method,gateway")
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/v1/usage?"+q.Encode(), nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(req)
		if err != nil {
			return 0, err.Error(), 0
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode == http.StatusTooManyRequests {
			secs, err := strconv.Atoi(resp.Header.Get("Retry-After"))
			if err != nil || secs < 1 {
				return 0, "429 without a valid Retry-After: " + resp.Header.Get("Retry-After"), 0
			}
			retryAfter = time.Duration(secs) * time.Second
		}
		return resp.StatusCode, string(b), retryAfter
	}

	// The flood: eight workers, each sending its next query as soon as the
	// last is answered, until the events are stored. A refused worker
	// retries as soon as one of the flood's admitted queries finishes (or
	// after Retry-After if none does first), so the token stays at its
	// limit without spinning on refusals.
	stop := make(chan struct{})
	var finishedMu sync.Mutex
	finished := make(chan struct{}) // closed and replaced when a flood query is answered 200
	nextFinish := func() <-chan struct{} {
		finishedMu.Lock()
		defer finishedMu.Unlock()
		return finished
	}
	announce := func() {
		finishedMu.Lock()
		close(finished)
		finished = make(chan struct{})
		finishedMu.Unlock()
	}
	var flood200, flood429, floodOther atomic.Int64
	var oddMu sync.Mutex
	var odd []string
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 2 * time.Minute}
			for {
				select {
				case <-stop:
					return
				default:
				}
				next := nextFinish()
				switch code, body, retryAfter := usage(client, floodToken, flood); code {
				case http.StatusOK:
					flood200.Add(1)
					announce()
				case http.StatusTooManyRequests:
					flood429.Add(1)
					t := time.NewTimer(retryAfter)
					select {
					case <-next:
					case <-t.C:
					case <-stop:
					}
					t.Stop()
				default:
					floodOther.Add(1)
					oddMu.Lock()
					if len(odd) < 5 {
						odd = append(odd, fmt.Sprintf("%d %s", code, strings.TrimSpace(body)))
					}
					oddMu.Unlock()
				}
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	// Wait for the flood to be refused at least once before measuring, so
	// that the events below flow while the token is at its limit.
	testenv.Eventually(t, 60*time.Second, func() error {
		if flood429.Load() == 0 {
			return fmt.Errorf("no 429 yet (%d answered 200, %d other: %v)", flood200.Load(), floodOther.Load(), odd)
		}
		return nil
	})

	// Events flow during the flood; the other customer reads after each batch.
	base, err := metric(addr, "meterline_sink_events_stored_total")
	if err != nil {
		t.Fatal(err)
	}
	insertSum, _ := metric(addr, "meterline_sink_insert_duration_seconds_sum")
	insertCount, _ := metric(addr, "meterline_sink_insert_duration_seconds_count")
	const batches, perBatch = 20, 100
	calmClient := &http.Client{Timeout: 2 * time.Minute}
	began := time.Now()
	for b := range batches {
		evs := customerEvents(fmt.Sprintf("f%d", b), flood, perBatch/2)
		evs = append(evs, customerEvents(fmt.Sprintf("c%d", b), calm, perBatch/2)...)
		postEvents(t, addr, evs)
		if code, body, _ := usage(calmClient, calmToken, calm); code != http.StatusOK {
			t.Errorf("the other customer's read during the flood: %d %s", code, body)
		}
	}
	posted := float64(batches * perBatch)
	// Stored while the flood goes on: the flood stops only after this.
	testenv.Eventually(t, 2*time.Minute, func() error {
		n, err := metric(addr, "meterline_sink_events_stored_total")
		if err != nil {
			return err
		}
		if n-base < posted {
			return fmt.Errorf("%v of %v events posted during the flood stored", n-base, posted)
		}
		return nil
	})
	// Measured, not asserted: the sink's mean insert time during the flood.
	sum, _ := metric(addr, "meterline_sink_insert_duration_seconds_sum")
	n, _ := metric(addr, "meterline_sink_insert_duration_seconds_count")
	mean := "n/a"
	if n > insertCount {
		mean = (time.Duration((sum - insertSum) / (n - insertCount) * float64(time.Second))).Round(time.Millisecond).String()
	}
	t.Logf("flood: %d answered 200, %d answered 429, %d other; %v events posted and stored in %s; %v sink inserts, mean %s",
		flood200.Load(), flood429.Load(), floodOther.Load(), posted, time.Since(began).Round(time.Millisecond), n-insertCount, mean)
	if flood200.Load() == 0 {
		t.Error("the flooding token was never answered: limited, it must still be served")
	}
	if floodOther.Load() > 0 {
		t.Errorf("%d flood answers neither 200 nor 429, e.g. %v", floodOther.Load(), odd)
	}
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("errors logged during the flood")
	}
}
