package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/meterline/meterline/schemas"
)

// migrationsTable records applied migrations. It is created by code, not
// by a migration file, because Migrate must read it before applying any.
const migrationsTable = "schema_migrations"

const createMigrationsTable = `CREATE TABLE IF NOT EXISTS schema_migrations
(
    version    UInt32,
    name       String,
    checksum   String,
    applied_at DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY version`

// DefaultRawRetentionMonths is the retention of raw events when
// MigrateOptions.RawRetentionMonths is 0 (the privacy policy's 12 months).
const DefaultRawRetentionMonths = 12

// DefaultRollupRetentionMonths is the retention of the usage rollups when
// MigrateOptions.RollupRetentionMonths is 0 (the same 12 months as raw).
const DefaultRollupRetentionMonths = 12

// DefaultLedgerRetentionMonths is the retention of the billing ledger and
// the invoice log when MigrateOptions.LedgerRetentionMonths is 0. Finance
// may keep them longer (84 months for seven years of bookkeeping).
const DefaultLedgerRetentionMonths = 12

// ErrMigrationChanged is returned (wrapped) when a migration file differs
// from the version that was applied. Migrate never re-runs it: released
// files are immutable, so the fix is a new migration.
var ErrMigrationChanged = errors.New("migration changed after it was applied")

// MigrateOptions configures Migrate.
type MigrateOptions struct {
	// RawRetentionMonths is the raw events TTL (default 12). It is baked
	// into the table when its migration first runs; changing it later
	// needs a new migration (ALTER TABLE ... MODIFY TTL).
	RawRetentionMonths int
	// RollupRetentionMonths is the TTL of the usage rollup tables
	// (default 12), baked in like RawRetentionMonths.
	RollupRetentionMonths int
	// LedgerRetentionMonths is the TTL of the billing ledger and invoice
	// log (default 12), baked in like RawRetentionMonths.
	LedgerRetentionMonths int
	// StoragePolicy, when set, is added as SETTINGS storage_policy to
	// every MergeTree table the migrations (and Migrate itself) create, so
	// that a server stores them on that policy's disks, e.g. an encrypted
	// one (see StorageConfigXML). It does not touch tables that exist.
	// Default empty: the engine's default policy.
	StoragePolicy string
	// Layout lays the schema out on a ClickHouse cluster (replicated and,
	// with several shards, distributed tables). The zero Layout, the
	// default, is a single node. The embedded engine refuses a cluster.
	Layout Layout
	// FS holds the migration files NNNN_name.sql at its root. Nil means
	// the files embedded in package schemas.
	FS fs.FS
}

// TemplateData is what the .sql templates see.
type TemplateData struct {
	// RawRetentionMonths is the raw events retention in months.
	RawRetentionMonths int
	// RollupRetentionMonths is the usage rollups' retention in months.
	RollupRetentionMonths int
	// LedgerRetentionMonths is the billing ledger's retention in months.
	LedgerRetentionMonths int
}

// Applied describes one migration that Migrate applied.
type Applied struct {
	// Version is the file's number, NNNN in NNNN_name.sql.
	Version int
	// Name is the file name, e.g. "0001_events.sql".
	Name string
	// Checksum is the hex SHA-256 of the file as written (before
	// templating), so changing an option does not count as an edit.
	Checksum string
}

// MigrationStatus describes one known migration file.
type MigrationStatus struct {
	// Version, Name and Checksum describe the file as in Applied.
	Version  int
	Name     string
	Checksum string
	// Applied reports whether schema_migrations records the version.
	Applied bool
	// AppliedAt is when it was applied; zero when not applied.
	AppliedAt time.Time
	// Changed reports that the file differs from the applied version.
	Changed bool
}

// migration is one parsed migration file.
type migration struct {
	version  int
	name     string
	content  []byte
	checksum string
}

// migrationName is the required file name form.
var migrationName = regexp.MustCompile(`^(\d{4,})_[a-z0-9_]+\.sql$`)

