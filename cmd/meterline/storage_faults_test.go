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
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/internal/testenv"
)

// mountSmallDisk mounts a tmpfs of size bytes at dir for the test, or skips
// when this machine does not allow it (mount needs root or CAP_SYS_ADMIN).
func mountSmallDisk(t *testing.T, dir string, size int64) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err != nil {
		t.Skipf("cannot mount a size-limited tmpfs at %s (%v): this test needs root or CAP_SYS_ADMIN", dir, err)
	}
	t.Cleanup(func() {
		_ = syscall.Unmount(dir, syscall.MNT_DETACH)
	})
}

// readOnly makes the tables' data directory (store/ under the embedded
// engine's data directory) read-only or writable again. A read-only remount
// of the whole tmpfs is refused while the engine holds files open for
// writing (its lock file), so the table data gets a bind mount of its own,
// which can be switched alone.
func readOnly(t *testing.T, dataDir string, ro bool) {
	t.Helper()
	sub := filepath.Join(dataDir, "store")
	if ro {
		if err := syscall.Mount(sub, sub, "", syscall.MS_BIND, ""); err != nil {
			t.Fatalf("bind mount %s: %v", sub, err)
		}
		t.Cleanup(func() { _ = syscall.Unmount(sub, syscall.MNT_DETACH) })
	}
	flags := uintptr(syscall.MS_REMOUNT | syscall.MS_BIND)
	if ro {
		flags |= syscall.MS_RDONLY
	}
	if err := syscall.Mount("", sub, "", flags, ""); err != nil {
		t.Fatalf("remount %s (read-only %v): %v", sub, ro, err)
	}
}

// fillDisk writes a file into dir until the disk is full and returns its path.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !strings.Contains(err.Error(), "no space left") {
				t.Fatalf("filling %s: %v", dir, err)
			}
			break
		}
	}
	// The last partial megabyte too.
	for {
		if _, err := f.Write(chunk[:512]); err != nil {
			break
		}
	}
	return path
}

func readyz(addr string) (int, string) {
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// topicCount counts the messages in a topic (end offsets summed: the
// tests' topics are never truncated), polling through a broker's passing
// errors.
func topicCount(t *testing.T, brokers []string, topic string) int64 {
	t.Helper()
	var n int64
	testenv.Eventually(t, 60*time.Second, func() error {
		c := testenv.KafkaClient(brokers)
		md, err := c.Metadata(context.Background(), &kafka.MetadataRequest{Topics: []string{topic}})
		if err != nil || len(md.Topics) != 1 || md.Topics[0].Error != nil {
			return fmt.Errorf("metadata of %s: %v %v", topic, err, md)
		}
		req := &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{}}
		for _, p := range md.Topics[0].Partitions {
			req.Topics[topic] = append(req.Topics[topic], kafka.LastOffsetOf(p.ID))
		}
		res, err := c.ListOffsets(context.Background(), req)
		if err != nil {
			return err
		}
		n = 0
		for _, p := range res.Topics[topic] {
			if p.Error != nil {
				return fmt.Errorf("end offset of %s/%d: %v", topic, p.Partition, p.Error)
			}
			n += p.LastOffset
		}
		return nil
	})
	return n
}

