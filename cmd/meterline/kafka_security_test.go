package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/internal/testenv"
)

// kafkaSecurity returns the kafka section lines for TLS with caFile and SASL.
func kafkaSecurity(caFile, mechanism, username, password string) string {
	s := "  tls:\n    enabled: true\n"
	if caFile != "" {
		s += fmt.Sprintf("    ca_file: %s\n", caFile)
	}
	if mechanism != "" {
		s += fmt.Sprintf("  sasl:\n    mechanism: %s\n    username: %s\n    password: %q\n", mechanism, username, password)
	}
	return s
}

// foreignCA returns the PEM of a self-signed certificate that signed
// nothing the broker presents: trusting it alone must fail verification.
func foreignCA(t *testing.T) string {
	t.Helper()
	certFile, _, _ := selfSigned(t)
	return certFile
}

// topicExists asks the broker's PLAINTEXT listener whether topic exists.
func topicExists(t *testing.T, plainAddr, topic string) bool {
	t.Helper()
	// A transport of its own: kafka-go's default one answers metadata from
	// a cache that knows only the topics of its first request.
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	c := &kafka.Client{Addr: kafka.TCP(plainAddr), Timeout: 10 * time.Second, Transport: tr}
	md, err := c.Metadata(context.Background(), &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		t.Fatalf("metadata over PLAINTEXT: %v", err)
	}
	for _, tp := range md.Topics {
		if tp.Name == topic {
			if errors.Is(tp.Error, kafka.UnknownTopicOrPartition) {
				return false
			}
			if tp.Error != nil {
				t.Fatalf("topic %s: %v", topic, tp.Error)
			}
			return len(tp.Partitions) > 0
		}
	}
	return false
}

// storedCount counts the events stored for a customer, read back through
// GET /v1/events/stored.
func storedCount(addr, customer string) (int, error) {
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/v1/events/stored?limit=1000&customer_id="+customer, nil)
	req.Header.Set("Authorization", "Bearer "+e2eAdminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET /v1/events/stored: %s", resp.Status)
	}
	var out struct{ Events []json.RawMessage }
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return 0, err
	}
	return len(out.Events), nil
}

// serveFails runs the collector with cfgPath and returns its output once it
// has exited with status 1, as it must when it cannot connect to Kafka.
func serveFails(t *testing.T, cfgPath string) string {
	t.Helper()
	logs := &testenv.SyncBuffer{}
	p := startCmd(t, cfgPath, logs, "--roles=collector")
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("serve still runs 30 s after start; it should stop with a clear error:\n%s", logs.String())
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 1 {
		t.Fatalf("serve exited with status %d, want 1:\n%s", code, logs.String())
	}
	return logs.String()
}

// lastLine returns the last non-empty line of s: serve's final error.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestKafkaOverSASLSSL runs serve against a broker's SASL_SSL listener
// (TLS with a CA of its own, SASL SCRAM-SHA-512 and PLAIN): the topics are
// created, events produced by the collector and consumed by the sink over
// it. Bad credentials, an untrusted CA, a SASL mechanism the listener does
// not enable and a client without TLS each stop serve at start with an
// error that names the cause and the settings to check, and create nothing.
func TestKafkaOverSASLSSL(t *testing.T) {
	testenv.Require(t, testenv.EnvChdb)
	b := testenv.StartSecureBroker(t)

	for _, mech := range []string{"scram-sha-512", "plain"} {
		t.Run(mech, func(t *testing.T) {
			topic := testenv.Unique("e2e-sasl")
			customer := testenv.Unique("cust")
			cfgPath, addr := writeConfigKafka(t, b.SecureAddr, topic, kafkaSecurity(b.CAFile, mech, b.Username, b.Password), "")
			start(t, cfgPath, addr, "--roles=collector,sink,query")
			// serve has no other way to the broker than the SASL_SSL listener.
			for _, tp := range []string{topic, topic + ".dlq"} {
				if !topicExists(t, b.Addr, tp) {
					t.Fatalf("topic %s was not created", tp)
				}
			}
			const n = 25
			postEvents(t, addr, customerEvents(topic, customer, n))
			testenv.Eventually(t, 30*time.Second, func() error {
				got, err := storedCount(addr, customer)
				if err != nil {
					return err
				}
				if got != n {
					return fmt.Errorf("%d of %d events stored", got, n)
				}
				return nil
			})
			stored, err := metric(addr, "meterline_sink_events_stored_total")
			if err != nil || int(stored) != n {
				t.Fatalf("meterline_sink_events_stored_total = %v (%v), want %d", stored, err, n)
			}
			resp, err := http.Get("http://" + addr + "/readyz")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("/readyz: %s", resp.Status)
			}
		})
	}

	otherCA := foreignCA(t)
	for _, tc := range []struct {
		name, kafka string
		want        []string
	}{
		{"wrong scram password", kafkaSecurity(b.CAFile, "scram-sha-512", b.Username, "not-the-password"),
			[]string{"SASL authentication failed", `user "meterline"`, "SCRAM-SHA-512", "kafka.sasl.password", "invalid credentials"}},
		{"wrong plain password", kafkaSecurity(b.CAFile, "plain", b.Username, "not-the-password"),
			[]string{"SASL authentication failed", `user "meterline"`, "PLAIN", "kafka.sasl.password", "Invalid username or password"}},
		{"unknown user", kafkaSecurity(b.CAFile, "scram-sha-512", "nobody", b.Password),
			[]string{"SASL authentication failed", `user "nobody"`, "kafka.sasl.username"}},
		{"mechanism not enabled", kafkaSecurity(b.CAFile, "scram-sha-256", b.Username, b.Password),
			[]string{"does not accept SASL mechanism SCRAM-SHA-256", "kafka.sasl.mechanism"}},
		{"untrusted CA", kafkaSecurity(otherCA, "scram-sha-512", b.Username, b.Password),
			[]string{"TLS", "certificate is not trusted", "kafka.tls.ca_file", "x509: certificate signed by unknown authority"}},
		{"system roots", kafkaSecurity("", "scram-sha-512", b.Username, b.Password),
			[]string{"TLS", "certificate is not trusted", "kafka.tls.ca_file"}},
		{"plaintext client", "",
			[]string{"expects TLS", "kafka.tls.enabled"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topic := testenv.Unique("e2e-sasl-bad")
			cfgPath, _ := writeConfigKafka(t, b.SecureAddr, topic, tc.kafka, "")
			out := serveFails(t, cfgPath)
			msg := lastLine(out)
			t.Logf("serve: %s", msg)
			if !strings.HasPrefix(msg, "meterline serve: kafka: connecting to Kafka at "+b.SecureAddr) {
				t.Errorf("last line is not the connection error:\n%s", out)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error lacks %q: %s", w, msg)
				}
			}
			if strings.Contains(out, "waiting for kafka") {
				t.Errorf("serve retried an error that retrying cannot fix:\n%s", out)
			}
			if topicExists(t, b.Addr, topic) {
				t.Errorf("topic %s was created", topic)
			}
		})
	}
}
