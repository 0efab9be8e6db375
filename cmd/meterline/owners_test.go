package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/internal/testenv"
)

// getJSON GETs an admin endpoint and decodes its 200 answer into v.
func getJSON(addr, path string, v any) error {
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	req.Header.Set("Authorization", "Bearer "+e2eAdminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	return json.Unmarshal(b, v)
}

// TestServeBillsOnlyTheKeysOwner runs serve with the development
// catalogue's shape: an event of acme's key_demo that says globex is
// rejected by the collector and dead-lettered when produced straight to
// Kafka; an unknown key's event is kept unassigned, listed for admins and
// attributed to its owner once the catalogue file gains the key, so that
// globex's usage counts it exactly once.
func TestServeBillsOnlyTheKeysOwner(t *testing.T) {
	brokers := testenv.KafkaBrokers(t)
	dir := t.TempDir()
	catalogue := filepath.Join(dir, "catalogue.yaml")
	writeCatalogue := func(globexKeys string) {
		t.Helper()
		tmp := catalogue + ".tmp"
		if err := os.WriteFile(tmp, []byte(`plans:
  - {id: starter, included_units: 1000}
customers:
  - {id: acme, plan: starter, keys: [key_demo]}
  - {id: globex, plan: starter, keys: [`+globexKeys+`]}
`), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, catalogue); err != nil {
			t.Fatal(err)
		}
	}
	writeCatalogue("key_globex")
	topic := testenv.Unique("owners")
	cfgPath, addr := writeConfig(t, strings.Join(brokers, ","), topic, fmt.Sprintf(`limits:
  catalogue_file: %s
  reload_every: 100ms
aggregate:
  interval: 200ms
  settle: 1ms
`, catalogue))
	start(t, cfgPath, addr)

	ev := func(id, key, customer string) map[string]any {
		e := event(id, key)
		if customer == "" {
			delete(e, "customer_id")
		} else {
			e["customer_id"] = customer
		}
		return e
	}
	body, _ := json.Marshal([]map[string]any{ev("o-0", "key_demo", "globex"), ev("o-1", "key_demo", ""), ev("o-2", "key_new", "globex")})
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/events", strings.NewReader(string(body)))
	req.Header.Set("Authorization", "Bearer "+e2eIngestToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || !strings.Contains(string(b), `"accepted":2`) ||
		!strings.Contains(string(b), `{"index":0,"error":"event 0: field \"customer_id\": \"globex\" does not hold api_key_id \"key_demo\"`) {
		t.Fatalf("POST: %d %s", resp.StatusCode, b)
	}
	// Straight through Kafka, past the collector.
	w := testenv.Writer(t, brokers, topic)
	straight, _ := json.Marshal(ev("o-3", "key_demo", "globex"))
	if err := w.WriteMessages(context.Background(), kafka.Message{Key: []byte("key_demo"), Value: straight}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 60*time.Second, func() error {
		if n, err := metric(addr, `meterline_sink_events_dead_lettered_total{class="ownership"}`); err != nil || n != 1 {
			return fmt.Errorf("ownership dead letters %v (%v), want 1", n, err)
		}
		return nil
	})
	type unassigned struct {
		Keys []struct {
			APIKeyID string `json:"api_key_id"`
			Events   uint64 `json:"events"`
		} `json:"keys"`
	}
	testenv.Eventually(t, 60*time.Second, func() error {
		var u unassigned
		if err := getJSON(addr, "/v1/admin/unassigned", &u); err != nil {
			return err
		}
		if len(u.Keys) != 1 || u.Keys[0].APIKeyID != "key_new" || u.Keys[0].Events != 1 {
			return fmt.Errorf("unassigned %+v, want key_new with 1 event", u)
		}
		if n, err := metric(addr, "meterline_aggregate_unassigned_events"); err != nil || n != 1 {
			return fmt.Errorf("unassigned events metric %v (%v), want 1", n, err)
		}
		return nil
	})

	writeCatalogue("key_globex, key_new")
	from := time.Now().Add(-2 * time.Hour).UTC().Format(time.RFC3339)
	requests := func(customer string) (uint64, error) {
		var u struct {
			Rows []struct {
				Requests uint64 `json:"requests"`
			} `json:"rows"`
		}
		if err := getJSON(addr, "/v1/usage?customer_id="+customer+"&window=hour&from="+from, &u); err != nil {
			return 0, err
		}
		var n uint64
		for _, r := range u.Rows {
			n += r.Requests
		}
		return n, nil
	}
	testenv.Eventually(t, 60*time.Second, func() error {
		var u unassigned
		if err := getJSON(addr, "/v1/admin/unassigned", &u); err != nil {
			return err
		}
		if len(u.Keys) != 0 {
			return fmt.Errorf("still unassigned: %+v", u)
		}
		g, err := requests("globex")
		if err != nil {
			return err
		}
		a, err := requests("acme")
		if err != nil {
			return err
		}
		if g != 1 || a != 1 {
			return fmt.Errorf("usage: globex %d, acme %d requests; want 1 and 1", g, a)
		}
		if n, err := metric(addr, "meterline_aggregate_events_attributed_total"); err != nil || n != 1 {
			return fmt.Errorf("attributed metric %v (%v), want 1", n, err)
		}
		return nil
	})
}

// TestEventsUnknownKeysSetting: accept by default, reject from the file or
// the environment, anything else refused by Validate.
func TestEventsUnknownKeysSetting(t *testing.T) {
	c, err := loadConfig("", nil)
	if err != nil || c.Events.UnknownKeys != "accept" {
		t.Fatalf("default %q (%v), want accept", c.Events.UnknownKeys, err)
	}
	c, err = loadConfig(writeFile(t, "events:\n  unknown_keys: reject\n"), nil)
	if err != nil || c.Events.UnknownKeys != "reject" || c.Validate() != nil {
		t.Fatalf("from the file: %q (%v)", c.Events.UnknownKeys, err)
	}
	c, err = loadConfig("", []string{"METERLINE_EVENTS_UNKNOWN_KEYS=maybe"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), `events.unknown_keys: "maybe" is not accept or reject`) {
		t.Fatalf("validation error %v", err)
	}
}
