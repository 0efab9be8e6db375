package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/internal/testenv"
)

// TestDLQListShowReplay dead-letters events through a real sink whose
// lateness window is too short (events.max_past 1h for events 2 hours old),
// lists and shows them with `meterline dlq`, fixes the window and replays
// them (twice): every event is stored once, the unparsable message stays in
// the dead-letter topic, and bad flags get a usage error.
func TestDLQListShowReplay(t *testing.T) {
	testenv.Require(t, testenv.EnvChdb)
	brokers := testenv.KafkaBrokers(t)
	topic := testenv.Unique("dlq")
	cfgPath, addr := writeConfig(t, strings.Join(brokers, ","), topic, "events:\n  max_past: 1h\n")
	p, _ := start(t, cfgPath, addr, "--roles", "sink")
	w := testenv.Writer(t, brokers, topic)
	var msgs []kafka.Message
	for i := 0; i < 10; i++ {
		ev := event(fmt.Sprintf("late-%d", i), "key-late")
		ev["time"] = time.Now().Add(-2 * time.Hour).UTC().Format(time.RFC3339Nano)
		v, _ := json.Marshal(ev)
		msgs = append(msgs, kafka.Message{Key: []byte("key-late"), Value: v})
	}
	for i := 0; i < 5; i++ {
		v, _ := json.Marshal(event(fmt.Sprintf("ok-%d", i), "key-ok"))
		msgs = append(msgs, kafka.Message{Key: []byte("key-ok"), Value: v})
	}
	msgs = append(msgs, kafka.Message{Key: []byte("key-bad"), Value: []byte("not json")})
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 90*time.Second, func() error {
		d, err1 := metric(addr, "meterline_sink_events_dead_lettered_total")
		s, err2 := metric(addr, "meterline_sink_events_stored_total")
		if err1 != nil || err2 != nil || d != 11 || s != 5 {
			return fmt.Errorf("dead-lettered %v (%v), stored %v (%v); want 11 and 5", d, err1, s, err2)
		}
		return nil
	})
	stopGracefully(t, p)

	// list: every dead letter, then filtered.
	out, errOut, code := runCLI(t, "dlq", "list", "--config", cfgPath)
	if code != 0 || !strings.Contains(out, "11 dead letter(s)") || strings.Count(out, "invalid") != 11 {
		t.Fatalf("dlq list: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = runCLI(t, "dlq", "list", "--config", cfgPath, "--reason", "TIME", "--class", "invalid")
	if code != 0 || !strings.Contains(out, "10 dead letter(s)") || strings.Contains(out, "not json") {
		t.Fatalf("dlq list --reason TIME: exit %d\n%s%s", code, out, errOut)
	}
	out, _, _ = runCLI(t, "dlq", "list", "--config", cfgPath, "--limit", "3")
	if !strings.Contains(out, "3 dead letter(s)") {
		t.Fatalf("dlq list --limit 3:\n%s", out)
	}
	// show: the unparsable message, found by its reason.
	out, _, _ = runCLI(t, "dlq", "list", "--config", cfgPath, "--reason", "json")
	m := regexp.MustCompile(`(?m)^(\d+)\s+(\d+)\s`).FindStringSubmatch(strings.SplitN(out, "\n", 2)[1])
	if m == nil {
		t.Fatalf("no dead letter about JSON in:\n%s", out)
	}
	out, errOut, code = runCLI(t, "dlq", "show", "--config", cfgPath, m[1]+"/"+m[2])
	if code != 0 || !strings.Contains(out, "not json") || !strings.Contains(out, "class:     invalid") || !strings.Contains(out, "source:    "+topic+"/") {
		t.Fatalf("dlq show %s/%s: exit %d\n%s%s", m[1], m[2], code, out, errOut)
	}

	// Bad flags and arguments: a usage error (exit 2) naming the problem.
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"dlq"}, "Usage: meterline dlq"},
		{[]string{"dlq", "purge"}, `unknown dlq command "purge"`},
		{[]string{"dlq", "list", "--from", "3"}, "needs a partition"},
		{[]string{"dlq", "list", "--partition", "0", "--from", "5", "--to", "2"}, "is empty"},
		{[]string{"dlq", "list", "--partition", "-4"}, "negative"},
		{[]string{"dlq", "list", "--limit", "-1"}, "negative"},
		{[]string{"dlq", "list", "--bogus"}, "flag provided but not defined"},
		{[]string{"dlq", "list", "extra"}, `unexpected argument "extra"`},
		{[]string{"dlq", "show"}, "exactly one PARTITION/OFFSET"},
		{[]string{"dlq", "show", "1-2"}, "is not PARTITION/OFFSET"},
		{[]string{"dlq", "show", "0/-1"}, "is not PARTITION/OFFSET"},
		{[]string{"dlq", "replay"}, "choose what to replay"},
		{[]string{"dlq", "replay", "--all", "--class", "invalid"}, "not both"},
	} {
		args := bad.args
		if len(bad.args) > 1 { // the flags before any argument
			args = append(append(append([]string(nil), bad.args[:2]...), "--config", cfgPath), bad.args[2:]...)
		}
		out, errOut, code := runCLI(t, args...)
		if code != 2 || !strings.Contains(errOut, bad.want) {
			t.Errorf("meterline %s: exit %d, stderr %q; want 2 and %q (stdout %q)", strings.Join(bad.args, " "), code, errOut, bad.want, out)
		}
	}
	// A position that holds nothing is an error, not a usage error.
	if _, errOut, code := runCLI(t, "dlq", "show", "--config", cfgPath, "0/999999"); code != 1 || !strings.Contains(errOut, "no dead letter") {
		t.Errorf("dlq show 0/999999: exit %d %q, want 1 and no dead letter", code, errOut)
	}

	// Fix the window, replay (dry run first, then twice), run the sink.
	cfg, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfgPath, []byte(strings.Replace(string(cfg), "max_past: 1h", "max_past: 840h", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = runCLI(t, "dlq", "replay", "--config", cfgPath, "--reason", "time", "--dry-run")
	if code != 0 || !strings.Contains(out, "would replay 10 dead letter(s)") {
		t.Fatalf("dlq replay --dry-run: exit %d\n%s%s", code, out, errOut)
	}
	for i := 0; i < 2; i++ {
		out, errOut, code = runCLI(t, "dlq", "replay", "--config", cfgPath, "--reason", "time")
		if code != 0 || !strings.Contains(out, "replayed 10 dead letter(s)") || !strings.Contains(errOut, "100%") {
			t.Fatalf("dlq replay: exit %d\n%s%s", code, out, errOut)
		}
	}
	p, _ = start(t, cfgPath, addr, "--roles", "sink")
	testenv.Eventually(t, 90*time.Second, func() error {
		s, err := metric(addr, "meterline_sink_events_stored_total")
		if err != nil || s < 10 {
			return fmt.Errorf("stored %v (%v) after the replay, want the 10 replayed events", s, err)
		}
		if lag, err := metric(addr, "meterline_sink_consumer_lag_messages"); err != nil || lag != 0 {
			return fmt.Errorf("lag %v (%v), want 0", lag, err)
		}
		return nil
	})
	stopGracefully(t, p)
	got := sqlRows(t, cfgPath, "SELECT count(), uniqExact(id) FROM events FINAL")
	if len(got) != 1 || strings.Join(strings.Fields(got[0]), " ") != "15 15" {
		t.Fatalf("events stored (count, distinct ids): %q, want 15 15 (each replayed event once)", got)
	}
	out, _, _ = runCLI(t, "dlq", "list", "--config", cfgPath)
	if !strings.Contains(out, "11 dead letter(s)") {
		t.Fatalf("after the replay the dead-letter topic holds:\n%s", out)
	}
}
