package store

import (
	"errors"
	"strings"
	"testing"
	"testing/fstest"
)

func TestMigrateCustomFilesAndDrift(t *testing.T) {
	forEachEngine(t, func(t *testing.T, c Conn) {
		files := fstest.MapFS{
			"0001_a.sql": {Data: []byte("-- two statements; the second uses the template\nCREATE TABLE IF NOT EXISTS a (x UInt8) ENGINE = MergeTree ORDER BY x;\n" +
				"CREATE TABLE IF NOT EXISTS b (s String DEFAULT 'semi;\ncolon;', d DateTime DEFAULT now()) ENGINE = MergeTree ORDER BY s TTL d + INTERVAL {{ .RawRetentionMonths }} MONTH\n")},
			"0002_b.sql": {Data: []byte("INSERT INTO a VALUES (1)\n")},
			"README.md":  {Data: []byte("ignored")},
		}
		opts := MigrateOptions{FS: files, RawRetentionMonths: 3}
		applied, err := Migrate(testCtx(t), c, opts, testLogger)
		if err != nil || len(applied) != 2 {
			t.Fatalf("migrate: %+v, %v", applied, err)
		}
		var ddl string
		queryOne(t, c, "SHOW CREATE TABLE b", nil, &ddl)
		if !strings.Contains(ddl, "toIntervalMonth(3)") || !strings.Contains(ddl, `'semi;\ncolon;'`) {
			t.Errorf("table b: %s", ddl)
		}
		if again, err := Migrate(testCtx(t), c, opts, testLogger); err != nil || len(again) != 0 {
			t.Fatalf("second run: %+v, %v", again, err)
		}
		if n := count(t, c, "SELECT count() FROM a"); n != 1 {
			t.Errorf("0002 ran %d times", n)
		}

		// Editing an applied file is reported, and nothing runs.
		files["0002_b.sql"] = &fstest.MapFile{Data: []byte("INSERT INTO a VALUES (2)\n")}
		files["0003_c.sql"] = &fstest.MapFile{Data: []byte("INSERT INTO a VALUES (3)\n")}
		_, err = Migrate(testCtx(t), c, opts, testLogger)
		if !errors.Is(err, ErrMigrationChanged) || !strings.Contains(err.Error(), "0002_b.sql") {
			t.Fatalf("drift: %v", err)
		}
		if n := count(t, c, "SELECT count() FROM a"); n != 1 {
			t.Errorf("after drift error table a has %d rows", n)
		}
		st, err := status(testCtx(t), c, files)
		if err != nil {
			t.Fatal(err)
		}
		if len(st) != 3 || !st[1].Changed || !st[0].Applied || st[2].Applied {
			t.Errorf("status: %+v", st)
		}
	})
}

func TestLoadMigrationsRejectsBadNames(t *testing.T) {
	for name, fsys := range map[string]fstest.MapFS{
		"bad name":  {"1_x.sql": {Data: []byte("SELECT 1")}},
		"duplicate": {"0001_a.sql": {Data: []byte("SELECT 1")}, "0001_b.sql": {Data: []byte("SELECT 1")}},
	} {
		if _, err := loadMigrations(fsys); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	ms, err := loadMigrations(fstest.MapFS{"0010_b.sql": {Data: []byte("x")}, "0002_a.sql": {Data: []byte("y")}})
	if err != nil || len(ms) != 2 || ms[0].version != 2 || ms[1].version != 10 {
		t.Errorf("order: %+v %v", ms, err)
	}
	if _, err := (migration{name: "0001_x.sql", content: []byte("{{ .Nope }}")}).render(TemplateData{}); err == nil {
		t.Error("unknown template field accepted")
	}
}
