package ingest

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/auth"
	"github.com/meterline/meterline/internal/httpx"
	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/schemas"
)

const (
	tokIngest = "test-ingest-token"
	tokAdmin  = "test-admin-token"
)

func testTokens(t testing.TB) *auth.Tokens {
	t.Helper()
	tk, err := auth.New([]auth.TokenConfig{
		{Name: "gw-test", SHA256: auth.Hash(tokIngest), Scopes: []string{"ingest"}},
		{Name: "admin", SHA256: auth.Hash(tokAdmin), Scopes: []string{"admin"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

// collectorFixture is a collector producing to a topic of its own on the
// shared broker, served by an httptest server.
type collectorFixture struct {
	kcfg    KafkaConfig
	srv     *httptest.Server
	writer  *kafka.Writer
	col     *Collector
	brokers []string
}

func newCollectorFixture(t *testing.T, brokers []string, cfg CollectorConfig) *collectorFixture {
	t.Helper()
	k := KafkaConfig{Brokers: brokers, Topic: testenv.Unique("events"), Partitions: 3}.WithDefaults()
	if err := EnsureTopics(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	w, err := NewProducer(k)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	col := NewCollector(cfg, schemas.Options{}, Anonymizer{}, testTokens(t), w, prometheus.NewRegistry(), quietLog())
	srv := httptest.NewServer(col)
	t.Cleanup(srv.Close)
	return &collectorFixture{kcfg: k, srv: srv, writer: w, col: col, brokers: brokers}
}

func (f *collectorFixture) post(t testing.TB, token, contentType string, body []byte, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, f.srv.URL+"/v1/events", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// topicMessages reads every message currently in topic.
func topicMessages(t testing.TB, brokers []string, topic string) []kafka.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := kafka.DialContext(ctx, "tcp", brokers[0])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	parts, err := conn.ReadPartitions(topic)
	if err != nil {
		t.Fatal(err)
	}
	var out []kafka.Message
	for _, p := range parts {
		lc, err := kafka.DialLeader(ctx, "tcp", brokers[0], topic, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		last, err := lc.ReadLastOffset()
		lc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if last == 0 {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p.ID, MinBytes: 1, MaxBytes: 10 << 20, MaxWait: 100 * time.Millisecond})
		for {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				r.Close()
				t.Fatalf("reading %s/%d: %v", topic, p.ID, err)
			}
			out = append(out, m)
			if m.Offset >= last-1 {
				break
			}
		}
		r.Close()
	}
	return out
}

func ts(d time.Duration) string { return time.Now().Add(d).UTC().Format(time.RFC3339Nano) }

func validEvent(id, key string) map[string]any {
	return map[string]any{
		"id": id, "time": ts(-time.Minute), "api_key_id": key, "customer_id": "cust-1",
		"method": "GET", "route": "/v1/pets/{id}", "status": 200, "latency_ms": 12.5,
		"request_bytes": 100, "response_bytes": 2048, "client_ip": "203.0.113.77",
		"user_agent": "curl/8", "units": 2, "properties": map[string]string{"plan": "pro"},
	}
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCollectorRejectsBadRequests sends every kind of bad request and checks
// the status, that the message names the problem, and that nothing at all
// reached Kafka.
func TestCollectorRejectsBadRequests(t *testing.T) {
	f := newCollectorFixture(t, testenv.KafkaBrokers(t), CollectorConfig{MaxBodyBytes: 64 << 10})
	good := mustJSON(t, []any{validEvent("a", "k")})
	var bomb bytes.Buffer
	zw := gzip.NewWriter(&bomb)
	_, _ = zw.Write(bytes.Repeat([]byte(" "), 10<<20)) // 10 MiB of spaces, ~10 KiB compressed
	zw.Close()
	// 10,001 empty objects fit the size limit, so the count limit answers.
	tooMany := []byte("[" + strings.TrimSuffix(strings.Repeat("{},", 10001), ",") + "]")
	cases := []struct {
		name, token, ctype string
		body               []byte
		hdr                []string
		code               int
		msg                string
	}{
		{"no token", "", "application/json", good, nil, 401, "missing bearer token"},
		{"wrong token", "nope", "application/json", good, nil, 401, "invalid bearer token"},
		{"token without ingest scope", tokAdmin, "application/json", good, nil, 403, "lacks the ingest scope"},
		{"malformed JSON", tokIngest, "application/json", []byte(`[{"id":"a",`), nil, 400, ""},
		{"not JSON at all", tokIngest, "application/json", []byte(`hello`), nil, 400, ""},
		{"empty body", tokIngest, "application/json", nil, nil, 400, "empty body"},
		{"unsupported media type", tokIngest, "text/plain", good, nil, 415, ""},
		{"unsupported encoding", tokIngest, "application/json", good, []string{"Content-Encoding", "br"}, 415, "content-encoding"},
		{"bad gzip", tokIngest, "application/json", good, []string{"Content-Encoding", "gzip"}, 400, "gzip"},
		{"oversized body", tokIngest, "application/json", bytes.Repeat([]byte(" "), 65<<10), nil, 413, "over the limit"},
		{"gzip bomb", tokIngest, "application/json", bomb.Bytes(), []string{"Content-Encoding", "gzip"}, 413, "over the limit"},
		{"too many events", tokIngest, "application/json", tooMany, nil, 413, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := f.post(t, c.token, c.ctype, c.body, c.hdr...)
			if resp.StatusCode != c.code {
				t.Fatalf("status %d, want %d; body %s", resp.StatusCode, c.code, body)
			}
			var eb httpx.ErrorBody
			if err := json.Unmarshal(body, &eb); err != nil || eb.Error == "" {
				t.Fatalf("body %q is not a JSON error", body)
			}
			if c.msg != "" && !strings.Contains(eb.Error, c.msg) {
				t.Fatalf("error %q does not mention %q", eb.Error, c.msg)
			}
			if c.code == 401 && resp.Header.Get("WWW-Authenticate") == "" {
				t.Fatal("401 without WWW-Authenticate")
			}
		})
	}
	req, _ := http.NewRequest(http.MethodGet, f.srv.URL+"/v1/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "POST" {
		t.Fatalf("GET: status %d allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
	if msgs := topicMessages(t, f.brokers, f.kcfg.Topic); len(msgs) != 0 {
		t.Fatalf("bad requests produced %d messages", len(msgs))
	}
}

// TestCollectorKeepsValidEventsBesideInvalidOnes posts a batch mixing valid
// and invalid events: the valid ones reach Kafka (keyed, anonymised), the
// invalid ones are rejected by index with the field named.
func TestCollectorKeepsValidEventsBesideInvalidOnes(t *testing.T) {
	f := newCollectorFixture(t, testenv.KafkaBrokers(t), CollectorConfig{})
	key := testenv.Unique("key")
	wrongType := validEvent("bad-type", key)
	wrongType["status"] = "200"
	missing := validEvent("bad-missing", key)
	delete(missing, "api_key_id")
	tooMany := validEvent("bad-props", key)
	props := map[string]string{}
	for i := 0; i < 33; i++ {
		props[fmt.Sprintf("p%d", i)] = "v"
	}
	tooMany["properties"] = props
	old := validEvent("bad-old", key)
	old["time"] = ts(-36 * 24 * time.Hour)
	future := validEvent("bad-future", key)
	future["time"] = ts(10 * time.Minute)
	unknown := validEvent("bad-unknown", key)
	unknown["colour"] = "red"
	v6 := validEvent("ok-3", key)
	v6["client_ip"] = "2001:db8:1234:5678:9abc:def0:1234:5678"
	batch := []any{validEvent("ok-1", key), wrongType, missing, validEvent("ok-2", key), tooMany, old, future, unknown, v6, "not an object"}
	resp, body := f.post(t, tokIngest, "application/json", mustJSON(t, batch))
	if resp.StatusCode != 202 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var r Response
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatal(err)
	}
	if r.Accepted != 3 {
		t.Fatalf("accepted %d, want 3: %s", r.Accepted, body)
	}
	wantRejected := map[int]string{1: "status", 2: "api_key_id", 4: "properties", 5: "time", 6: "time", 7: "colour", 9: "object"}
	if len(r.Rejected) != len(wantRejected) {
		t.Fatalf("rejected %d, want %d: %s", len(r.Rejected), len(wantRejected), body)
	}
	for _, rej := range r.Rejected {
		want, ok := wantRejected[rej.Index]
		if !ok || !strings.Contains(rej.Error, want) {
			t.Errorf("rejection %+v: want index in %v naming %q", rej, wantRejected, want)
		}
	}
	msgs := topicMessages(t, f.brokers, f.kcfg.Topic)
	if len(msgs) != 3 {
		t.Fatalf("%d messages in Kafka, want 3", len(msgs))
	}
	for _, m := range msgs {
		if string(m.Key) != key {
			t.Errorf("message key %q, want the api_key_id %q", m.Key, key)
		}
		var ev map[string]any
		if err := json.Unmarshal(m.Value, &ev); err != nil {
			t.Fatal(err)
		}
		switch ev["client_ip"] {
		case "203.0.113.0", "2001:db8:1234::":
		default:
			t.Errorf("client_ip %v is not anonymised", ev["client_ip"])
		}
		if ev["gateway"] != "gw-test" {
			t.Errorf("gateway %v, want the token's name", ev["gateway"])
		}
		if strings.Contains(string(m.Value), "203.0.113.77") || strings.Contains(string(m.Value), "9abc") {
			t.Errorf("full IP in Kafka: %s", m.Value)
		}
	}
}

// TestCollectorFormats posts NDJSON, CloudEvents batches and gzip bodies.
func TestCollectorFormats(t *testing.T) {
	f := newCollectorFixture(t, testenv.KafkaBrokers(t), CollectorConfig{})
	key := testenv.Unique("key")
	nd := string(mustJSON(t, validEvent("nd-1", key))) + "\n\n" + string(mustJSON(t, validEvent("nd-2", key))) + "\n{broken\n"
	ce := []any{map[string]any{
		"specversion": "1.0", "id": "ce-1", "type": "dev.meterline.request.v1", "source": "edge-eu",
		"subject": key, "time": ts(-time.Second), "datacontenttype": "application/json",
		"data": map[string]any{"status": 503, "route": "/v1/x", "method": "POST"},
	}}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write(mustJSON(t, []any{validEvent("gz-1", key)}))
	zw.Close()
	for _, c := range []struct {
		name, ctype string
		body        []byte
		hdr         []string
		accepted    int
		rejected    int
	}{
		{"ndjson", "application/x-ndjson", []byte(nd), nil, 2, 1},
		{"cloudevents batch", "application/cloudevents-batch+json", mustJSON(t, ce), nil, 1, 0},
		{"gzip", "application/json", gz.Bytes(), []string{"Content-Encoding", "gzip"}, 1, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp, body := f.post(t, tokIngest, c.ctype, c.body, c.hdr...)
			var r Response
			_ = json.Unmarshal(body, &r)
			if resp.StatusCode != 202 || r.Accepted != c.accepted || len(r.Rejected) != c.rejected {
				t.Fatalf("status %d body %s; want 202 with %d accepted, %d rejected", resp.StatusCode, body, c.accepted, c.rejected)
			}
		})
	}
	msgs := topicMessages(t, f.brokers, f.kcfg.Topic)
	if len(msgs) != 4 {
		t.Fatalf("%d messages, want 4", len(msgs))
	}
	for _, m := range msgs {
		var ev map[string]any
		_ = json.Unmarshal(m.Value, &ev)
		if ev["id"] == "ce-1" && (ev["gateway"] != "edge-eu" || ev["api_key_id"] != key || ev["status"] != float64(503)) {
			t.Errorf("CloudEvent mapped wrongly: %s", m.Value)
		}
	}
}

// TestCollectorAnswers503WhenKafkaIsDown stops a dedicated broker: the
// collector answers 503 with Retry-After, and accepts again once it is back.
func TestCollectorAnswers503WhenKafkaIsDown(t *testing.T) {
	b := testenv.StartBroker(t)
	f := newCollectorFixture(t, []string{b.Addr}, CollectorConfig{ProduceTimeout: 3 * time.Second})
	key := testenv.Unique("key")
	resp, body := f.post(t, tokIngest, "application/json", mustJSON(t, []any{validEvent("before", key)}))
	if resp.StatusCode != 202 {
		t.Fatalf("before: %d %s", resp.StatusCode, body)
	}
	b.Stop()
	resp, body = f.post(t, tokIngest, "application/json", mustJSON(t, []any{validEvent("during", key)}))
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("while down: %d (Retry-After %q) %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	b.Restart()
	testenv.Eventually(t, 60*time.Second, func() error {
		resp, body := f.post(t, tokIngest, "application/json", mustJSON(t, []any{validEvent("after", key)}))
		if resp.StatusCode != 202 {
			return fmt.Errorf("after restart: %d %s", resp.StatusCode, body)
		}
		return nil
	})
	ids := map[string]bool{}
	for _, m := range topicMessages(t, f.brokers, f.kcfg.Topic) {
		var ev map[string]any
		_ = json.Unmarshal(m.Value, &ev)
		ids[ev["id"].(string)] = true
	}
	if !ids["before"] || !ids["after"] {
		t.Fatalf("acknowledged events missing from Kafka: %v", ids)
	}
}
