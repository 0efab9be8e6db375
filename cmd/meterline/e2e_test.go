package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/auth"
	"github.com/meterline/meterline/ingest"
	"github.com/meterline/meterline/internal/testenv"
)

// binPath is the meterline binary built once for the end-to-end tests, which
// run it as separate processes so they can kill it.
var binPath string

func TestMain(m *testing.M) {
	code := func() int {
		dir, err := os.MkdirTemp("", "meterline-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		defer removeStaticBinary()
		binPath = filepath.Join(dir, "meterline")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "building meterline: %v\n%s", err, out)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

const e2eIngestToken = "e2e-ingest"
const e2eAdminToken = "e2e-admin"

// node is one meterline process under test.
type node struct {
	t       *testing.T
	cfgPath string
	addr    string
	cmd     *exec.Cmd
	log     *bytes.Buffer
	mu      sync.Mutex
}

// writeConfig writes a configuration for a test stack: its own topic, data
// directory and HTTP port.
func writeConfig(t testing.TB, brokers, topic, extra string) (path, addr string) {
	t.Helper()
	return writeConfigKafka(t, brokers, topic, "", extra)
}

// writeConfigKafka is writeConfig with more lines in the kafka section
// (kafkaExtra, indented by two spaces, e.g. tls and sasl).
func writeConfigKafka(t testing.TB, brokers, topic, kafkaExtra, extra string) (path, addr string) {
	t.Helper()
	dir := t.TempDir()
	addr = "127.0.0.1:" + testenv.FreePort(t)
	cfg := fmt.Sprintf(`http:
  addr: %s
kafka:
  brokers: [%s]
  topic: %s
  partitions: 3
%sclickhouse:
  data_dir: %s
collector:
  produce_timeout: 3s
sink:
  group_id: %s-sink
  batch_size: 1000
  flush_interval: 200ms
  retry_min: 50ms
  retry_max: 1s
  session_timeout: 6s
auth:
  tokens:
    - name: e2e-gateway
      sha256: %s
      scopes: [ingest]
    - name: e2e-admin
      sha256: %s
      scopes: [admin]
%s`, addr, brokers, topic, kafkaExtra, filepath.Join(dir, "ch"), topic, auth.Hash(e2eIngestToken), auth.Hash(e2eAdminToken), extra)
	path = filepath.Join(dir, "meterline.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, addr
}

// proc is a running meterline process.
type proc struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

// startCmd runs `meterline serve`; the process is killed at the end of the test.
func startCmd(t *testing.T, cfgPath string, logs *testenv.SyncBuffer, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(binPath, append([]string{"serve", "--config", cfgPath}, args...)...)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("meterline log:\n%s", logs.String())
		}
	})
	return p
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// start runs `meterline serve` and waits until /healthz answers.
func start(t *testing.T, cfgPath, addr string, args ...string) (*proc, *testenv.SyncBuffer) {
	t.Helper()
	logs := &testenv.SyncBuffer{}
	p := startCmd(t, cfgPath, logs, args...)
	exited := p.exited
	testenv.Eventually(t, 90*time.Second, func() error {
		select {
		case <-exited:
			t.Fatalf("meterline exited early:\n%s", logs.String())
		default:
		}
		resp, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	return p, logs
}

// metric returns the sum of a metric's samples from /metrics.
func metric(addr, name string) (float64, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var sum float64
	found := false
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, err
		}
		sum += v
		found = true
	}
	if !found {
		return 0, fmt.Errorf("metric %s not exposed", name)
	}
	return sum, nil
}

// sqlCount runs `meterline sql` (the serving process must be stopped: the
// embedded engine's directory is held by one process).
func sqlRows(t testing.TB, cfgPath, query string) []string {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(binPath, "sql", "--config", cfgPath, query)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("meterline sql %q: %v\n%s%s", query, err, out, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[1:] // drop the header
}

func stopGracefully(t *testing.T, p *proc) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(60 * time.Second):
		t.Fatal("meterline did not stop within 60s of SIGTERM")
	}
}

