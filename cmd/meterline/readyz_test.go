package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meterline/meterline/internal/testenv"
)

// countingRelay is a TCP relay in front of a real broker that counts the
// connections made through it (a network element, not a Kafka stand-in:
// every byte goes to and from the real broker).
type countingRelay struct {
	ln       net.Listener
	accepted atomic.Int64
	wg       sync.WaitGroup
}

func newCountingRelay(t *testing.T, target string) *countingRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &countingRelay{ln: ln}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.accepted.Add(1)
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, up)
			mu.Unlock()
			r.wg.Add(2)
			go func() { defer r.wg.Done(); _, _ = io.Copy(up, c); up.Close() }()
			go func() { defer r.wg.Done(); _, _ = io.Copy(c, up); c.Close() }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		r.wg.Wait()
	})
	return r
}

// TestReadyzOpensNoKafkaConnectionPerCall calls /readyz of a collector many
// times and counts the connections to the bootstrap broker (a relay in
// front of the real one): the readiness answer comes from a background
// check over pooled connections, so the calls add none.
func TestReadyzOpensNoKafkaConnectionPerCall(t *testing.T) {
	brokers := testenv.KafkaBrokers(t)
	relay := newCountingRelay(t, brokers[0])
	topic := testenv.Unique("readyz")
	cfgPath, addr := writeConfig(t, relay.ln.Addr().String(), topic, "")
	start(t, cfgPath, addr, "--roles=collector")
	get := func() (int, string) {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	testenv.Eventually(t, 60*time.Second, func() error {
		if code, body := get(); code != http.StatusOK {
			return fmt.Errorf("/readyz %d %s", code, strings.TrimSpace(body))
		}
		return nil
	})
	before := relay.accepted.Load()
	const calls = 30
	for i := range calls {
		if code, body := get(); code != http.StatusOK {
			t.Fatalf("/readyz call %d: %d %s", i, code, body)
		}
	}
	// The background check may reconnect now and then (idle timeout); a
	// connection per call would add 30.
	if added := relay.accepted.Load() - before; added > 2 {
		t.Fatalf("%d /readyz calls opened %d connections to the broker, want none per call", calls, added)
	}
}
