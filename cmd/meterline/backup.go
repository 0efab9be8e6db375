package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/meterline/meterline/ingest"
	"github.com/meterline/meterline/internal/term"
	"github.com/meterline/meterline/privacy"
	"github.com/meterline/meterline/store"
)

// BackupConfig is the backup section: where backups go, how they are
// encrypted and how long they are kept.
type BackupConfig struct {
	// Dir holds the backups, one directory each. It must lie outside the
	// data directory. Default: "backups" beside the embedded engine's data
	// directory (.run/backups).
	Dir string `yaml:"dir"`
	// Password encrypts the backups with a key derived from it (PBKDF2,
	// AES-256-CTR); set it as backup.password_file or
	// METERLINE_BACKUP_PASSWORD(_FILE). Every backup of one directory has
	// the same password. Default empty: backups are encrypted with the keys
	// of encryption at rest when it is on, and not encrypted when it is off.
	Password string `yaml:"password" secret:"true"`
	// RetentionMonths is the age after which `backup create` and `backup
	// prune` remove a backup (and the incremental backups on it), so that
	// the retention promise holds for backups too. Default: the longer of
	// retention.raw_months and retention.rollup_months (12).
	RetentionMonths int `yaml:"retention_months"`
}

func (b BackupConfig) validate(c *Config) error {
	var errs []error
	if b.RetentionMonths < 1 || b.RetentionMonths > 1200 {
		errs = append(errs, fmt.Errorf("backup.retention_months: %d is out of range 1-1200", b.RetentionMonths))
	}
	if len(b.Password) > 1024 {
		errs = append(errs, errors.New("backup.password: longer than 1024 bytes"))
	}
	dir, _ := filepath.Abs(c.backupDir())
	data, _ := filepath.Abs(c.ClickHouse.DataDir)
	logPath, _ := filepath.Abs(c.erasureLogPath())
	if len(c.ClickHouse.Addr) == 0 && (dir == data || strings.HasPrefix(dir, data+string(filepath.Separator)) || strings.HasPrefix(data, dir+string(filepath.Separator))) {
		errs = append(errs, fmt.Errorf("backup.dir: %s must lie outside the data directory %s (and not contain it)", dir, data))
	}
	if len(c.ClickHouse.Addr) == 0 && strings.HasPrefix(logPath, data+string(filepath.Separator)) {
		errs = append(errs, fmt.Errorf("privacy.erasure_log: %s must lie outside the data directory %s: it must survive its loss", logPath, data))
	}
	if strings.HasPrefix(logPath, dir+string(filepath.Separator)) {
		errs = append(errs, fmt.Errorf("privacy.erasure_log: %s must lie outside the backups directory %s: pruning backups must never touch it", logPath, dir))
	}
	return errors.Join(errs...)
}

// backupDir is backup.dir, or "backups" beside the data directory.
func (c *Config) backupDir() string {
	if c.Backup.Dir != "" {
		return c.Backup.Dir
	}
	return filepath.Join(filepath.Dir(filepath.Clean(c.ClickHouse.DataDir)), "backups")
}

// erasureLogPath is privacy.erasure_log, or erasures.jsonl beside the
// data directory.
func (c *Config) erasureLogPath() string {
	if c.Privacy.ErasureLog != "" {
		return c.Privacy.ErasureLog
	}
	return filepath.Join(filepath.Dir(filepath.Clean(c.ClickHouse.DataDir)), "erasures.jsonl")
}

// backupStore is the configured backups directory and its key.
func backupStore(c *Config) (*store.BackupStore, error) {
	dir, err := filepath.Abs(c.backupDir())
	if err != nil {
		return nil, err
	}
	st := &store.BackupStore{Dir: dir}
	if c.Backup.Password != "" {
		if st.Key, err = store.OpenPasswordKey(dir, c.Backup.Password); err != nil {
			return nil, err
		}
		return st, nil
	}
	st.AtRestKeys = c.ClickHouse.Encryption.enabled()
	return st, nil
}

const backupUsage = `Usage: meterline backup create|list|verify|restore|prune [flags]

  create   back the database up into backup.dir (full, or --base NAME for an
           incremental one), write its manifest, prune expired backups
  list     list the backups with their time, base, size and state
  verify   check a backup's files against its manifest (and its bases')
  restore  restore a backup into the data directory (or --target DIR),
           re-apply every erasure recorded since, then put it in place;
           --reset-offsets makes serve read again from Kafka what the
           backup lacks
  prune    remove backups older than backup.retention_months

The embedded engine's data directory can be open in one process only:
stop 'meterline serve' before create and restore. See docs/operations.md.
`