func event(id, key string) map[string]any {
	return map[string]any{
		"id": id, "time": time.Now().Add(-time.Minute).UTC().Format(time.RFC3339Nano), "api_key_id": key,
		"customer_id": "cust-e2e", "method": "GET", "route": "/v1/items/{id}", "status": 200,
		"latency_ms": 3.5, "client_ip": "198.51.100.23",
	}
}

// TestSinkKilledMidBatchLosesAndDuplicatesNothing produces events straight
// to Kafka (with duplicates), SIGKILLs the sink three times while it works,
// restarts it, and counts: every distinct id stored exactly once.
func TestSinkKilledMidBatchLosesAndDuplicatesNothing(t *testing.T) {
	testenv.Require(t, testenv.EnvChdb)
	brokers := testenv.KafkaBrokers(t)
	topic := testenv.Unique("e2e-kill")
	cfgPath, addr := writeConfig(t, strings.Join(brokers, ","), topic, "")
	key := testenv.Unique("key")

	// The topic is created by meterline at start; produce after the first start.
	cmd, _ := start(t, cfgPath, addr, "--roles=sink")
	w := testenv.Writer(t, brokers, topic)
	w.BatchSize = 1000
	// Events flow the whole time, so every kill lands while batches are
	// being read, inserted or committed.
	var distinct int
	stopProducing := make(chan struct{})
	produced := make(chan error, 1)
	go func() {
		for chunk := 0; ; chunk++ {
			select {
			case <-stopProducing:
				produced <- nil
				return
			default:
			}
			var msgs []kafka.Message
			for i := 0; i < 500; i++ {
				v, _ := json.Marshal(event(fmt.Sprintf("k-%d-%d", chunk, i), key))
				msgs = append(msgs, kafka.Message{Key: []byte(key), Value: v})
				if i%10 == 0 { // 10 % duplicates, as a retrying gateway would send
					msgs = append(msgs, kafka.Message{Key: []byte(key), Value: v})
				}
			}
			if err := w.WriteMessages(context.Background(), msgs...); err != nil {
				produced <- err
				return
			}
			distinct += 500
			time.Sleep(100 * time.Millisecond)
		}
	}()
	t0 := time.Now()
	for kill := 0; kill < 3; kill++ {
		testenv.Eventually(t, 60*time.Second, func() error {
			n, err := metric(addr, "meterline_sink_events_stored_total")
			if err != nil || n < 1 {
				return fmt.Errorf("no batch stored yet (%v, %v)", n, err)
			}
			return nil
		})
		time.Sleep(time.Duration(rand.IntN(300)) * time.Millisecond)
		t.Logf("%s: kill %d after a stored batch", time.Since(t0).Round(time.Millisecond), kill+1)
		cmd.kill()
		cmd, _ = start(t, cfgPath, addr, "--roles=sink")
	}
	close(stopProducing)
	if err := <-produced; err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 120*time.Second, func() error {
		c := testenv.KafkaClient(brokers)
		lag, err := ingest.GroupLag(context.Background(), c, topic+"-sink", topic)
		if err != nil || ingest.TotalLag(lag) > 0 {
			return fmt.Errorf("sink group not caught up: lag %v (%v)", lag, err)
		}
		return nil
	})
	t.Logf("%s: caught up", time.Since(t0).Round(time.Millisecond))
	stopGracefully(t, cmd)

	count := func(q string) string {
		return strings.Join(strings.Fields(sqlRows(t, cfgPath, q)[0]), " ")
	}
	where := fmt.Sprintf(" WHERE api_key_id = '%s'", key)
	physical := count("SELECT count() FROM events" + where)
	final := count("SELECT count(), uniqExact(id) FROM events FINAL" + where)
	want := fmt.Sprintf("%d %d", distinct, distinct)
	if final != want {
		t.Fatalf("count(), uniqExact(id) FINAL = %s, want %s (physical rows before merge: %s)", final, want, physical)
	}
	// Redelivered batches may be stored physically twice until a merge
	// collapses them; after the merge the table itself holds each id once.
	sqlRows(t, cfgPath, "OPTIMIZE TABLE events FINAL")
	merged := count("SELECT count(), uniqExact(id) FROM events" + where)
	if merged != want {
		t.Fatalf("after merge count(), uniqExact(id) = %s, want %s", merged, want)
	}
	t.Logf("%d distinct ids, 3 SIGKILLs: %s physical rows before merge, %s after", distinct, physical, merged)
}

