package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meterline/meterline/bench"
	"github.com/meterline/meterline/internal/testenv"
)

func TestBenchFlagsRejectBadValues(t *testing.T) {
	t.Setenv("METERLINE_CONFIG", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--rate", "-5"}, "rate: -5 events/s is negative"},
		{[]string{"--duration", "0s"}, "duration: 0s must be positive"},
		{[]string{"--dup-rate", "1.5"}, "--dup-rate: 1.5 is out of range 0-1"},
		{[]string{"--late-rate", "-0.1"}, "--late-rate: -0.1 is out of range 0-1"},
		{[]string{"--error-rate", "2"}, "--error-rate: 2 is out of range 0-1"},
		{[]string{"--mode", "grpc"}, `mode: unknown "grpc" (want http or kafka)`},
		{[]string{"--connections", "0"}, "--connections: 0 is out of range"},
		{[]string{"--batch", "20000"}, "batch: 20000 events is out of range"},
		{[]string{"--latency-share", "1.2"}, "latency-share: 1.2 is out of range"},
		{[]string{"--target", "http://127.0.0.1:1"}, "--token and --admin-token are required"},
	} {
		var stderr bytes.Buffer
		_, err := parseBenchFlags(append([]string{"--kafka-brokers", "127.0.0.1:9"}, tc.args...), &stderr)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want it to contain %q", tc.args, err, tc.want)
		}
	}
	// Every problem is reported at once.
	_, err := parseBenchFlags([]string{"--kafka-brokers", "127.0.0.1:9", "--rate", "-1", "--duration", "0s", "--mode", "x"}, &bytes.Buffer{})
	if err == nil || strings.Count(err.Error(), "\n  - ") != 3 {
		t.Errorf("want three problems listed, got %v", err)
	}
}

func TestBenchFlagsDefaults(t *testing.T) {
	t.Setenv("METERLINE_CONFIG", "")
	f, err := parseBenchFlags([]string{"--kafka-brokers", "a:1,b:2", "--dup-rate", "0"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	c := f.cfg
	if c.Duration != time.Minute || c.Rate != 0 || c.Mode != bench.ModeHTTP || !c.Aggregator || c.Binary == "" {
		t.Errorf("defaults: %+v", c)
	}
	if len(c.Brokers) != 2 || c.Traffic.DupRate >= 0 || c.Traffic.LateRate != 0.05 {
		t.Errorf("brokers %v, dup rate %g (0 must mean none), late rate %g", c.Brokers, c.Traffic.DupRate, c.Traffic.LateRate)
	}
}

func TestBenchHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"bench", "-h"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"Usage: meterline bench", "--duration", "-rate", "-profile", "-target", "CHDB_LIB_PATH"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("help lacks %q", want)
		}
	}
	if code := run([]string{"bench", "--rate", "-1", "--kafka-brokers", "x:1"}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "negative") {
		t.Errorf("bad flag: exit %d, stderr %s", code, stderr.String())
	}
}

// TestBenchTinyRunStoresEveryDistinctID runs the real command for 2 s at
// 2,000 events/s (5 % duplicates, 5 % late) against the shared broker,
// with child processes on the embedded engine, and checks the report: every
// distinct id accepted is stored once, latency probes were counted, the
// baselines ran, and the JSON and SVG were written.
func TestBenchTinyRunStoresEveryDistinctID(t *testing.T) {
	testenv.Require(t, testenv.EnvChdb)
	brokers := testenv.KafkaBrokers(t)
	out := t.TempDir()
	cmd := exec.Command(binPath, "bench", "--kafka-brokers", strings.Join(brokers, ","), "--duration", "2s", "--rate", "2000",
		"--latency-duration", "2s", "--baseline-events", "5000", "--customers", "50", "--out", out)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("meterline bench: %v\n%s\n%s", err, stdout.String(), stderr.String())
	}
	t.Logf("\n%s", stdout.String())
	for _, want := range []string{"stored check:", ": OK", "queryable p50", "kafka-go consume", "engine: one bulk insert", "peak RSS", "targets"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("summary lacks %q", want)
		}
	}
	b, err := os.ReadFile(filepath.Join(out, "bench.json"))
	if err != nil {
		t.Fatal(err)
	}
	var res bench.Result
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	if !res.Check.Done || !res.Check.OK || res.Check.DistinctSent < 3000 {
		t.Errorf("stored check %+v", res.Check)
	}
	if len(res.Phases) != 2 || res.Phases[0].Duplicates == 0 || res.Phases[0].Late == 0 || !res.Phases[0].Drained {
		t.Errorf("phases %+v", res.Phases)
	}
	if res.Phases[0].Latency.Probes == 0 || res.Phases[0].Latency.P99 <= 0 {
		t.Errorf("no latency measured: %+v", res.Phases[0].Latency)
	}
	if res.Baseline.KafkaConsume <= 0 || res.Baseline.Insert <= 0 || res.Baseline.KafkaProduce <= 0 {
		t.Errorf("baselines %+v", res.Baseline)
	}
	if len(res.Procs) != 2 || res.Procs[1].PeakRSS <= 0 || res.Procs[0].CPUSeconds <= 0 {
		t.Errorf("processes %+v", res.Procs)
	}
	svg, err := os.ReadFile(filepath.Join(out, "bench.svg"))
	if err != nil || !bytes.HasPrefix(svg, []byte("<svg")) || !bytes.Contains(svg, []byte("<polyline")) {
		t.Errorf("bench.svg: %v\n%.300s", err, svg)
	}
}
