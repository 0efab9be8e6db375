package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meterline/meterline/ingest"
	"github.com/meterline/meterline/internal/testenv"
)

// TestCollectorStopsGracefully: SIGTERM while gateways post batches. The
// requests being handled are answered (202 only after Kafka acknowledged
// them), the process exits 0, and the topic holds at least every
// acknowledged event: exactly those when no request answered 503 or lost
// its connection. A connection still in the listener's accept queue when
// the stop closes it is reset by the kernel (the client sees a refused
// connection, a reset or a broken pipe, never a 202): the gateway retries
// it, as it would any unanswered batch.
func TestCollectorStopsGracefully(t *testing.T) {
	brokers := testenv.KafkaBrokers(t)
	topic := testenv.Unique("shutdown")
	cfgPath, addr := writeConfig(t, strings.Join(brokers, ","), topic, "")
	p, _ := start(t, cfgPath, addr, "--roles=collector")

	var accepted, ok202, unavailable, dropped atomic.Int64
	var odd []error
	var mu sync.Mutex
	var wg sync.WaitGroup
	var sent atomic.Int64
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			for b := 0; ; b++ {
				evs := make([]map[string]any, 500)
				for i := range evs {
					evs[i] = event(fmt.Sprintf("g%d-b%d-%d", g, b, i), fmt.Sprintf("key-%d", i%7))
				}
				body, _ := json.Marshal(evs)
				req, _ := http.NewRequest("POST", "http://"+addr+"/v1/events", bytes.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+e2eIngestToken)
				req.Header.Set("Content-Type", "application/json")
				sent.Add(1)
				resp, err := client.Do(req)
				if err != nil {
					if !errors.Is(err, syscall.ECONNREFUSED) {
						dropped.Add(1) // reset in the accept queue: unanswered, retried by a gateway
					}
					return // the server is gone
				}
				var res struct{ Accepted int64 }
				_ = json.NewDecoder(resp.Body).Decode(&res)
				resp.Body.Close()
				switch resp.StatusCode {
				case http.StatusAccepted:
					ok202.Add(1)
					accepted.Add(res.Accepted)
				case http.StatusServiceUnavailable:
					unavailable.Add(1)
				default:
					mu.Lock()
					odd = append(odd, fmt.Errorf("status %d", resp.StatusCode))
					mu.Unlock()
					return
				}
			}
		}()
	}
	testenv.Eventually(t, time.Minute, func() error {
		if n := ok202.Load(); n < 8 {
			return fmt.Errorf("%d batches acknowledged so far", n)
		}
		return nil
	})
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(60 * time.Second):
		t.Fatal("serve did not stop within 60 s of SIGTERM")
	}
	wg.Wait()
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("serve exited with %d after SIGTERM", code)
	}
	if len(odd) > 0 {
		t.Fatalf("answers other than 202 and 503 during the stop: %v", odd)
	}
	c := testenv.KafkaClient(brokers)
	lag, err := ingest.GroupLag(context.Background(), c, testenv.Unique("nobody"), topic) // a group that never committed: every message
	if err != nil {
		t.Fatal(err)
	}
	inTopic := ingest.TotalLag(lag)
	t.Logf("%d requests, %d answered 202 (%d events), %d answered 503, %d lost their connection; %d messages in the topic",
		sent.Load(), ok202.Load(), accepted.Load(), unavailable.Load(), dropped.Load(), inTopic)
	if inTopic < accepted.Load() || (unavailable.Load() == 0 && dropped.Load() == 0 && inTopic != accepted.Load()) {
		t.Fatalf("%d messages in the topic for %d acknowledged events (%d answers 503)", inTopic, accepted.Load(), unavailable.Load())
	}
}

// TestDrainDelay: with http.drain_delay, a SIGTERM first turns /readyz to
// 503 while events are still accepted, and the process exits 0 once the
// delay is over.
func TestDrainDelay(t *testing.T) {
	brokers := testenv.KafkaBrokers(t)
	topic := testenv.Unique("drain")
	cfgPath, addr := writeConfig(t, strings.Join(brokers, ","), topic, "")
	t.Setenv("METERLINE_HTTP_DRAIN_DELAY", "3s") // http.drain_delay, through the environment
	p, _ := start(t, cfgPath, addr, "--roles=collector")
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return resp.StatusCode, b.String()
	}
	testenv.Eventually(t, time.Minute, func() error {
		if code, body := get("/readyz"); code != 200 {
			return fmt.Errorf("/readyz %d %s", code, body)
		}
		return nil
	})
	signalled := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 2*time.Second, func() error {
		if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "stopping") {
			return fmt.Errorf("/readyz %d %q while draining, want 503 naming the stop", code, body)
		}
		return nil
	})
	postEvents(t, addr, []map[string]any{event(testenv.Unique("drained"), "key-drain")}) // still 202
	select {
	case <-p.exited:
	case <-time.After(60 * time.Second):
		t.Fatal("serve did not stop after the drain delay")
	}
	if took := time.Since(signalled); took < 3*time.Second {
		t.Fatalf("serve stopped %s after SIGTERM, before the 3 s drain delay", took)
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}
