// Package testenv gives integration tests the real servers that `make test`
// starts once per run (a Kafka broker, stripe-mock) and the embedded
// ClickHouse engine, and can start a dedicated broker for tests that stop
// and restart one.
//
// Outside `make test` the servers are absent: the tests that need them are
// skipped with a message, except under CI (CI set), where that is a failure.
package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

// Env variables set by deploy/test.sh.
const (
	EnvKafka      = "METERLINE_TEST_KAFKA"
	EnvStripeMock = "METERLINE_TEST_STRIPE_MOCK"
	EnvChdb       = "CHDB_LIB_PATH"
	// EnvKafkaLibs is the folder of the Kafka jars that dedicated clusters
	// run from (StartCluster).
	EnvKafkaLibs = "METERLINE_TEST_KAFKA_LIBS"
)

// Require returns the value of env var name, or skips (fails under CI) the test.
func Require(t testing.TB, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not set: run the tests with `make test`, which starts the servers", name)
		}
		t.Skipf("%s is not set: run `make test` to run this test against the real servers", name)
	}
	return v
}

// KafkaBrokers returns the shared broker's bootstrap address.
func KafkaBrokers(t testing.TB) []string {
	t.Helper()
	return strings.Split(Require(t, EnvKafka), ",")
}

// RepoRoot is the repository's top folder.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Unique returns prefix plus a random suffix, for topic, group and key names
// that must not collide between tests sharing a broker.
func Unique(prefix string) string {
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// KafkaClient returns a kafka-go client with a transport of its own: the
// package's shared default transport caches topic metadata and may not know
// a topic created a moment ago (seen as "Unknown Topic Or Partition").
func KafkaClient(brokers []string) *kafka.Client {
	return &kafka.Client{Addr: kafka.TCP(brokers...), Transport: &kafka.Transport{}, Timeout: 10 * time.Second}
}

// Writer returns a producer for topic as a gateway producing straight to
// Kafka would be set up (partitioned by key with murmur2, acks=all), with 1 ms
// batches and a transport of its own (see KafkaClient); closed when the test
// ends.
func Writer(t testing.TB, brokers []string, topic string) *kafka.Writer {
	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: topic, Balancer: &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond, Transport: &kafka.Transport{}}
	t.Cleanup(func() { _ = w.Close() })
	return w
}

// CreateTopic creates a topic with n partitions on the shared broker.
func CreateTopic(t testing.TB, brokers []string, topic string, partitions int) {
	t.Helper()
	c := KafkaClient(brokers)
	res, err := c.CreateTopics(context.Background(), &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: topic, NumPartitions: partitions, ReplicationFactor: 1,
	}}})
	if err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
	if err := res.Errors[topic]; err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
}

// Broker is a dedicated Kafka broker started by a test through deploy/kafka.sh.
type Broker struct {
	Addr string
	dir  string
	port string
	t    testing.TB
}

// StartBroker starts a broker of its own for the test (about 5 s) and stops
// it at the end of the test.
func StartBroker(t testing.TB) *Broker {
	t.Helper()
	return startBroker(t)
}

// startBroker runs deploy/kafka.sh start in a fresh directory with extra
// flags, and stops the broker at the end of the test.
func startBroker(t testing.TB, extra ...string) *Broker {
	t.Helper()
	Require(t, EnvKafka) // the jars are installed when the shared broker is
	var b *Broker
	for attempt := 1; ; attempt++ {
		b = &Broker{dir: t.TempDir(), port: FreePort(t), t: t}
		cport := FreePort(t)
		args := append([]string{"start", "--dir", b.dir, "--port", b.port, "--controller-port", cport}, extra...)
		out, err := exec.Command(filepath.Join(RepoRoot(), "deploy", "kafka.sh"), args...).CombinedOutput()
		if err == nil {
			break
		}
		// A broker that started and failed its port check is still running.
		b.Stop()
		// Another process may have bound a picked port before the broker
		// did: pick new ones.
		if attempt < 3 && bytes.Contains(out, []byte("Address already in use")) {
			t.Logf("a port of the dedicated broker was taken; retrying with new ports")
			continue
		}
		t.Fatalf("starting a dedicated broker: %v\n%s", err, out)
	}
	b.Addr = "127.0.0.1:" + b.port
	t.Cleanup(b.Stop)
	return b
}

