package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaults(t *testing.T) {
	c, err := loadConfig("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.HTTP.Addr != "127.0.0.1:8080" || c.Kafka.Topic != "requests" || c.Kafka.DeadLetterTopic != "requests.dlq" ||
		c.Retention.RawMonths != 12 || c.Events.MaxPast != 35*24*time.Hour || c.Events.MaxFuture != 5*time.Minute ||
		c.Sink.BatchSize != 10000 || c.ClickHouse.Database != "meterline" || len(c.ClickHouse.Addr) != 0 {
		t.Fatalf("unexpected defaults: %+v", c)
	}
}

func TestFileThenEnvThenFlags(t *testing.T) {
	p := writeFile(t, "http:\n  addr: 127.0.0.1:1111\nkafka:\n  brokers: [a:1]\nsink:\n  flush_interval: 3s\n")
	c, err := loadConfig(p, []string{"METERLINE_HTTP_ADDR=127.0.0.1:2222", "METERLINE_KAFKA_BROKERS=b:1, c:2", "METERLINE_SINK_BATCH_SIZE=500", "METERLINE_CACHE=/x", "PATH=/bin"})
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTP.Addr != "127.0.0.1:2222" || strings.Join(c.Kafka.Brokers, ",") != "b:1,c:2" || c.Sink.BatchSize != 500 || c.Sink.FlushInterval != 3*time.Second {
		t.Fatalf("file/env precedence wrong: %+v", c)
	}
	t.Setenv("METERLINE_HTTP_ADDR", "127.0.0.1:2222")
	f := commonFlags{config: p, httpAddr: "127.0.0.1:3333"}
	c, err = f.load()
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTP.Addr != "127.0.0.1:3333" {
		t.Fatalf("flag did not win: %s", c.HTTP.Addr)
	}
}

// TestBadConfiguration: every bad input names the setting, and all problems
// are reported at once.
func TestBadConfiguration(t *testing.T) {
	cases := []struct {
		name, file string
		env        []string
		want       []string
	}{
		{"unknown key", "htp:\n  addr: x\n", nil, []string{"field htp not found"}},
		{"wrong type", "sink:\n  batch_size: lots\n", nil, []string{"line 2", "lots"}},
		{"not yaml", "{{{", nil, []string{"config"}},
		{"unknown env", "", []string{"METERLINE_HTTP_ADRR=x"}, []string{"METERLINE_HTTP_ADRR does not name a setting"}},
		{"bad env duration", "", []string{"METERLINE_SINK_FLUSH_INTERVAL=soon"}, []string{"METERLINE_SINK_FLUSH_INTERVAL", "duration"}},
		{"bad env int", "", []string{"METERLINE_SINK_BATCH_SIZE=1e9x"}, []string{"not an integer"}},
		{"list from env", "", []string{"METERLINE_AUTH_TOKENS=x"}, []string{"config file"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := ""
			if c.file != "" {
				p = writeFile(t, c.file)
			}
			_, err := loadConfig(p, c.env)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
	p := writeFile(t, `kafka:
  brokers: [nohostport]
  partitions: -1
  sasl: {mechanism: kerberos}
sink:
  batch_size: -5
log:
  level: loud
events:
  max_past: 9000h
clickhouse:
  database: "x; DROP"
retention:
  raw_months: 0
auth:
  tokens:
    - name: gw
      sha256: abc
      scopes: [root]
`)
	c, err := loadConfig(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = c.Validate()
	if err == nil {
		t.Fatal("invalid configuration accepted")
	}
	for _, w := range []string{"kafka.brokers", "kafka.partitions", "kafka.sasl.mechanism", "sink.batch_size", "log.level", "events.max_past", "clickhouse.database", "sha256", "unknown scope"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("validation error does not mention %s:\n%v", w, err)
		}
	}
}

func TestCLI(t *testing.T) {
	cases := []struct {
		args []string
		code int
		out  string
	}{
		{nil, 2, "Commands:"},
		{[]string{"help"}, 0, "serve"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"serve", "--nope"}, 2, "flag provided but not defined"},
		{[]string{"serve", "--roles=collector,bogus"}, 1, `unknown role "bogus"`},
		{[]string{"serve", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"serve", "--config", "/does/not/exist.yaml"}, 1, "no such file"},
		{[]string{"sql"}, 2, "exactly one SQL statement"},
		{[]string{"token"}, 2, "token new"},
		{[]string{"token", "new", "--name", "gw", "--scopes", "root"}, 1, "unknown scope"},
		{[]string{"version"}, 0, "meterline"},
		{[]string{"privacy"}, 2, "retention"},
		{[]string{"privacy", "frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"privacy", "erase"}, 2, "give --customer"},
		{[]string{"serve", "-h"}, 0, "--roles"},
	}
	for _, c := range cases {
		var stdout, stderr bytes.Buffer
		code := run(c.args, &stdout, &stderr)
		all := stdout.String() + stderr.String()
		if code != c.code || !strings.Contains(all, c.out) {
			t.Errorf("meterline %v: exit %d (want %d), output %q does not contain %q", c.args, code, c.code, all, c.out)
		}
	}
}

func TestTokenNew(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"token", "new", "--name", "edge-1", "--scopes", "ingest,customer:acme"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	out := stdout.String()
	if !strings.Contains(out, "ml_") || !strings.Contains(out, "sha256:") || !strings.Contains(out, "customer:acme") {
		t.Fatalf("output: %s", out)
	}
}

// TestPrivacySectionFromFileAndEnv: the privacy section holds the
// anonymisation and the erasure settings side by side, both reachable from
// the file and the environment.
func TestPrivacySectionFromFileAndEnv(t *testing.T) {
	p := writeFile(t, "privacy:\n  ip_mode: drop\n  account_deletion_delay: 720h\n")
	c, err := loadConfig(p, []string{"METERLINE_PRIVACY_ERASED_REFRESH=2s", "METERLINE_PRIVACY_USER_AGENT_MAX_BYTES=64"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Privacy.IPMode != "drop" || c.Privacy.AccountDeletionDelay != 720*time.Hour || c.Privacy.ErasedRefresh != 2*time.Second ||
		c.Privacy.UserAgentMaxBytes != 64 || c.Privacy.ErasureCheckInterval != 24*time.Hour {
		t.Fatalf("privacy section: %+v", c.Privacy)
	}
	c, err = loadConfig("", []string{"METERLINE_PRIVACY_ERASURE_CHECK_INTERVAL=0s", "METERLINE_PRIVACY_ACCOUNT_DELETION_DELAY=-1h"})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Validate()
	if err == nil || !strings.Contains(err.Error(), "privacy.account_deletion_delay") {
		t.Fatalf("negative delay: %v", err)
	}
	if _, err := loadConfig(writeFile(t, "privacy:\n  erase_after: 1h\n"), nil); err == nil || !strings.Contains(err.Error(), "erase_after") {
		t.Fatalf("unknown privacy key: %v", err)
	}
}
