package store

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// DefaultKeeperPath is the prefix of the replicated tables' paths in
// ClickHouse Keeper (or ZooKeeper) when Layout.KeeperPath is empty.
const DefaultKeeperPath = "/clickhouse/tables"

// LocalSuffix is added to the name of a sharded table's local part on a
// cluster of more than one shard; the table's own name is then the
// Distributed table that reads and writes every shard.
const LocalSuffix = "_local"

// shardingKeys names the tables that are split across the shards of a
// multi-shard cluster, with their sharding key. Every key keeps one
// customer's rows on one shard, so FINAL, the rollups' IN subqueries and a
// customer's erasure work shard by shard. The tables of everyNode (the
// watermark, the ledgers, the privacy log, the migrations' record) are
// small and are replicated to every node of the cluster instead. With
// several shards a table in neither list is refused, so that a new table is
// placed on purpose.
var shardingKeys = map[string]string{
	"events":           "cityHash64(customer_id)",
	"event_ids":        "cityHash64(customer_id)",
	"usage_minute":     "cityHash64(customer_id)",
	"usage_hour":       "cityHash64(customer_id)",
	"usage_day":        "cityHash64(customer_id)",
	"usage_month":      "cityHash64(customer_id)",
	"usage_key_minute": "cityHash64(customer_id)",
	"usage_key_hour":   "cityHash64(customer_id)",
	"usage_key_day":    "cityHash64(customer_id)",
	"usage_key_month":  "cityHash64(customer_id)",
}

// everyNode names the small tables every node of a cluster holds whole.
var everyNode = map[string]bool{
	"aggregate_state":   true,
	"alert_deliveries":  true,
	"billing_ledger":    true,
	"billing_invoices":  true,
	"privacy_erasures":  true,
	"privacy_audit":     true,
	"sink_canary":       true,
	"schema_migrations": true,
}

// Layout says how Migrate lays the schema out on a ClickHouse server. The
// zero Layout is a single node: the migration files run as written. With
// a Cluster, every statement is transformed (see Layout.Statements).
type Layout struct {
	// Cluster is the name of a cluster of the server's remote_servers.
	// Every table is created ON CLUSTER with a Replicated engine. Empty
	// (the default): a single node.
	Cluster string
	// Shards is the cluster's number of shards. 0 makes Migrate read it
	// from system.clusters. With more than one, the tables of
	// shardingKeys get a local table (name + LocalSuffix) on every shard
	// and a Distributed table under their own name.
	Shards int
	// KeeperPath is the prefix of the replicated tables' Keeper paths:
	// KeeperPath/{shard}/database/table for tables of one shard and
	// KeeperPath/all/database/table for the tables replicated to every
	// node of a multi-shard cluster. Default DefaultKeeperPath.
	KeeperPath string
	// Database is the database the tables live in, written into the
	// Keeper paths and the Distributed engines. Empty makes Migrate use
	// the connection's current database.
	Database string
}