// loadMigrations reads and orders the migration files of fsys.
func loadMigrations(fsys fs.FS) ([]migration, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("store: read migrations: %w", err)
	}
	var out []migration
	seen := map[int]string{}
	for _, e := range entries {
		if e.IsDir() || path.Ext(e.Name()) != ".sql" {
			continue
		}
		m := migrationName.FindStringSubmatch(e.Name())
		if m == nil {
			return nil, fmt.Errorf("store: migration file %q is not named NNNN_name.sql", e.Name())
		}
		v, err := strconv.Atoi(m[1])
		if err != nil || v <= 0 || v > 1<<32-1 {
			return nil, fmt.Errorf("store: migration file %q: bad version", e.Name())
		}
		if prev, dup := seen[v]; dup {
			return nil, fmt.Errorf("store: migrations %q and %q share version %d", prev, e.Name(), v)
		}
		seen[v] = e.Name()
		content, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, fmt.Errorf("store: read migration %q: %w", e.Name(), err)
		}
		sum := sha256.Sum256(content)
		out = append(out, migration{version: v, name: e.Name(), content: content, checksum: hex.EncodeToString(sum[:])})
	}
	slices.SortFunc(out, func(a, b migration) int { return a.version - b.version })
	return out, nil
}

// migrationFS returns opts.FS or the embedded schema files.
func migrationFS(fsys fs.FS) (fs.FS, error) {
	if fsys != nil {
		return fsys, nil
	}
	sub, err := fs.Sub(schemas.SQL, "sql")
	if err != nil {
		return nil, fmt.Errorf("store: embedded migrations: %w", err)
	}
	return sub, nil
}

// render executes a migration template and splits it into statements.
func (m migration) render(data TemplateData) ([]string, error) {
	tmpl, err := template.New(m.name).Option("missingkey=error").Parse(string(m.content))
	if err != nil {
		return nil, fmt.Errorf("store: migration %s: parse template: %w", m.name, err)
	}
	var buf bytes.Buffer
	if err := tmpl.Execute(&buf, data); err != nil {
		return nil, fmt.Errorf("store: migration %s: render template: %w", m.name, err)
	}
	stmts := splitStatements(buf.String())
	if len(stmts) == 0 {
		return nil, fmt.Errorf("store: migration %s has no statements", m.name)
	}
	return stmts, nil
}

// appliedRecord is one row of schema_migrations.
type appliedRecord struct {
	name      string
	checksum  string
	appliedAt time.Time
}

