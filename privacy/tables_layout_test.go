package privacy

import (
	"context"
	"strings"
	"testing"

	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/store"
)

// TestTablesOfEveryLayout: replicated engines count as ReplacingMergeTree
// (read with FINAL), and a table named like a cluster's local table
// (NAME_local) is still listed when no Distributed table NAME stands in
// front of it. (Distributed tables themselves need a server's cluster; see
// docs/cluster.md.)
func TestTablesOfEveryLayout(t *testing.T) {
	engine.Require(t)
	if engine.DataDir == "" {
		t.Skip("needs the embedded engine's data directory for a database of its own")
	}
	ctx := context.Background()
	name := strings.ReplaceAll(testenv.Unique("privacy_layout"), "-", "_")
	db, err := store.Open(ctx, store.Config{DataDir: engine.DataDir, Database: name}, testenv.Log())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	defer func() { _ = db.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name) }()
	for _, q := range []string{
		"CREATE TABLE notes_local (customer_id String, at DateTime, v UInt64) ENGINE = ReplacingMergeTree(v) ORDER BY customer_id",
		"CREATE TABLE plain (customer_id String, at DateTime) ENGINE = MergeTree ORDER BY customer_id",
		"CREATE TABLE no_customer (x String) ENGINE = MergeTree ORDER BY x",
	} {
		if err := db.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	tables, err := Tables(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Table{}
	for _, tb := range tables {
		got[tb.Name] = tb
	}
	if len(got) != 2 || !got["notes_local"].Final || got["plain"].Final || got["plain"].Name == "" {
		t.Errorf("tables: %+v", tables)
	}
}
