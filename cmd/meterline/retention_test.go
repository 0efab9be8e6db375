package main

import (
	"slices"
	"strings"
	"testing"
)

// TestEveryTableWithATTLHasARetentionRule migrates a fresh database and
// lists the tables that expire rows (a TTL in their DDL): each must have a
// rule in retentionRules, so that retention settings, `meterline migrate`
// and `meterline privacy retention` reach it, and each rule must name such
// a table. A migration that adds a table with a TTL fails here until its
// rule is added.
func TestEveryTableWithATTLHasARetentionRule(t *testing.T) {
	dir := t.TempDir()
	if _, stderr, code := runCLI(t, "migrate", "--data-dir", dir); code != 0 {
		t.Fatalf("migrate: exit %d\n%s", code, stderr)
	}
	stdout, stderr, code := runCLI(t, "sql", "--data-dir", dir,
		"SELECT name FROM system.tables WHERE database = currentDatabase() AND create_table_query LIKE '%TTL %' ORDER BY name")
	if code != 0 {
		t.Fatalf("sql: exit %d\n%s", code, stderr)
	}
	lines := strings.Fields(stdout)
	if len(lines) < 2 || lines[0] != "name" {
		t.Fatalf("unexpected output:\n%s", stdout)
	}
	withTTL := lines[1:]
	var c Config
	c.applyDefaults()
	var ruled []string
	for _, r := range retentionRules(&c) {
		ruled = append(ruled, r.Table)
		if !slices.Contains(withTTL, r.Table) {
			t.Errorf("retention rule for %s, which has no TTL (tables with one: %v)", r.Table, withTTL)
		}
	}
	// Tables whose fixed TTL no retention setting governs, and why.
	fixed := map[string]string{"sink_canary": "the sink's health check, one row per sink, gone a week after the last check"}
	for _, name := range withTTL {
		if _, ok := fixed[name]; !ok && !slices.Contains(ruled, name) {
			t.Errorf("table %s expires rows but has no retention rule in retentionRules", name)
		}
	}
	for _, want := range []string{"usage_minute", "usage_key_minute", "usage_key_hour", "usage_key_day", "usage_key_month"} {
		if !slices.Contains(withTTL, want) {
			t.Errorf("%s has no TTL", want)
		}
	}
}