// readApplied returns the recorded migrations by version. Two processes
// migrating at once may both record a version; the first record wins.
func readApplied(ctx context.Context, c Conn) (map[int]appliedRecord, error) {
	rows, err := c.Query(ctx, "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version, applied_at")
	if err != nil {
		return nil, fmt.Errorf("store: read applied migrations: %w", err)
	}
	defer func() { _ = rows.Close() }()
	out := map[int]appliedRecord{}
	for rows.Next() {
		var v int
		var r appliedRecord
		if err := rows.Scan(&v, &r.name, &r.checksum, &r.appliedAt); err != nil {
			return nil, fmt.Errorf("store: read applied migrations: %w", err)
		}
		if _, ok := out[v]; !ok {
			out[v] = r
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: read applied migrations: %w", err)
	}
	return out, nil
}

// templateData is what the templates see for opts, defaults applied.
func templateData(opts MigrateOptions) (TemplateData, error) {
	data := TemplateData{RawRetentionMonths: opts.RawRetentionMonths, RollupRetentionMonths: opts.RollupRetentionMonths,
		LedgerRetentionMonths: opts.LedgerRetentionMonths}
	if data.RawRetentionMonths == 0 {
		data.RawRetentionMonths = DefaultRawRetentionMonths
	}
	if data.RawRetentionMonths < 0 {
		return data, fmt.Errorf("store: migrate: negative RawRetentionMonths %d", data.RawRetentionMonths)
	}
	if data.RollupRetentionMonths == 0 {
		data.RollupRetentionMonths = DefaultRollupRetentionMonths
	}
	if data.RollupRetentionMonths < 0 {
		return data, fmt.Errorf("store: migrate: negative RollupRetentionMonths %d", data.RollupRetentionMonths)
	}
	if data.LedgerRetentionMonths == 0 {
		data.LedgerRetentionMonths = DefaultLedgerRetentionMonths
	}
	if data.LedgerRetentionMonths < 0 {
		return data, fmt.Errorf("store: migrate: negative LedgerRetentionMonths %d", data.LedgerRetentionMonths)
	}
	return data, nil
}

// Migrate applies the migration files that have not been applied yet, in
// version order, and records each in schema_migrations. It is idempotent:
// a second run applies nothing. A file whose content changed after it was
// applied stops Migrate before anything runs (ErrMigrationChanged).
//
// Statements of one file run one by one without a transaction (ClickHouse
// has none), so a file that fails half way is not recorded and runs again
// from its first statement next time: write statements that can run twice
// (IF NOT EXISTS).
func Migrate(ctx context.Context, c Conn, opts MigrateOptions, log *slog.Logger) ([]Applied, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	data, err := templateData(opts)
	if err != nil {
		return nil, err
	}
	fsys, err := migrationFS(opts.FS)
	if err != nil {
		return nil, err
	}
	files, err := loadMigrations(fsys)
	if err != nil {
		return nil, err
	}
	if opts.StoragePolicy != "" && !validPolicyName(opts.StoragePolicy) {
		return nil, fmt.Errorf("store: migrate: storage policy %q must match [A-Za-z_][A-Za-z0-9_]*", opts.StoragePolicy)
	}
	layout, err := resolveLayout(ctx, c, opts.Layout)
	if err != nil {
		return nil, err
	}
	if err := checkLayout(ctx, c, layout); err != nil {
		return nil, err
	}
	bookkeeping, err := layoutStatements(layout, createMigrationsTable, opts.StoragePolicy)
	if err != nil {
		return nil, err
	}
	for _, s := range bookkeeping {
		if err := c.Exec(ctx, s); err != nil {
			return nil, fmt.Errorf("store: migrate: %w", err)
		}
	}
	applied, err := readApplied(ctx, c)
	if err != nil {
		return nil, err
	}

	var changed []error
	known := map[int]bool{}
	for _, f := range files {
		known[f.version] = true
		if r, ok := applied[f.version]; ok && r.checksum != f.checksum {
			changed = append(changed, fmt.Errorf("store: migration %s: %w (applied %s with checksum %s, file now %s); add a new migration instead of editing it",
				f.name, ErrMigrationChanged, r.appliedAt.Format(time.RFC3339), r.checksum, f.checksum))
		}
	}
	if len(changed) > 0 {
		return nil, errors.Join(changed...)
	}
	for v, r := range applied {
		if !known[v] {
			log.Warn("database has a migration this binary does not know; is an older binary running?", "version", v, "name", r.name)
		}
	}

	var done []Applied
	for _, f := range files {
		if _, ok := applied[f.version]; ok {
			continue
		}
		stmts, err := f.render(data)
		if err != nil {
			return done, err
		}
		// Lay out every statement before running any, so that a statement
		// the layout refuses stops the file before it starts.
		laid := make([][]string, len(stmts))
		for i, s := range stmts {
			if laid[i], err = layoutStatements(layout, s, opts.StoragePolicy); err != nil {
				return done, fmt.Errorf("store: migration %s, statement %d: %w", f.name, i+1, err)
			}
		}
		start := time.Now()
		for i, group := range laid {
			for j, s := range group {
				if err := c.Exec(ctx, s); err != nil {
					part := ""
					if len(group) > 1 {
						part = fmt.Sprintf(" (part %d of %d on %s)", j+1, len(group), layout.describe())
					}
					return done, fmt.Errorf("store: migration %s, statement %d%s: %w", f.name, i+1, part, err)
				}
			}
		}
		row := []any{uint32(f.version), f.name, f.checksum, time.Now().UTC()}
		if err := c.Insert(ctx, migrationsTable, []string{"version", "name", "checksum", "applied_at"}, [][]any{row}, InsertOptions{}); err != nil {
			return done, fmt.Errorf("store: record migration %s: %w", f.name, err)
		}
		log.Info("applied migration", "name", f.name, "statements", len(stmts), "layout", layout.describe(), "duration", time.Since(start))
		done = append(done, Applied{Version: f.version, Name: f.name, Checksum: f.checksum})
	}
	return done, nil
}

// Status lists the embedded migration files and whether each is applied.
// It does not create schema_migrations.
func Status(ctx context.Context, c Conn) ([]MigrationStatus, error) {
	return status(ctx, c, nil)
}

func status(ctx context.Context, c Conn, fsys fs.FS) ([]MigrationStatus, error) {
	fsys, err := migrationFS(fsys)
	if err != nil {
		return nil, err
	}
	files, err := loadMigrations(fsys)
	if err != nil {
		return nil, err
	}
	rows, err := c.Query(ctx, "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = {name:String}", P("name", migrationsTable))
	if err != nil {
		return nil, fmt.Errorf("store: migration status: %w", err)
	}
	var n int64
	for rows.Next() {
		if err := rows.Scan(&n); err != nil {
			_ = rows.Close()
			return nil, fmt.Errorf("store: migration status: %w", err)
		}
	}
	_ = rows.Close()
	applied := map[int]appliedRecord{}
	if n > 0 {
		if applied, err = readApplied(ctx, c); err != nil {
			return nil, err
		}
	}
	out := make([]MigrationStatus, len(files))
	for i, f := range files {
		st := MigrationStatus{Version: f.version, Name: f.name, Checksum: f.checksum}
		if r, ok := applied[f.version]; ok {
			st.Applied, st.AppliedAt, st.Changed = true, r.appliedAt, r.checksum != f.checksum
		}
		out[i] = st
	}
	return out, nil
}

// layoutStatements lays one statement out (Layout.Statements) and adds the
// storage policy to the tables it creates.
func layoutStatements(l Layout, stmt, policy string) ([]string, error) {
	out, err := l.Statements(stmt)
	if err != nil {
		return nil, err
	}
	for i := range out {
		out[i] = withStoragePolicy(out[i], policy)
	}
	return out, nil
}

// PlannedMigration is one migration file as Plan lays it out.
type PlannedMigration struct {
	// Name is the file name, e.g. "0001_events.sql".
	Name string
	// Statements are the statements Migrate runs for it, in order.
	Statements []string
}

// Plan returns every statement Migrate would run on an empty database
// with opts, the migrations' own table first (Name "schema_migrations"),
// without connecting to anything. opts.Layout must be complete: with a
// Cluster, Shards and Database must be set (Migrate reads them from the
// server).
func Plan(opts MigrateOptions) ([]PlannedMigration, error) {
	l := opts.Layout
	if err := l.Validate(); err != nil {
		return nil, err
	}
	if l.Cluster != "" && (l.Shards < 1 || l.Database == "") {
		return nil, fmt.Errorf("store: plan: a cluster layout needs its shards and database")
	}
	data, err := templateData(opts)
	if err != nil {
		return nil, err
	}
	fsys, err := migrationFS(opts.FS)
	if err != nil {
		return nil, err
	}
	files, err := loadMigrations(fsys)
	if err != nil {
		return nil, err
	}
	first, err := layoutStatements(l, createMigrationsTable, opts.StoragePolicy)
	if err != nil {
		return nil, err
	}
	out := []PlannedMigration{{Name: migrationsTable, Statements: first}}
	for _, f := range files {
		stmts, err := f.render(data)
		if err != nil {
			return nil, err
		}
		p := PlannedMigration{Name: f.name}
		for i, s := range stmts {
			laid, err := layoutStatements(l, s, opts.StoragePolicy)
			if err != nil {
				return nil, fmt.Errorf("store: migration %s, statement %d: %w", f.name, i+1, err)
			}
			p.Statements = append(p.Statements, laid...)
		}
		out = append(out, p)
	}
	return out, nil
}

// createMergeTree matches a CREATE TABLE statement of a MergeTree-family
// engine; settingsClause finds its SETTINGS clause (the last clause of
// CREATE TABLE).
var (
	createMergeTree = regexp.MustCompile(`(?is)^\s*CREATE\s+TABLE\b.*\bENGINE\s*=\s*\w*MergeTree\b`)
	settingsClause  = regexp.MustCompile(`(?i)\bSETTINGS\b`)
)

// withStoragePolicy adds storage_policy to a CREATE TABLE of the MergeTree
// family; other statements, and any statement when policy is empty, pass
// unchanged. policy has been checked to be a plain identifier.
func withStoragePolicy(stmt, policy string) string {
	if policy == "" || !createMergeTree.MatchString(stripLeadingComments(stmt)) {
		return stmt
	}
	stmt = strings.TrimRight(strings.TrimSpace(stmt), ";")
	setting := "storage_policy = '" + policy + "'"
	if settingsClause.MatchString(stmt) {
		return stmt + ", " + setting
	}
	return stmt + "\nSETTINGS " + setting
}

// stripLeadingComments drops the blanks and line comments before a
// statement's first keyword.
func stripLeadingComments(s string) string {
	for {
		s = strings.TrimLeft(s, " \t\r\n")
		if !strings.HasPrefix(s, "--") {
			return s
		}
		i := strings.IndexByte(s, '\n')
		if i < 0 {
			return ""
		}
		s = s[i+1:]
	}
}

// splitStatements splits SQL text at semicolons that end a line, ignoring
// semicolons inside string literals, quoted identifiers and comments.
// Pieces holding only comments and blanks are dropped.
func splitStatements(sql string) []string {
	var out []string
	start := 0
	hasCode := false
	emit := func(end int) {
		if hasCode {
			out = append(out, strings.TrimSpace(sql[start:end]))
		}
		hasCode = false
	}
	for i := 0; i < len(sql); i++ {
		c := sql[i]
		switch {
		case c == '-' && i+1 < len(sql) && sql[i+1] == '-':
			for i < len(sql) && sql[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < len(sql) && sql[i+1] == '*':
			end := indexFrom(sql, "*/", i+2)
			if end < 0 {
				i = len(sql)
			} else {
				i = end + 1
			}
		case c == '\'' || c == '"' || c == '`':
			hasCode = true
			i = skipQuoted(sql, i)
		case c == ';':
			if restOfLineBlank(sql, i+1) {
				emit(i)
				start = i + 1
			} else {
				hasCode = true
			}
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
		default:
			hasCode = true
		}
	}
	emit(len(sql))
	return out
}

// skipQuoted returns the index of the quote closing the literal opened at
// i. ClickHouse accepts both backslash escapes and doubled quotes.
func skipQuoted(s string, i int) int {
	q := s[i]
	for j := i + 1; j < len(s); j++ {
		switch s[j] {
		case '\\':
			j++
		case q:
			if j+1 < len(s) && s[j+1] == q {
				j++
				continue
			}
			return j
		}
	}
	return len(s)
}

// restOfLineBlank reports whether s[i:] up to the next newline holds only
// blanks or a line comment.
func restOfLineBlank(s string, i int) bool {
	for ; i < len(s) && s[i] != '\n'; i++ {
		switch s[i] {
		case ' ', '\t', '\r':
		case '-':
			return i+1 < len(s) && s[i+1] == '-'
		default:
			return false
		}
	}
	return true
}

func indexFrom(s, sub string, from int) int {
	if from > len(s) {
		return -1
	}
	if i := strings.Index(s[from:], sub); i >= 0 {
		return from + i
	}
	return -1
}