func runBackup(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, backupUsage)
		return errUsage
	}
	switch args[0] {
	case "help", "-h", "--help":
		fmt.Fprint(stdout, backupUsage)
		return nil
	case "create":
		return runBackupCreate(args[1:], stdout, stderr)
	case "list":
		return runBackupList(args[1:], stdout, stderr)
	case "verify":
		return runBackupVerify(args[1:], stdout, stderr)
	case "restore":
		return runBackupRestore(args[1:], stdout, stderr)
	case "prune":
		return runBackupPrune(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "meterline backup: unknown subcommand %q\n\n%s", args[0], backupUsage)
	return errUsage
}

// backupFlags parses the flags every backup subcommand shares and loads
// the configuration.
func backupFlags(name, synopsis string, args []string, stderr io.Writer, extra func(fs *flag.FlagSet)) (*Config, *store.BackupStore, []string, error) {
	fs := newFlagSet("backup "+name, "backup "+synopsis, stderr)
	var cf commonFlags
	cf.registerFor(fs, flagsStore)
	dir := fs.String("dir", "", "backups `directory` (overrides backup.dir)")
	if extra != nil {
		extra(fs)
	}
	if err := parse(fs, args); err != nil {
		return nil, nil, nil, err
	}
	cfg, err := cf.load()
	if err != nil {
		return nil, nil, nil, err
	}
	if *dir != "" {
		cfg.Backup.Dir = *dir
		if err := cfg.Backup.validate(cfg); err != nil {
			return nil, nil, nil, err
		}
	}
	st, err := backupStore(cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	return cfg, st, fs.Args(), nil
}

func runBackupCreate(args []string, stdout, stderr io.Writer) error {
	var name, base *string
	var quiet, noPrune *bool
	cfg, st, rest, err := backupFlags("create", "create [--config FILE] [--name NAME] [--base NAME] [--quiet] [--no-prune]", args, stderr, func(fs *flag.FlagSet) {
		name = fs.String("name", "", "`name` of the backup (default the UTC time, 20261207T161500Z)")
		base = fs.String("base", "", "make an incremental backup on backup `NAME` (only what changed since is written)")
		quiet = fs.Bool("quiet", false, "no progress bar")
		noPrune = fs.Bool("no-prune", false, "do not remove backups older than backup.retention_months")
	})
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		fmt.Fprintf(stderr, "unexpected argument %q (name the backup with --name)\n", rest[0])
		return errUsage
	}
	for _, n := range []string{*name, *base} {
		if n != "" {
			if err := store.CheckBackupName(n); err != nil {
				fmt.Fprintf(stderr, "meterline backup create: %v\n", err)
				return errUsage
			}
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	sc, err := storeConfig(cfg)
	if err != nil {
		return err
	}
	sc.Backup = st
	db, log, err := openStoreForCommand(ctx, cfg, sc, stderr)
	if err != nil {
		return err
	}
	defer db.Close()
	p := term.NewProgress(stderr, *quiet)
	p.SetUnit("bytes")
	started := false
	m, err := store.CreateBackup(ctx, db, st, store.BackupOptions{Name: *name, Base: *base, Progress: func(done, total int64) {
		if !started {
			p.Start(uint64(total))
			started = true
		}
		p.Set(uint64(done), "")
	}})
	if started {
		p.Finish()
	}
	if err != nil {
		return err
	}
	kind := "full"
	if m.Base != "" {
		kind = "incremental on " + m.Base
	}
	var rows uint64
	for _, t := range m.Tables {
		rows += t.Rows
	}
	fmt.Fprintf(stdout, "backup %s (%s, encryption %s): %d tables, %d rows, %d files, %d bytes in %.1fs\n  %s\n",
		m.Name, kind, m.Encryption, len(m.Tables), rows, len(m.Files), m.Bytes, m.Seconds, st.BackupDir(m.Name))
	log.Info("backup created", "name", m.Name, "base", m.Base, "bytes", m.Bytes, "rows", rows, "seconds", m.Seconds)
	if !*noPrune {
		return pruneBackups(cfg, st, stdout, m.Name)
	}
	return nil
}

// openStoreForCommand opens the engine with sc for a one-shot command.
func openStoreForCommand(ctx context.Context, cfg *Config, sc store.Config, stderr io.Writer) (store.Conn, *slog.Logger, error) {
	lc := *cfg
	if lc.Log.Level == "info" && os.Getenv(EnvPrefix+"LOG_LEVEL") == "" {
		lc.Log.Level = "warn"
	}
	log := newLogger(&lc, stderr)
	db, err := store.Open(ctx, sc, log)
	if err != nil {
		if len(cfg.ClickHouse.Addr) == 0 && !errors.Is(err, store.ErrNoLibrary) && !errors.Is(err, store.ErrEncryptionKey) {
			err = fmt.Errorf("%w\n(the embedded engine's data directory %s can be open in one process only: stop `meterline serve` first)", err, cfg.ClickHouse.DataDir)
		}
		return nil, nil, err
	}
	return db, log, nil
}

// pruneBackups removes the backups older than the retention, never keep.
func pruneBackups(cfg *Config, st *store.BackupStore, stdout io.Writer, keep string) error {
	cutoff := time.Now().AddDate(0, -cfg.Backup.RetentionMonths, 0)
	if keep != "" {
		// A new backup is never older than the cutoff; this guards a clock
		// set far ahead from removing what was just written.
		if m, err := store.ReadManifest(st, keep); err == nil && m.CreatedAt.Before(cutoff) {
			return fmt.Errorf("backup %s is older than backup.retention_months; is the clock right?", keep)
		}
	}
	removed, err := store.PruneBackups(st, cutoff)
	for _, n := range removed {
		fmt.Fprintf(stdout, "removed backup %s (older than %d months, or incremental on one)\n", n, cfg.Backup.RetentionMonths)
	}
	return err
}

func runBackupPrune(args []string, stdout, stderr io.Writer) error {
	cfg, st, rest, err := backupFlags("prune", "prune [--config FILE]", args, stderr, nil)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		fmt.Fprintf(stderr, "unexpected argument %q\n", rest[0])
		return errUsage
	}
	return pruneBackups(cfg, st, stdout, "")
}

func runBackupList(args []string, stdout, stderr io.Writer) error {
	_, st, rest, err := backupFlags("list", "list [--config FILE]", args, stderr, nil)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		fmt.Fprintf(stderr, "unexpected argument %q\n", rest[0])
		return errUsage
	}
	list, err := store.ListBackups(st)
	if err != nil {
		return err
	}
	sort.Slice(list, func(i, j int) bool {
		a, b := list[i].Manifest, list[j].Manifest
		if a != nil && b != nil && !a.CreatedAt.Equal(b.CreatedAt) {
			return a.CreatedAt.Before(b.CreatedAt)
		}
		return list[i].Name < list[j].Name
	})
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tCREATED\tBASE\tENCRYPTION\tROWS\tBYTES\tSTATE")
	for _, b := range list {
		if b.Manifest == nil {
			fmt.Fprintf(tw, "%s\t\t\t\t\t\tincomplete: %v\n", b.Name, b.Err)
			continue
		}
		m := b.Manifest
		var rows uint64
		for _, t := range m.Tables {
			rows += t.Rows
		}
		base := m.Base
		if base == "" {
			base = "(full)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\tcomplete\n", m.Name, m.CreatedAt.UTC().Format(time.RFC3339), base, m.Encryption, rows, m.Bytes)
	}
	if len(list) == 0 {
		fmt.Fprintf(stdout, "no backups in %s\n", st.Dir)
	}
	return tw.Flush()
}

