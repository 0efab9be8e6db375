package store

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// serverClusterEnv names the cluster of the server at
// METERLINE_TEST_CLICKHOUSE_ADDR that the cluster tests lay the schema out
// on (a cluster of the server's remote_servers, with {shard} and {replica}
// macros and Keeper configured; see docs/cluster.md).
const serverClusterEnv = "METERLINE_TEST_CLICKHOUSE_CLUSTER"

// clusterConnForTest opens a Conn for the configured cluster in a database
// of its own, dropped ON CLUSTER afterwards, or skips the test.
func clusterConnForTest(t *testing.T) (Conn, Layout) {
	t.Helper()
	addr, cluster := os.Getenv(serverAddrEnv), os.Getenv(serverClusterEnv)
	if addr == "" || cluster == "" {
		t.Skipf("%s and %s not both set: no ClickHouse cluster to test against (the embedded engine cannot run replicated tables; see docs/cluster.md)", serverAddrEnv, serverClusterEnv)
	}
	db := uniqueDB(t)
	cfg := Config{
		Addr:     strings.Split(addr, ","),
		Database: db,
		Username: os.Getenv("METERLINE_TEST_CLICKHOUSE_USER"),
		Password: os.Getenv("METERLINE_TEST_CLICKHOUSE_PASSWORD"),
		Cluster:  cluster,
	}
	c, err := Open(testCtx(t), cfg, testLogger)
	if err != nil {
		t.Fatalf("open cluster %s at %s: %v", cluster, addr, err)
	}
	l, err := resolveLayout(testCtx(t), c, Layout{Cluster: cluster})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = c.Exec(ctx, "DROP DATABASE IF EXISTS "+mustQuote(t, db)+l.onCluster()+" SYNC")
		_ = c.Close()
	})
	return c, l
}

// TestClusterMigrateOnServer runs the cluster layout on a real cluster:
// every table exists with the engine the layout names, a second Migrate
// applies nothing, a batch inserted twice with one dedup token is stored
// once (Keeper's block hashes, through the Distributed table with several
// shards), and a retention change reaches the tables that hold the rows.
func TestClusterMigrateOnServer(t *testing.T) {
	c, l := clusterConnForTest(t)
	applied, err := Migrate(testCtx(t), c, MigrateOptions{}, testLogger)
	if err != nil {
		t.Fatalf("migrate on %s: %v", l.describe(), err)
	}
	plan, err := Plan(MigrateOptions{Layout: l})
	if err != nil {
		t.Fatal(err)
	}
	if len(applied) != len(plan)-1 {
		t.Errorf("applied %d migrations, the plan has %d", len(applied), len(plan)-1)
	}
	if again, err := Migrate(testCtx(t), c, MigrateOptions{}, testLogger); err != nil || len(again) != 0 {
		t.Fatalf("second migrate: %+v, %v", again, err)
	}

	rows, err := c.Query(testCtx(t), "SELECT name, engine FROM system.tables WHERE database = currentDatabase()")
	if err != nil {
		t.Fatal(err)
	}
	engines := map[string]string{}
	for rows.Next() {
		var name, engine string
		if err := rows.Scan(&name, &engine); err != nil {
			t.Fatal(err)
		}
		engines[name] = engine
	}
	_ = rows.Close()
	for _, table := range []string{"events", "event_ids", "usage_minute", "usage_hour", "usage_day", "usage_month",
		"aggregate_state", "billing_ledger", "privacy_erasures", "sink_canary", migrationsTable} {
		e := engines[table]
		switch {
		case l.isShardedTable(table):
			if e != "Distributed" || !strings.HasPrefix(engines[table+LocalSuffix], "Replicated") {
				t.Errorf("%s is %q, %s%s is %q", table, e, table, LocalSuffix, engines[table+LocalSuffix])
			}
		case !strings.HasPrefix(e, "Replicated"):
			t.Errorf("%s is %q, not replicated", table, e)
		}
	}

	// Every replica of every shard has the tables (ON CLUSTER reached them).
	var replicas, want uint64
	queryOne(t, c, "SELECT count() FROM clusterAllReplicas({c:String}, system.tables) WHERE database = currentDatabase() AND name = 'schema_migrations'",
		[]Param{P("c", l.Cluster)}, &replicas)
	queryOne(t, c, "SELECT count() FROM system.clusters WHERE cluster = {c:String}", []Param{P("c", l.Cluster)}, &want)
	if replicas != want {
		t.Errorf("schema_migrations on %d of %d replicas", replicas, want)
	}

	now := time.Now().UTC().Truncate(time.Millisecond)
	batch := make([][]any, 40)
	for i := range batch {
		batch[i] = eventRow("ev_"+itoa3(i), now.Add(-time.Duration(i)*time.Minute), i)
	}
	for range 2 {
		if err := c.Insert(testCtx(t), "events", eventColumns, batch, InsertOptions{DedupToken: "cluster-test-batch-1"}); err != nil {
			t.Fatal(err)
		}
	}
	if n := count(t, c, "SELECT count() FROM events"); n != int64(len(batch)) {
		t.Errorf("a batch inserted twice with one token: %d rows, want %d", n, len(batch))
	}

	rules := []RetentionRule{{Table: "events", Column: "time", Months: 3}}
	if changed, err := ApplyRetention(testCtx(t), c, rules, testLogger); err != nil || len(changed) != 1 {
		t.Fatalf("retention change: %v, %v", changed, err)
	}
	if changed, err := ApplyRetention(testCtx(t), c, rules, testLogger); err != nil || len(changed) != 0 {
		t.Errorf("retention applied again: %v, %v (read from the wrong table?)", changed, err)
	}
	mustExec(t, c, "ALTER TABLE events DELETE WHERE id = 'ev_000' SETTINGS mutations_sync = 2")
	if n := count(t, c, "SELECT count() FROM events"); n != int64(len(batch)-1) {
		t.Errorf("after deleting one event: %d rows, want %d", n, len(batch)-1)
	}
}

func itoa3(i int) string {
	return string([]byte{byte('0' + i/100%10), byte('0' + i/10%10), byte('0' + i%10)})
}
