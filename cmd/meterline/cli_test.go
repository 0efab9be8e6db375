package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/meterline/meterline/internal/testenv"
)

// TestCLIFlagsAndOutput: --version works as the README writes it; each
// command lists only the common flags that change what it does; a one-shot
// command prints its answer without the engine's start-up log unless a log
// level is asked for.
func TestCLIFlagsAndOutput(t *testing.T) {
	for _, v := range []string{"--version", "-version", "-v", "version"} {
		stdout, stderr, code := runCLI(t, v)
		if code != 0 || !strings.HasPrefix(stdout, "meterline ") || !strings.Contains(stdout, "go1.") {
			t.Errorf("meterline %s: exit %d, %q %q", v, code, stdout, stderr)
		}
	}
	for _, c := range []struct {
		args      []string
		has, lack []string
	}{
		{[]string{"sql", "-h"}, []string{"-config", "-data-dir", "-clickhouse-addr", "-log-level"}, []string{"-kafka-brokers", "-http-addr"}},
		{[]string{"migrate", "-h"}, []string{"-data-dir"}, []string{"-kafka-brokers", "-http-addr"}},
		{[]string{"billing", "reconcile", "-h"}, []string{"-data-dir"}, []string{"-kafka-brokers", "-http-addr"}},
		{[]string{"privacy", "erase", "-h"}, []string{"-data-dir"}, []string{"-kafka-brokers", "-http-addr"}},
		{[]string{"dlq", "list", "-h"}, []string{"-kafka-brokers"}, []string{"-data-dir", "-http-addr", "-clickhouse-addr"}},
		{[]string{"serve", "-h"}, []string{"-kafka-brokers", "-http-addr", "-data-dir"}, nil},
	} {
		_, stderr, code := runCLI(t, c.args...)
		if code != 0 {
			t.Errorf("meterline %s: exit %d", strings.Join(c.args, " "), code)
		}
		for _, f := range c.has {
			if !strings.Contains(stderr, "  "+f+" ") {
				t.Errorf("meterline %s does not list %s:\n%s", strings.Join(c.args, " "), f, stderr)
			}
		}
		for _, f := range c.lack {
			if strings.Contains(stderr, "  "+f+" ") {
				t.Errorf("meterline %s lists %s, which it does not use:\n%s", strings.Join(c.args, " "), f, stderr)
			}
		}
	}
	if _, stderr, code := runCLI(t, "sql", "--kafka-brokers", "x:1", "SELECT 1"); code != 2 || !strings.Contains(stderr, "flag provided but not defined: -kafka-brokers") {
		t.Errorf("sql --kafka-brokers: exit %d: %s", code, stderr)
	}

	testenv.Require(t, testenv.EnvChdb)
	dir := filepath.Join(t.TempDir(), "ch")
	stdout, stderr, code := runCLI(t, "sql", "--data-dir", dir, "SELECT 40 + 2 AS answer")
	if code != 0 || !strings.Contains(stdout, "42") || strings.Contains(stderr, "engine started") {
		t.Errorf("sql: exit %d, stdout %q, stderr %q (want the answer and no start-up log)", code, stdout, stderr)
	}
	_, stderr, code = runCLI(t, "sql", "--data-dir", dir, "--log-level", "info", "SELECT 1")
	if code != 0 || !strings.Contains(stderr, "embedded ClickHouse engine started") {
		t.Errorf("sql --log-level info: exit %d, stderr %q (want the start-up log)", code, stderr)
	}
}