// TestRealEngineOutOfSpaceOrReadOnlyStallsTheSink runs `meterline serve
// --roles sink` with the embedded engine on a small tmpfs, then makes that
// disk read-only, or fills it, while events arrive. The sink must stall:
// /readyz 503 naming the sink, meterline_sink_stalled 1, nothing in the
// dead-letter topic; once the disk is writable again it resumes by itself,
// the gauge is 0, /readyz 200, and every event is stored exactly once.
func TestRealEngineOutOfSpaceOrReadOnlyStallsTheSink(t *testing.T) {
	for _, fault := range []string{"read-only", "full"} {
		t.Run(fault, func(t *testing.T) {
			testenv.Require(t, testenv.EnvChdb)
			brokers := testenv.KafkaBrokers(t)
			topic := testenv.Unique("faults")
			cfgPath, addr := writeConfig(t, strings.Join(brokers, ","), topic, "")
			dataDir := filepath.Join(filepath.Dir(cfgPath), "ch")
			mountSmallDisk(t, dataDir, 256<<20)
			p, logs := start(t, cfgPath, addr, "--roles", "sink")
			testenv.Eventually(t, 90*time.Second, func() error {
				if code, body := readyz(addr); code != http.StatusOK {
					return fmt.Errorf("/readyz %d: %s", code, body)
				}
				return nil
			})
			w := testenv.Writer(t, brokers, topic)
			produce := func(from, n int) {
				var msgs []kafka.Message
				for i := from; i < from+n; i++ {
					key := fmt.Sprintf("key-%d", i%5)
					v, _ := json.Marshal(event(fmt.Sprintf("%s-%d", fault, i), key))
					msgs = append(msgs, kafka.Message{Key: []byte(key), Value: v})
				}
				if err := w.WriteMessages(context.Background(), msgs...); err != nil {
					t.Fatal(err)
				}
			}
			produce(0, 100)
			testenv.Eventually(t, 90*time.Second, func() error {
				n, err := metric(addr, "meterline_sink_events_stored_total")
				if err != nil || n != 100 {
					return fmt.Errorf("stored %v (%v), want 100 before the fault", n, err)
				}
				return nil
			})

			var filler string
			if fault == "read-only" {
				readOnly(t, dataDir, true)
			} else {
				filler = fillDisk(t, dataDir)
			}
			produce(100, 200)
			testenv.Eventually(t, 120*time.Second, func() error {
				if n := topicCount(t, brokers, topic+".dlq"); n != 0 {
					t.Fatalf("%d events dead-lettered during the fault, want 0\n%s", n, logs.String())
				}
				g, err := metric(addr, "meterline_sink_stalled")
				if err != nil || g != 1 {
					return fmt.Errorf("meterline_sink_stalled %v (%v), want 1 during the fault", g, err)
				}
				if code, body := readyz(addr); code != http.StatusServiceUnavailable || !strings.Contains(body, "sink") {
					return fmt.Errorf("/readyz %d %q during the fault, want 503 naming the sink", code, body)
				}
				return nil
			})
			if n, _ := metric(addr, "meterline_sink_events_stored_total"); n != 100 {
				t.Fatalf("stored %v during the fault, want still 100", n)
			}
			if n := topicCount(t, brokers, topic+".dlq"); n != 0 {
				t.Fatalf("%d events dead-lettered during the fault, want 0", n)
			}

			if fault == "read-only" {
				readOnly(t, dataDir, false)
			} else if err := os.Remove(filler); err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, 120*time.Second, func() error {
				n, err := metric(addr, "meterline_sink_events_stored_total")
				if err != nil || n != 300 {
					return fmt.Errorf("stored %v (%v), want 300 after the fault", n, err)
				}
				if g, err := metric(addr, "meterline_sink_stalled"); err != nil || g != 0 {
					return fmt.Errorf("meterline_sink_stalled %v (%v), want 0 after the fault", g, err)
				}
				if code, body := readyz(addr); code != http.StatusOK {
					return fmt.Errorf("/readyz %d %q after the fault", code, body)
				}
				return nil
			})
			stopGracefully(t, p)
			if n := topicCount(t, brokers, topic+".dlq"); n != 0 {
				t.Fatalf("%d events dead-lettered, want 0", n)
			}
			got := sqlRows(t, cfgPath, "SELECT count(), uniqExact(id) FROM events FINAL")
			if len(got) != 1 || strings.Join(strings.Fields(got[0]), " ") != "300 300" {
				t.Fatalf("events stored (count, distinct ids): %q, want 300 300\n%s", got, logs.String())
			}
			for _, line := range strings.Split(logs.String(), "\n") {
				if strings.Contains(line, "sink stalled") {
					t.Logf("the engine's error: %s", line)
				}
			}
		})
	}
}
