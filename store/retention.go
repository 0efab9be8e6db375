package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"time"
)

// RetentionRule says how long one table keeps its rows: a row goes when
// Column (a Date/DateTime column) is Months months old.
type RetentionRule struct {
	Table  string
	Column string
	Months int
}

// TableRetention is a table's retention as the engine has it, and its data.
type TableRetention struct {
	Table  string
	Column string
	// Months is the TTL the table has now (0 when it has none).
	Months int
	// Rows counts the rows; Oldest is the smallest Column value (zero
	// without rows).
	Rows   uint64
	Oldest time.Time
}

var ttlMonths = regexp.MustCompile(`TTL .*toIntervalMonth\((\d+)\)`)

// identifier guards the table and column names that rules put into DDL
// (they come from code, never from input, but a slip must not become SQL).
var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func (r RetentionRule) check() error {
	if !identifier.MatchString(r.Table) || !identifier.MatchString(r.Column) {
		return fmt.Errorf("store: retention rule %q.%q: not an identifier", r.Table, r.Column)
	}
	if r.Months < 1 || r.Months > 1200 {
		return fmt.Errorf("store: retention of %s: %d months is out of range 1-1200", r.Table, r.Months)
	}
	return nil
}

// currentMonths reads the TTL months of a table from its DDL: on a
// multi-shard cluster from its local table (name + LocalSuffix), which
// holds the rows and the TTL, not from the Distributed table.
func currentMonths(ctx context.Context, c Conn, table string) (int, error) {
	rows, err := c.Query(ctx, "SELECT create_table_query FROM system.tables WHERE database = currentDatabase() AND name IN ({t:String}, {l:String}) ORDER BY name = {l:String}",
		P("t", table), P("l", table+LocalSuffix))
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	var ddl string
	found := false
	for rows.Next() {
		if err := rows.Scan(&ddl); err != nil {
			return 0, err
		}
		found = true
	}
	if err := rows.Err(); err != nil {
		return 0, err
	}
	if !found {
		return 0, fmt.Errorf("store: table %s does not exist (run meterline migrate)", table)
	}
	m := ttlMonths.FindStringSubmatch(ddl)
	if m == nil {
		return 0, nil
	}
	return strconv.Atoi(m[1])
}

// ApplyRetention brings each table's TTL to its rule with ALTER TABLE …
// MODIFY TTL, and returns the tables it changed. The engine applies a
// shorter retention to the existing rows right away (it rewrites the parts
// that hold expired rows), so lowering a retention deletes what is now too
// old without waiting for a merge.
func ApplyRetention(ctx context.Context, c Conn, rules []RetentionRule, log *slog.Logger) ([]string, error) {
	var changed []string
	for _, r := range rules {
		if err := r.check(); err != nil {
			return changed, err
		}
		have, err := currentMonths(ctx, c, r.Table)
		if err != nil {
			return changed, err
		}
		if have == r.Months {
			continue
		}
		expr := fmt.Sprintf("toDateTime(%s) + INTERVAL %d MONTH", r.Column, r.Months)
		if err := c.Exec(ctx, fmt.Sprintf("ALTER TABLE %s MODIFY TTL %s SETTINGS mutations_sync = 2", r.Table, expr)); err != nil {
			return changed, fmt.Errorf("store: changing the retention of %s: %w", r.Table, err)
		}
		if log != nil {
			log.Info("retention changed", "table", r.Table, "from_months", have, "to_months", r.Months)
		}
		changed = append(changed, r.Table)
	}
	return changed, nil
}

// Retention reports each rule's table: its TTL, row count and oldest row.
func Retention(ctx context.Context, c Conn, rules []RetentionRule) ([]TableRetention, error) {
	var out []TableRetention
	var errs []error
	for _, r := range rules {
		if err := r.check(); err != nil {
			return nil, err
		}
		months, err := currentMonths(ctx, c, r.Table)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		tr := TableRetention{Table: r.Table, Column: r.Column, Months: months}
		rows, err := c.Query(ctx, fmt.Sprintf("SELECT count(), toDateTime64(min(%s), 3, 'UTC') FROM %s", r.Column, r.Table))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for rows.Next() {
			if err := rows.Scan(&tr.Rows, &tr.Oldest); err != nil {
				errs = append(errs, err)
			}
		}
		_ = rows.Close()
		if tr.Rows == 0 {
			tr.Oldest = time.Time{}
		}
		out = append(out, tr)
	}
	return out, errors.Join(errs...)
}
