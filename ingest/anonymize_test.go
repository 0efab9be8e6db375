package ingest

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/schemas"
	"github.com/meterline/meterline/store"
)

func TestAnonymizerModes(t *testing.T) {
	at := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	ev := func(ip string) schemas.Event {
		return schemas.Event{ClientIP: ip, Time: at, UserAgent: strings.Repeat("é", 300), Properties: map[string]string{"Email": "a@b.c", "plan": "pro", "card_number": "4242"}}
	}
	secret := "0123456789abcdef-secret"
	cases := []struct {
		name string
		a    Anonymizer
		ip   string
		want func(string) bool
	}{
		{"truncate v4", Anonymizer{}, "203.0.113.77", func(s string) bool { return s == "203.0.113.0" }},
		{"truncate v6", Anonymizer{}, "2001:db8:1:2:3:4:5:6", func(s string) bool { return s == "2001:db8:1::" }},
		{"truncate mapped", Anonymizer{}, "::ffff:203.0.113.77", func(s string) bool { return s == "203.0.113.0" }},
		{"truncate /16", Anonymizer{IPv4PrefixBits: 16}, "203.0.113.77", func(s string) bool { return s == "203.0.0.0" }},
		{"drop", Anonymizer{IPMode: IPDrop}, "203.0.113.77", func(s string) bool { return s == "" }},
		{"hash", Anonymizer{IPMode: IPHash, IPHashSecret: secret}, "203.0.113.77", func(s string) bool {
			a, err := netip.ParseAddr(s)
			return err == nil && pseudonymPrefix.Contains(a) && !strings.Contains(s, "203")
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := c.a.WithDefaults()
			if err := a.Validate(); err != nil {
				t.Fatal(err)
			}
			e := ev(c.ip)
			if err := a.Apply(&e); err != nil {
				t.Fatal(err)
			}
			if !c.want(e.ClientIP) {
				t.Fatalf("client_ip %q", e.ClientIP)
			}
			if len(e.Properties) != 1 || e.Properties["plan"] != "pro" {
				t.Fatalf("denied properties kept: %v", e.Properties)
			}
			if len(e.UserAgent) > 512 || !strings.HasPrefix(strings.Repeat("é", 300), e.UserAgent) {
				t.Fatalf("user agent %d bytes", len(e.UserAgent))
			}
			again := e
			if err := a.Apply(&again); err != nil || again.ClientIP != e.ClientIP {
				t.Fatalf("applying twice changed %q to %q (%v)", e.ClientIP, again.ClientIP, err)
			}
		})
	}
	h := Anonymizer{IPMode: IPHash, IPHashSecret: secret}.WithDefaults()
	p := func(ip string, at time.Time) string {
		e := schemas.Event{ClientIP: ip, Time: at}
		_ = h.Apply(&e)
		return e.ClientIP
	}
	if p("203.0.113.77", at) != p("203.0.113.77", at.Add(time.Hour)) {
		t.Error("pseudonym changed within a rotation period")
	}
	if p("203.0.113.77", at) == p("203.0.113.77", at.Add(25*time.Hour)) {
		t.Error("pseudonym did not rotate")
	}
	if p("203.0.113.77", at) == p("203.0.113.78", at) {
		t.Error("two IPs share a pseudonym")
	}
	other := Anonymizer{IPMode: IPHash, IPHashSecret: secret + "x"}.WithDefaults()
	e := schemas.Event{ClientIP: "203.0.113.77", Time: at}
	_ = other.Apply(&e)
	if e.ClientIP == p("203.0.113.77", at) {
		t.Error("pseudonym does not depend on the secret")
	}
	noDeny := Anonymizer{DenyProperties: []string{}, UserAgentMaxBytes: -1}.WithDefaults()
	e = ev("")
	_ = noDeny.Apply(&e)
	if len(e.Properties) != 3 || e.UserAgent != "" {
		t.Errorf("deny_properties [] / user_agent_max_bytes -1: %v %q", e.Properties, e.UserAgent)
	}
	for _, bad := range []Anonymizer{{IPMode: "scramble"}, {IPMode: IPHash, IPHashSecret: "short"}, {UserAgentMaxBytes: 600}, {IPv4PrefixBits: 40}} {
		if err := bad.WithDefaults().Validate(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// TestNothingIdentifyingReachesKafkaOrClickHouse posts events with full IPs
// and denied properties through the collector (hash mode) and the sink, then
// searches every Kafka message and every stored row for them.
func TestNothingIdentifyingReachesKafkaOrClickHouse(t *testing.T) {
	db := requireDB(t)
	brokers := testenv.KafkaBrokers(t)
	anon := Anonymizer{IPMode: IPHash, IPHashSecret: "test-secret-0123456789"}
	f := newCollectorFixture(t, brokers, CollectorConfig{})
	f.col.anon = anon.WithDefaults()
	key := testenv.Unique("key")
	var batch []any
	for i := 0; i < 20; i++ {
		e := validEvent(fmt.Sprintf("pii-%d", i), key)
		e["client_ip"] = fmt.Sprintf("198.51.100.%d", 10+i)
		if i%2 == 1 {
			e["client_ip"] = fmt.Sprintf("2001:db8:aaaa:bbbb::%x", 0x100+i)
		}
		e["properties"] = map[string]string{"plan": "pro", "email": fmt.Sprintf("user%d@example.com", i), "PHONE": "+15550100"}
		batch = append(batch, e)
	}
	resp, body := f.post(t, tokIngest, "application/json", mustJSON(t, batch))
	if resp.StatusCode != 202 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	forbidden := []string{"198.51.100.", "2001:db8:aaaa", "example.com", "+15550100", "email", "PHONE"}
	for _, m := range topicMessages(t, brokers, f.kcfg.Topic) {
		for _, bad := range forbidden {
			if strings.Contains(string(m.Value), bad) {
				t.Errorf("Kafka message holds %q: %s", bad, m.Value)
			}
		}
	}
	sink, err := NewSink(SinkConfig{GroupID: testenv.Unique("g"), FlushInterval: 100 * time.Millisecond}, f.kcfg, schemas.Options{}, anon, db, prometheus.NewRegistry(), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sink.Run(ctx) }()
	waitStored(t, db, key, 20)
	cancel()
	<-done
	rows, err := db.Query(context.Background(), "SELECT toString(tuple(*)) FROM events WHERE api_key_id = {k:String}", store.P("k", key))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var row string
		if err := rows.Scan(&row); err != nil {
			t.Fatal(err)
		}
		n++
		for _, bad := range forbidden {
			if strings.Contains(row, bad) {
				t.Errorf("stored row holds %q: %s", bad, row)
			}
		}
		if !strings.Contains(row, "100::") {
			t.Errorf("stored row has no pseudonymised IP: %s", row)
		}
	}
	if n != 20 {
		t.Fatalf("%d rows", n)
	}
}
