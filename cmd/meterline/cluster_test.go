package main

import (
	"bytes"
	"os"
	"path/filepath"
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

// TestMigratePrintDDL: meterline migrate --print-ddl prints, without
// connecting, the statements of store/testdata/ddl for the configured
// layout, and refuses flags that do not fit it.
func TestMigratePrintDDL(t *testing.T) {
	golden := func(name string) string {
		b, err := os.ReadFile(filepath.Join("..", "..", "store", "testdata", "ddl", name+".sql"))
		if err != nil {
			t.Fatal(err)
		}
		// The golden file is the printed DDL under one line saying how it
		// is made.
		_, body, _ := strings.Cut(string(b), "\n")
		return body
	}
	for _, tc := range []struct{ name, yaml, shards, golden string }{
		{"single node", "clickhouse:\n  data_dir: " + t.TempDir() + "\n", "", "single-node"},
		{"one shard", "clickhouse:\n  addr: [127.0.0.1:1]\n  cluster: meterline\n", "1", "replicated"},
		{"three shards", "clickhouse:\n  addr: [127.0.0.1:1]\n  cluster: meterline\n", "3", "sharded"},
	} {
		args := []string{"migrate", "--config", writeFile(t, tc.yaml), "--print-ddl"}
		if tc.shards != "" {
			args = append(args, "--shards", tc.shards)
		}
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 0 {
			t.Errorf("%s: exit %d: %s", tc.name, code, errb.String())
			continue
		}
		if want := golden(tc.golden); out.String() != want {
			t.Errorf("%s: printed DDL is not testdata/ddl/%s.sql:\n%.400s", tc.name, tc.golden, out.String())
		}
	}

	cluster := writeFile(t, "clickhouse:\n  addr: [127.0.0.1:1]\n  cluster: meterline\n")
	single := writeFile(t, "clickhouse:\n  data_dir: "+t.TempDir()+"\n")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"migrate", "--config", cluster, "--print-ddl"}, "needs --shards N"},
		{[]string{"migrate", "--config", cluster, "--print-ddl", "--shards", "-2"}, "needs --shards N"},
		{[]string{"migrate", "--config", cluster, "--print-ddl", "--shards", "99999999"}, "needs --shards N"},
		{[]string{"migrate", "--config", single, "--print-ddl", "--shards", "2"}, "--shards applies only with clickhouse.cluster"},
		{[]string{"migrate", "--config", single, "--shards", "2"}, "--shards applies only with --print-ddl"},
		{[]string{"migrate", "--config", single, "--print-ddl", "--status"}, "cannot be combined"},
	} {
		var out, errb bytes.Buffer
		if code := run(tc.args, &out, &errb); code == 0 || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: exit %d, %q, want %q", tc.args[3:], code, errb.String(), tc.want)
		}
		if out.Len() != 0 {
			t.Errorf("%v: printed %q", tc.args[3:], out.String())
		}
	}
}
