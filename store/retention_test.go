package store

import (
	"testing"
	"time"
)

// TestApplyRetention lowers the raw retention of a migrated database: the
// TTL changes, rows now too old are gone at once, newer rows stay, and a
// second run changes nothing.
func TestApplyRetention(t *testing.T) {
	forEachEngine(t, func(t *testing.T, c Conn) {
		ctx := testCtx(t)
		if _, err := Migrate(ctx, c, MigrateOptions{}, testLogger); err != nil {
			t.Fatal(err)
		}
		now := time.Now().UTC()
		cols := []string{"id", "time", "api_key_id", "ingested_at"}
		rows := [][]any{
			{"old", now.AddDate(0, -5, 0), "k", now},
			{"new", now.AddDate(0, -1, 0), "k", now},
		}
		if err := c.Insert(ctx, "events", cols, rows, InsertOptions{}); err != nil {
			t.Fatal(err)
		}
		rules := []RetentionRule{{Table: "events", Column: "time", Months: 3}, {Table: "usage_hour", Column: "window_start", Months: 12}}
		before, err := Retention(ctx, c, rules)
		if err != nil {
			t.Fatal(err)
		}
		if before[0].Months != 12 || before[0].Rows != 2 || before[0].Oldest.After(now.AddDate(0, -4, 0)) || before[1].Months != 12 || before[1].Rows != 0 {
			t.Fatalf("before: %+v", before)
		}
		changed, err := ApplyRetention(ctx, c, rules, testLogger)
		if err != nil || len(changed) != 1 || changed[0] != "events" {
			t.Fatalf("changed %v, %v", changed, err)
		}
		after, err := Retention(ctx, c, rules)
		if err != nil {
			t.Fatal(err)
		}
		if after[0].Months != 3 || after[0].Rows != 1 || after[0].Oldest.Before(now.AddDate(0, -2, 0)) {
			t.Fatalf("after: %+v", after)
		}
		if again, err := ApplyRetention(ctx, c, rules, testLogger); err != nil || len(again) != 0 {
			t.Fatalf("second run changed %v, %v", again, err)
		}
		if _, err := ApplyRetention(ctx, c, []RetentionRule{{Table: "events; DROP TABLE events", Column: "time", Months: 3}}, testLogger); err == nil {
			t.Fatal("a rule with a bad table name was applied")
		}
		if _, err := ApplyRetention(ctx, c, []RetentionRule{{Table: "events", Column: "time", Months: 0}}, testLogger); err == nil {
			t.Fatal("0 months accepted")
		}
	})
}
