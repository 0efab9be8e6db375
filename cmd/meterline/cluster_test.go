package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestClusterConfig: clickhouse.cluster and clickhouse.keeper_path are
// refused with an error naming the setting when they cannot work, and
// reach both the store and the migrations when they can.
func TestClusterConfig(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"embedded engine", "clickhouse:\n  cluster: meterline\n", "needs a ClickHouse server (clickhouse.addr)"},
		{"keeper path alone", "clickhouse:\n  addr: [h:9000]\n  keeper_path: /x\n", "clickhouse.keeper_path applies only with clickhouse.cluster"},
		{"hostile cluster name", "clickhouse:\n  addr: [h:9000]\n  cluster: \"c' ; DROP DATABASE meterline --\"\n", "clickhouse.cluster"},
		{"oversized cluster name", "clickhouse:\n  addr: [h:9000]\n  cluster: " + strings.Repeat("c", 500) + "\n", "clickhouse.cluster"},
		{"relative keeper path", "clickhouse:\n  addr: [h:9000]\n  cluster: c\n  keeper_path: clickhouse/tables\n", "keeper path"},
		{"keeper path with a quote", "clickhouse:\n  addr: [h:9000]\n  cluster: c\n  keeper_path: \"/a'b\"\n", "keeper path"},
		{"not a string", "clickhouse:\n  addr: [h:9000]\n  cluster: [a, b]\n", "line 3: cannot unmarshal"},
	} {
		c, err := loadConfig(writeFile(t, tc.yaml), nil)
		if err == nil {
			err = c.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}

	c, err := loadConfig(writeFile(t, "clickhouse:\n  addr: [h:9000]\n  cluster: prod-eu\n  keeper_path: /clickhouse/meterline\n"), nil)
	if err == nil {
		err = c.Validate()
	}
	if err != nil {
		t.Fatal(err)
	}
	sc, err := storeConfig(c)
	if err != nil {
		t.Fatal(err)
	}
	opts := migrateOptions(c)
	if sc.Cluster != "prod-eu" || opts.Layout.Cluster != "prod-eu" || opts.Layout.KeeperPath != "/clickhouse/meterline" {
		t.Errorf("store config cluster %q, migrate layout %+v", sc.Cluster, opts.Layout)
	}
}

// TestMigrateClusterOnEmbeddedCLI: meterline migrate refuses a cluster
// without a server before it opens anything.
func TestMigrateClusterOnEmbeddedCLI(t *testing.T) {
	dir := t.TempDir()
	cfg := writeFile(t, "clickhouse:\n  cluster: meterline\n  data_dir: "+dir+"\n")
	var out, errb bytes.Buffer
	if code := run([]string{"migrate", "--config", cfg}, &out, &errb); code == 0 {
		t.Fatalf("exit 0:\n%s%s", out.String(), errb.String())
	}
	if !strings.Contains(errb.String(), "clickhouse.cluster") || !strings.Contains(errb.String(), "clickhouse.addr") {
		t.Errorf("error does not name the settings:\n%s", errb.String())
	}
}