func runBackupVerify(args []string, stdout, stderr io.Writer) error {
	_, st, rest, err := backupFlags("verify", "verify [--config FILE] NAME", args, stderr, nil)
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		fmt.Fprintln(stderr, "give exactly one backup name (see meterline backup list)")
		return errUsage
	}
	if err := store.CheckBackupName(rest[0]); err != nil {
		fmt.Fprintf(stderr, "meterline backup verify: %v\n", err)
		return errUsage
	}
	m, err := store.VerifyBackup(st, rest[0])
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "backup %s is complete: %d files, %d bytes match the manifest", m.Name, len(m.Files), m.Bytes)
	if m.Base != "" {
		fmt.Fprintf(stdout, " (and so do its bases from %s)", m.Base)
	}
	fmt.Fprintln(stdout)
	return nil
}

func runBackupRestore(args []string, stdout, stderr io.Writer) error {
	var target *string
	var replace, quiet, resetOffsets *bool
	cfg, st, rest, err := backupFlags("restore", "restore [--config FILE] [--target DIR] [--replace] [--reset-offsets] [--quiet] NAME", args, stderr, func(fs *flag.FlagSet) {
		resetOffsets = fs.Bool("reset-offsets", false, "reset the sink's consumer group (sink.group_id) to the backup's Kafka offsets, so that serve reads again every event the backup lacks (no sink may run)")
		target = fs.String("target", "", "data `directory` to restore into (default clickhouse.data_dir); it must be missing or empty unless --replace")
		replace = fs.Bool("replace", false, "replace a data directory that holds data (the engine must be stopped)")
		quiet = fs.Bool("quiet", false, "no progress bar")
	})
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		fmt.Fprintln(stderr, "give exactly one backup name (see meterline backup list), after the flags")
		return errUsage
	}
	if err := store.CheckBackupName(rest[0]); err != nil {
		fmt.Fprintf(stderr, "meterline backup restore: %v\n", err)
		return errUsage
	}
	if len(cfg.ClickHouse.Addr) > 0 {
		return errors.New("backup restore builds the embedded engine's data directory; a ClickHouse server restores with its own RESTORE from the disk meterline_backup (see docs/operations.md)")
	}
	// The erasure log is the configured one (beside the configured data
	// directory by default), also when restoring elsewhere. It is read
	// before anything else: a restore must not go on without knowing
	// every erasure.
	logPath := cfg.erasureLogPath()
	if *target != "" {
		cfg.ClickHouse.DataDir = *target
	}
	lc := *cfg
	if lc.Log.Level == "info" && os.Getenv(EnvPrefix+"LOG_LEVEL") == "" {
		lc.Log.Level = "warn"
	}
	log := newLogger(&lc, stderr)
	logged, err := privacy.ReadErasureLog(logPath, log)
	if err != nil {
		return fmt.Errorf("%w\n(nothing was restored: fix or restore the erasure log first)", err)
	}
	sc, err := storeConfig(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	p := term.NewProgress(stderr, *quiet)
	p.SetUnit("bytes")
	started := false
	start := time.Now()
	r, err := store.BeginRestore(ctx, st, rest[0], sc, store.RestoreOptions{Replace: *replace, Progress: func(done, total int64) {
		if !started {
			p.Start(uint64(total))
			started = true
		}
		p.Set(uint64(done), "")
	}}, log)
	if started {
		p.Finish()
	}
	if err != nil {
		if errors.Is(err, store.ErrUnavailable) {
			err = fmt.Errorf("%w\n(stop `meterline serve` on that data directory first)", err)
		}
		return err
	}
	res, err := privacy.Reapply(ctx, r.Conn, logged, "backup restore", log)
	if err != nil {
		r.Abort()
		return fmt.Errorf("%w\n(nothing was restored: the target is unchanged)", err)
	}
	if *resetOffsets {
		offsets, err := r.Manifest.PartitionOffsets()
		if err == nil {
			_, err = ingest.ResetGroupOffsets(ctx, cfg.Kafka, cfg.Sink.GroupID, offsets)
		}
		if err != nil {
			r.Abort()
			return fmt.Errorf("%w\n(nothing was restored: the target is unchanged)", err)
		}
	}
	if err := r.Commit(); err != nil {
		return err
	}
	var rows uint64
	for _, t := range r.Tables {
		rows += t.Rows
	}
	fmt.Fprintf(stdout, "restored backup %s into %s: %d tables, %d rows (counts and checksums equal the manifest) in %.1fs\n",
		r.Manifest.Name, r.Target, len(r.Tables), rows, time.Since(start).Seconds())
	fmt.Fprintf(stdout, "erasures: %d recorded from %s, %d re-applied", res.Recorded, logPath, res.Erasures)
	var removed uint64
	for _, n := range res.Removed {
		removed += n
	}
	fmt.Fprintf(stdout, ", %d rows of %d erased customer(s) removed again\n", removed, len(res.Customers))
	if len(r.Manifest.KafkaOffsets) > 0 {
		parts := make([]string, 0, len(r.Manifest.KafkaOffsets))
		for p := range r.Manifest.KafkaOffsets {
			parts = append(parts, p)
		}
		sort.Strings(parts)
		if *resetOffsets {
			fmt.Fprintf(stdout, "consumer group %s reset to the offsets after the backup's newest events:", cfg.Sink.GroupID)
		} else {
			fmt.Fprintf(stdout, "events topic offsets after the backup's newest events (--reset-offsets resets the sink's consumer group %s to these, to read again what the backup lacks):", cfg.Sink.GroupID)
		}
		for _, p := range parts {
			fmt.Fprintf(stdout, " %s:%d", p, r.Manifest.KafkaOffsets[p])
		}
		fmt.Fprintln(stdout)
	}
	return nil
}