// SecureBroker is a dedicated broker that also listens with SASL_SSL
// (deploy/kafka.sh --secure-port): TLS with a certificate for 127.0.0.1
// signed by a CA of its own, SASL mechanisms PLAIN and SCRAM-SHA-512.
type SecureBroker struct {
	*Broker
	// SecureAddr is the SASL_SSL listener; Broker.Addr stays PLAINTEXT.
	SecureAddr string
	// CAFile is the PEM of the CA that signed the broker's certificate.
	CAFile string
	// Username and Password are valid for both mechanisms.
	Username, Password string
}

// StartSecureBroker starts a broker of its own with a SASL_SSL listener
// (about 8 s: the TLS files are created first) and stops it at the end of
// the test.
func StartSecureBroker(t testing.TB) *SecureBroker {
	t.Helper()
	sport := FreePort(t)
	b := startBroker(t, "--secure-port", sport)
	tlsDir := filepath.Join(b.dir, "tls")
	pw, err := os.ReadFile(filepath.Join(tlsDir, "sasl-password"))
	if err != nil {
		t.Fatalf("secure broker: %v", err)
	}
	return &SecureBroker{
		Broker:     b,
		SecureAddr: "127.0.0.1:" + sport,
		CAFile:     filepath.Join(tlsDir, "ca.pem"),
		Username:   "meterline",
		Password:   strings.TrimSpace(string(pw)),
	}
}

// Stop stops the broker (SIGTERM, then SIGKILL after 15 s).
func (b *Broker) Stop() {
	out, err := exec.Command(filepath.Join(RepoRoot(), "deploy", "kafka.sh"), "stop", "--dir", b.dir).CombinedOutput()
	if err != nil {
		b.t.Logf("stopping broker: %v\n%s", err, out)
	}
}

// Restart starts the stopped broker again on the same address and data.
func (b *Broker) Restart() {
	b.t.Helper()
	out, err := exec.Command(filepath.Join(RepoRoot(), "deploy", "kafka.sh"), "start", "--dir", b.dir).CombinedOutput()
	if err != nil {
		b.t.Fatalf("restarting broker: %v\n%s", err, out)
	}
}

// FreePort returns a TCP port free on 127.0.0.1 at the time of the call,
// chosen outside the kernel's ephemeral range (see freePortRange).
func FreePort(t testing.TB) string {
	t.Helper()
	lo, hi := freePortRange()
	for range 200 {
		port := lo + mrand.IntN(hi-lo)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // taken: try another
		}
		l.Close()
		return fmt.Sprint(port)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
}

// freePortRange is where FreePort looks: the 12,000 ports below the
// kernel's ephemeral range. A port the kernel hands out for outgoing
// connections (every Kafka client opens many) can be taken between the
// moment a free one is picked and the moment a broker binds it; ports
// below that range are never handed out that way.
func freePortRange() (lo, hi int) {
	lo, hi = 20000, 32000
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lo, hi
	}
	var elo, ehi int
	if _, err := fmt.Sscan(string(b), &elo, &ehi); err != nil || elo < 13024 {
		return lo, hi
	}
	return elo - 12000, elo
}

// Eventually polls f every 100 ms until it returns nil or the timeout passes,
// then fails with f's last error. It waits for asynchronous outcomes; it
// never asserts a duration.
func Eventually(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %v", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// SyncBuffer is a bytes.Buffer safe for concurrent writers, for logs that a
// test reads while a process or a goroutine writes them.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