// TestBrokerRestartWhileEventsFlow posts events continuously while a
// dedicated broker is stopped and restarted: the collector answers 503
// while it is down, and every event acknowledged with 202 is stored.
func TestBrokerRestartWhileEventsFlow(t *testing.T) {
	testenv.Require(t, testenv.EnvChdb)
	broker := testenv.StartBroker(t)
	topic := testenv.Unique("e2e-restart")
	cfgPath, addr := writeConfig(t, broker.Addr, topic, "")
	key := testenv.Unique("key")
	cmd, _ := start(t, cfgPath, addr)

	var mu sync.Mutex
	acked := map[string]bool{}
	var n202, n503, nOther int
	stopPosting := make(chan struct{})
	posted := make(chan struct{})
	go func() {
		defer close(posted)
		client := &http.Client{Timeout: 30 * time.Second}
		for b := 0; ; b++ {
			select {
			case <-stopPosting:
				return
			default:
			}
			var batch []any
			var ids []string
			for i := 0; i < 50; i++ {
				id := fmt.Sprintf("b%d-%d", b, i)
				ids = append(ids, id)
				batch = append(batch, event(id, key))
			}
			body, _ := json.Marshal(batch)
			req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/events", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+e2eIngestToken)
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			mu.Lock()
			switch {
			case err != nil:
				nOther++
			case resp.StatusCode == 202:
				n202++
				for _, id := range ids {
					acked[id] = true
				}
			case resp.StatusCode == 503:
				n503++
				if resp.Header.Get("Retry-After") == "" {
					t.Errorf("503 without Retry-After")
				}
			default:
				nOther++
				b, _ := io.ReadAll(resp.Body)
				t.Errorf("unexpected status %d: %s", resp.StatusCode, b)
			}
			mu.Unlock()
			if resp != nil {
				resp.Body.Close()
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	counts := func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		return n202, n503
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		if a, _ := counts(); a < 10 {
			return fmt.Errorf("%d batches accepted so far", a)
		}
		return nil
	})
	broker.Stop()
	testenv.Eventually(t, 60*time.Second, func() error {
		if _, u := counts(); u < 2 {
			return fmt.Errorf("%d answers 503 so far", u)
		}
		return nil
	})
	broker.Restart()
	a0, _ := counts()
	testenv.Eventually(t, 90*time.Second, func() error {
		if a, _ := counts(); a < a0+10 {
			return fmt.Errorf("%d batches accepted since the restart", a-a0)
		}
		return nil
	})
	close(stopPosting)
	<-posted
	mu.Lock()
	want := len(acked)
	t.Logf("202: %d batches (%d events), 503: %d, transport errors: %d", n202, want, n503, nOther)
	mu.Unlock()
	testenv.Eventually(t, 120*time.Second, func() error {
		stored, err := metric(addr, "meterline_sink_events_stored_total")
		if err != nil {
			return err
		}
		if int(stored) < want {
			return fmt.Errorf("stored %v of %d acknowledged", stored, want)
		}
		return nil
	})
	stopGracefully(t, cmd)
	rows := sqlRows(t, cfgPath, fmt.Sprintf("SELECT id FROM events FINAL WHERE api_key_id = '%s'", key))
	stored := map[string]bool{}
	for _, r := range rows {
		stored[strings.TrimSpace(r)] = true
	}
	missing := 0
	for id := range acked {
		if !stored[id] {
			missing++
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged events are not stored", missing, want)
	}
	if len(rows) != len(stored) {
		t.Fatalf("FINAL returned %d rows for %d distinct ids", len(rows), len(stored))
	}
}