var (
	clusterNameRe = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	keeperPathRe  = regexp.MustCompile(`^(/[A-Za-z0-9_.-]+)+$`)
	plainIdentRe  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// Validate checks the layout's names; Shards and Database may still be
// unknown (0, empty) when Migrate fills them in.
func (l Layout) Validate() error {
	if l.Cluster == "" {
		if l.Shards > 1 || l.KeeperPath != "" {
			return fmt.Errorf("store: layout: shards and keeper path need a cluster name")
		}
		return nil
	}
	if !clusterNameRe.MatchString(l.Cluster) {
		return fmt.Errorf("store: layout: cluster name %q must be 1-128 letters, digits, '_', '.' or '-' (not starting with '.' or '-')", l.Cluster)
	}
	if l.Shards < 0 || l.Shards > 10000 {
		return fmt.Errorf("store: layout: %d shards is out of range 1-10000", l.Shards)
	}
	if l.KeeperPath != "" && !keeperPathRe.MatchString(l.KeeperPath) {
		return fmt.Errorf("store: layout: keeper path %q must look like /a/b (letters, digits, '_', '.', '-'; no trailing slash)", l.KeeperPath)
	}
	if l.Database != "" && !plainIdentRe.MatchString(l.Database) {
		return fmt.Errorf("store: layout: database %q must match [A-Za-z_][A-Za-z0-9_]*", l.Database)
	}
	return nil
}

func (l Layout) sharded() bool { return l.Cluster != "" && l.Shards > 1 }

func (l Layout) keeperPath() string {
	if l.KeeperPath == "" {
		return DefaultKeeperPath
	}
	return l.KeeperPath
}

// onCluster is the ON CLUSTER clause, with a leading space.
func (l Layout) onCluster() string {
	if plainIdentRe.MatchString(l.Cluster) {
		return " ON CLUSTER " + l.Cluster
	}
	return " ON CLUSTER `" + l.Cluster + "`"
}

// isShardedTable reports whether table is split across shards in l.
func (l Layout) isShardedTable(table string) bool {
	_, ok := shardingKeys[table]
	return l.sharded() && ok
}

// replication returns the Keeper path and replica name of the table that
// the migration files call table, created as target.
func (l Layout) replication(table, target string) (path, replica string) {
	if l.sharded() && !l.isShardedTable(table) {
		// One replication group over every node: replica names must be
		// unique across shards, not only within one.
		return l.keeperPath() + "/all/" + l.Database + "/" + target, "{shard}-{replica}"
	}
	return l.keeperPath() + "/{shard}/" + l.Database + "/" + target, "{replica}"
}

// The statement shapes that a cluster layout knows how to transform. They
// are matched against the statement with comments and string contents
// blanked out (maskSQL), so positions carry over to the original text.
var (
	createTableRe  = regexp.MustCompile(`(?is)^\s*CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?([A-Za-z_][A-Za-z0-9_]*)\b`)
	alterTableRe   = regexp.MustCompile(`(?is)^\s*ALTER\s+TABLE\s+([A-Za-z_][A-Za-z0-9_]*)\b`)
	insertIntoRe   = regexp.MustCompile(`(?is)^\s*INSERT\s+INTO\b`)
	engineRe       = regexp.MustCompile(`(?i)\bENGINE\s*=\s*([A-Za-z]+)`)
	mergeTreeRe    = regexp.MustCompile(`^(Replacing|Aggregating|Summing|Collapsing|VersionedCollapsing)?MergeTree$`)
	dedupWindowRe  = regexp.MustCompile(`(?i)\bnon_replicated_deduplication_window\b`)
	columnAlterRe  = regexp.MustCompile(`(?is)^\s*(ADD|DROP|MODIFY|RENAME|COMMENT|CLEAR)\s+COLUMN\b`)
	onClusterRe    = regexp.MustCompile(`(?i)\bON\s+CLUSTER\b`)
	qualifiedAfter = regexp.MustCompile(`^\s*\.`)
)

// Statements returns what one statement of a migration file becomes in the
// layout: the statement itself on a single node; on a cluster the same
// statement ON CLUSTER with a Replicated engine, and for a sharded table
// of a multi-shard cluster its local table plus a Distributed table (or,
// for an ALTER, the ALTER of the local table and, for column changes, of
// the Distributed table too). It refuses statements it cannot lay out
// (other kinds, engines that are not of the MergeTree family, tables
// already replicated, a qualified table name, an ON CLUSTER of its own),
// so that a new migration that needs another rule fails its golden test
// instead of creating a wrong table on a cluster.
func (l Layout) Statements(stmt string) ([]string, error) {
	if l.Cluster == "" {
		return []string{stmt}, nil
	}
	masked := maskSQL(stmt)
	if onClusterRe.MatchString(masked) {
		return nil, fmt.Errorf("store: cluster layout: %q already has ON CLUSTER; write migrations for one node, the layout adds it", snippet(stmt))
	}
	switch {
	case createTableRe.MatchString(masked):
		return l.createTable(stmt, masked)
	case alterTableRe.MatchString(masked):
		return l.alterTable(stmt, masked)
	case insertIntoRe.MatchString(masked):
		// Through the Distributed tables on several shards (rows go to the
		// shard of their key), into the local replica otherwise (the others
		// fetch the part).
		return []string{stmt}, nil
	}
	return nil, fmt.Errorf("store: cluster layout: cannot lay out %q on a cluster: only CREATE TABLE, ALTER TABLE and INSERT are known", snippet(stmt))
}

func (l Layout) createTable(stmt, masked string) ([]string, error) {
	m := createTableRe.FindStringSubmatchIndex(masked)
	table := stmt[m[2]:m[3]]
	if qualifiedAfter.MatchString(masked[m[3]:]) {
		return nil, fmt.Errorf("store: cluster layout: table %s: name it without a database", table)
	}
	e := engineRe.FindStringSubmatchIndex(masked[m[1]:])
	if e == nil {
		return nil, fmt.Errorf("store: cluster layout: table %s has no ENGINE clause", table)
	}
	for i := range e {
		e[i] += m[1]
	}
	engine := stmt[e[2]:e[3]]
	if !mergeTreeRe.MatchString(engine) {
		return nil, fmt.Errorf("store: cluster layout: table %s: engine %s is not one of the MergeTree family that the layout replicates", table, engine)
	}
	// Optional engine arguments right after the name.
	argsEnd, args := e[3], ""
	if rest := masked[e[3]:]; strings.HasPrefix(strings.TrimLeft(rest, " \t\r\n"), "(") {
		open := e[3] + strings.Index(rest, "(")
		closing := matchParen(masked, open)
		if closing < 0 {
			return nil, fmt.Errorf("store: cluster layout: table %s: unbalanced engine arguments", table)
		}
		args = strings.TrimSpace(stmt[open+1 : closing])
		argsEnd = closing + 1
	}
	if _, sharded := shardingKeys[table]; l.sharded() && !sharded && !everyNode[table] {
		return nil, fmt.Errorf("store: cluster layout: table %s is neither sharded by customer nor kept whole on every node: add it to shardingKeys or everyNode in store/cluster.go", table)
	}
	target := table
	if l.isShardedTable(table) {
		target = table + LocalSuffix
	}
	path, replica := l.replication(table, target)
	engineSQL := "Replicated" + engine + "('" + path + "', '" + replica + "'"
	if args != "" {
		engineSQL += ", " + args
	}
	engineSQL += ")"

	var b strings.Builder
	b.WriteString(stmt[:m[2]])
	b.WriteString(target)
	b.WriteString(l.onCluster())
	b.WriteString(stmt[m[3]:e[2]])
	b.WriteString(engineSQL)
	// A replicated table deduplicates inserts through Keeper: the window
	// of a single node's table becomes the replicated one, same size.
	tail, tailMasked := stmt[argsEnd:], masked[argsEnd:]
	for _, d := range slicesReverse(dedupWindowRe.FindAllStringIndex(tailMasked, -1)) {
		tail = tail[:d[0]] + "replicated_deduplication_window" + tail[d[1]:]
	}
	b.WriteString(tail)
	out := []string{b.String()}
	if l.isShardedTable(table) {
		key := shardingKeys[table]
		out = append(out, "CREATE TABLE IF NOT EXISTS "+table+l.onCluster()+" AS "+target+
			"\nENGINE = Distributed('"+l.Cluster+"', '"+l.Database+"', '"+target+"', "+key+")")
	}
	return out, nil
}

func (l Layout) alterTable(stmt, masked string) ([]string, error) {
	m := alterTableRe.FindStringSubmatchIndex(masked)
	table := stmt[m[2]:m[3]]
	if qualifiedAfter.MatchString(masked[m[3]:]) {
		return nil, fmt.Errorf("store: cluster layout: ALTER TABLE %s: name it without a database", table)
	}
	head, rest := stmt[:m[2]], stmt[m[3]:]
	if !l.sharded() {
		return []string{head + table + l.onCluster() + rest}, nil
	}
	if !l.isShardedTable(table) {
		// One replication group spans every node: the replicated ALTER
		// reaches all replicas from here, where ON CLUSTER would run it
		// once per shard on the same group.
		return []string{stmt}, nil
	}
	cmds := splitTopLevel(masked[m[3]:])
	columns := 0
	for _, c := range cmds {
		if columnAlterRe.MatchString(c) {
			columns++
		}
	}
	local := head + table + LocalSuffix + l.onCluster() + rest
	switch columns {
	case 0:
		return []string{local}, nil
	case len(cmds):
		// The Distributed table keeps its own copy of the columns.
		return []string{local, head + table + l.onCluster() + rest}, nil
	}
	return nil, fmt.Errorf("store: cluster layout: ALTER TABLE %s mixes column changes with other commands; split them into two statements", table)
}

// matchParen returns the index of the parenthesis closing the one at open
// in masked text, or -1.
func matchParen(s string, open int) int {
	depth := 0
	for i := open; i < len(s); i++ {
		switch s[i] {
		case '(':
			depth++
		case ')':
			depth--
			if depth == 0 {
				return i
			}
		}
	}
	return -1
}

func slicesReverse(s [][]int) [][]int {
	for i, j := 0, len(s)-1; i < j; i, j = i+1, j-1 {
		s[i], s[j] = s[j], s[i]
	}
	return s
}

// maskSQL returns sql with comments and the insides of quoted strings and
// identifiers replaced by blanks (newlines kept), the same length, so that
// patterns found in it sit at the same offsets in sql and never match text
// inside a comment or a literal.
func maskSQL(sql string) string {
	b := []byte(sql)
	blank := func(from, to int) {
		for k := from; k < to && k < len(b); k++ {
			if b[k] != '\n' {
				b[k] = ' '
			}
		}
	}
	for i := 0; i < len(sql); i++ {
		c := sql[i]
		switch {
		case c == '-' && i+1 < len(sql) && sql[i+1] == '-':
			j := i
			for j < len(sql) && sql[j] != '\n' {
				j++
			}
			blank(i, j)
			i = j
		case c == '/' && i+1 < len(sql) && sql[i+1] == '*':
			end := indexFrom(sql, "*/", i+2)
			if end < 0 {
				end = len(sql)
			} else {
				end += 2
			}
			blank(i, end)
			i = end - 1
		case c == '\'' || c == '"' || c == '`':
			j := skipQuoted(sql, i)
			blank(i+1, j)
			i = j
		}
	}
	return string(b)
}

// mutation returns the statement to run for a statement of Meterline's
// code (not of a migration): on a multi-shard cluster an ALTER TABLE of a
// sharded table (a DELETE, UPDATE or MODIFY TTL) goes to its local tables
// on every shard, since a Distributed table has no rows to mutate. Column
// changes belong in migrations; they and every other statement pass
// unchanged.
func (l Layout) mutation(stmt string) string {
	if !l.sharded() {
		return stmt
	}
	// The name may be backquoted (privacy quotes the names it found).
	m := mutationRe.FindStringSubmatchIndex(stmt)
	if m == nil || (m[3] > m[2]) != (m[7] > m[6]) {
		return stmt
	}
	masked := maskSQL(stmt)
	if onClusterRe.MatchString(masked) || qualifiedAfter.MatchString(masked[m[1]:]) {
		return stmt
	}
	table := stmt[m[4]:m[5]]
	if !l.isShardedTable(table) {
		return stmt
	}
	for _, c := range splitTopLevel(masked[m[1]:]) {
		if columnAlterRe.MatchString(c) {
			return stmt
		}
	}
	return stmt[:m[2]] + table + LocalSuffix + l.onCluster() + stmt[m[1]:]
}

// mutationRe matches the head of a run-time ALTER TABLE: the table's name,
// plain or backquoted.
var mutationRe = regexp.MustCompile("^\\s*ALTER\\s+TABLE\\s+(`?)([A-Za-z_][A-Za-z0-9_]*)(`?)")

// resolveLayout validates opts.Layout against the connection and fills in
// what it leaves to the server: the database and the shard count.
func resolveLayout(ctx context.Context, c Conn, l Layout) (Layout, error) {
	if sc, ok := c.(*serverConn); ok && sc.layout.Cluster != "" {
		// The connection was opened for a cluster: Migrate follows it.
		switch l.Cluster {
		case "":
			l.Cluster = sc.layout.Cluster
		case sc.layout.Cluster:
		default:
			return l, fmt.Errorf("store: migrate: cluster %q, but the connection was opened for cluster %q", l.Cluster, sc.layout.Cluster)
		}
	}
	if err := l.Validate(); err != nil {
		return l, err
	}
	if l.Cluster == "" {
		return l, nil
	}
	if c.Engine() == EngineEmbedded {
		return l, fmt.Errorf("store: migrate: cluster %q: the embedded engine is a single node; a cluster needs a ClickHouse server (set clickhouse.addr), or leave clickhouse.cluster empty", l.Cluster)
	}
	if l.Database == "" {
		if err := scanOne(ctx, c, "SELECT currentDatabase()", nil, &l.Database); err != nil {
			return l, fmt.Errorf("store: migrate: current database: %w", err)
		}
		if !plainIdentRe.MatchString(l.Database) {
			return l, fmt.Errorf("store: migrate: database %q must match [A-Za-z_][A-Za-z0-9_]*", l.Database)
		}
	}
	var shards, replicas uint64
	if err := scanOne(ctx, c, "SELECT uniqExact(shard_num), count() FROM system.clusters WHERE cluster = {c:String}",
		[]Param{P("c", l.Cluster)}, &shards, &replicas); err != nil {
		return l, fmt.Errorf("store: migrate: read cluster %q from system.clusters: %w", l.Cluster, err)
	}
	if shards == 0 {
		return l, fmt.Errorf("store: migrate: cluster %q is not defined on this server (system.clusters has no such cluster; see remote_servers in its configuration)", l.Cluster)
	}
	if l.Shards == 0 {
		l.Shards = int(shards)
	} else if l.Shards != int(shards) {
		return l, fmt.Errorf("store: migrate: cluster %q has %d shards on this server, not %d", l.Cluster, shards, l.Shards)
	}
	return l, nil
}

// checkLayout refuses to migrate a database that an earlier Migrate laid
// out differently: a single-node schema is not turned into a cluster one
// (or back) by changing the configuration; that needs a new database and
// a copy of the data.
func checkLayout(ctx context.Context, c Conn, l Layout) error {
	engines := map[string]string{}
	rows, err := c.Query(ctx, "SELECT name, engine FROM system.tables WHERE database = currentDatabase() AND name IN ('schema_migrations', 'events')")
	if err != nil {
		return fmt.Errorf("store: migrate: read the tables' engines: %w", err)
	}
	for rows.Next() {
		var name, engine string
		if err := rows.Scan(&name, &engine); err != nil {
			_ = rows.Close()
			return fmt.Errorf("store: migrate: read the tables' engines: %w", err)
		}
		engines[name] = engine
	}
	_ = rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("store: migrate: read the tables' engines: %w", err)
	}
	if e, ok := engines[migrationsTable]; ok {
		replicated := strings.HasPrefix(e, "Replicated")
		switch {
		case l.Cluster == "" && replicated:
			return fmt.Errorf("store: migrate: the database was laid out for a cluster (%s is %s); set clickhouse.cluster", migrationsTable, e)
		case l.Cluster != "" && !replicated:
			return fmt.Errorf("store: migrate: the database was laid out for a single node (%s is %s), not for cluster %q; a cluster needs a new database and a copy of the data", migrationsTable, e, l.Cluster)
		}
	}
	if e, ok := engines["events"]; ok && l.Cluster != "" {
		if distributed := e == "Distributed"; distributed != l.sharded() {
			return fmt.Errorf("store: migrate: the database was laid out for %s (events is %s), but cluster %q has %d shards; changing the number of shards needs a new database and a copy of the data",
				map[bool]string{true: "several shards", false: "one shard"}[distributed], e, l.Cluster, l.Shards)
		}
	}
	return nil
}

// scanOne runs a query expected to return one row into dest.
func scanOne(ctx context.Context, c Conn, query string, params []Param, dest ...any) error {
	rows, err := c.Query(ctx, query, params...)
	if err != nil {
		return err
	}
	defer func() { _ = rows.Close() }()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return err
		}
		return fmt.Errorf("no row")
	}
	if err := rows.Scan(dest...); err != nil {
		return err
	}
	return rows.Err()
}

// describe names the layout for logs and messages.
func (l Layout) describe() string {
	switch {
	case l.Cluster == "":
		return "single node"
	case l.sharded():
		return "cluster " + l.Cluster + ", " + strconv.Itoa(l.Shards) + " shards"
	}
	return "cluster " + l.Cluster + ", one shard"
}
