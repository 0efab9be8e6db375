package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// restoreStagingInfix names the staging directories of restores: a
// restore into DIR builds DIR.meterline-restore-XXXXXXXX and puts it in
// place only once it is complete, so that a restore that is stopped or
// killed leaves DIR as it was. A later restore removes the leftovers.
const restoreStagingInfix = ".meterline-restore-"

// Restore is a backup restored into a staging data directory, open on the
// embedded engine: the caller re-applies what must be (erasures recorded
// since the backup) through Conn, then puts it in place with Commit, or
// drops it with Abort.
type Restore struct {
	// Conn is open on the restored database in the staging directory.
	Conn Conn
	// Manifest is the restored backup's.
	Manifest *BackupManifest
	// Target is the data directory the restore replaces; Staging is where
	// it is built.
	Target, Staging string
	// Tables are the restored tables' counts, equal to the manifest's.
	Tables []BackupTable

	hold    Conn
	replace bool
	done    bool
}

// RestoreOptions tunes BeginRestore.
type RestoreOptions struct {
	// Replace allows replacing a data directory that holds data (the
	// engine must be stopped: its lock is checked). Without it the target
	// must be missing or empty.
	Replace bool
	// Progress, when set, is called with the bytes restored so far and the
	// archive's size.
	Progress func(done, total int64)
}

// BeginRestore verifies backup name of st, then restores it into a fresh
// staging directory next to cfg.DataDir, booting the embedded engine
// there with cfg's encryption at rest (the restored data is written with
// the current key), and checks that every table has the manifest's row
// count and checksum. Nothing outside the staging directory is changed.
// One process can run one engine: call it in a process that has no other
// Conn open.
func BeginRestore(ctx context.Context, st *BackupStore, name string, cfg Config, opts RestoreOptions, log *slog.Logger) (*Restore, error) {
	if len(cfg.Addr) > 0 {
		return nil, errors.New("store: restore builds an embedded engine's data directory; restore into a ClickHouse server with its own RESTORE")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := st.validate(); err != nil {
		return nil, fmt.Errorf("store: backup store: %w", err)
	}
	m, err := VerifyBackup(st, name)
	if err != nil {
		return nil, err
	}
	if err := checkAtRestKey(m, cfg.Encryption); err != nil {
		return nil, err
	}
	if cfg.Database == "" {
		cfg.Database = DefaultDatabase
	}
	if m.Database != cfg.Database {
		return nil, fmt.Errorf("store: backup %s holds database %s, but the configured database is %s", name, m.Database, cfg.Database)
	}
	if cfg.DataDir == "" {
		return nil, errors.New("store: restore: no data directory")
	}
	target, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	if err := st.checkOutside(target); err != nil {
		return nil, err
	}
	empty, err := dirEmpty(target)
	if err != nil {
		return nil, fmt.Errorf("store: restore target: %w", err)
	}
	if !empty {
		if !opts.Replace {
			return nil, fmt.Errorf("store: restore target %s holds data; stop the engine and pass replace (--replace) to replace it, or restore into an empty directory", target)
		}
		if err := checkNotRunning(target); err != nil {
			return nil, err
		}
	}
	if err := removeStaleStaging(target, log); err != nil {
		return nil, err
	}
	staging := target + restoreStagingInfix + randomSuffix()
	if err := os.MkdirAll(staging, 0o750); err != nil {
		return nil, fmt.Errorf("store: restore: %w", err)
	}
	r := &Restore{Manifest: m, Target: target, Staging: staging, replace: !empty}
	fail := func(err error) (*Restore, error) {
		r.Abort()
		return nil, err
	}
	hc := cfg
	hc.DataDir, hc.Database, hc.Backup = staging, "system", st
	if r.hold, err = Open(ctx, hc, log); err != nil {
		return fail(err)
	}
	if err := r.hold.Exec(ctx, "SYSTEM STOP MERGES"); err != nil {
		return fail(fmt.Errorf("store: restore: stop merges: %w", err))
	}
	total := m.Bytes
	for b := m.Base; b != ""; {
		bm, err := ReadManifest(st, b)
		if err != nil {
			return fail(err)
		}
		total += bm.Bytes
		b = bm.Base
	}
	qdb, err := quoteName(m.Database)
	if err != nil {
		return fail(err)
	}
	if err := runAsync(ctx, r.hold, "RESTORE DATABASE "+qdb+" FROM "+st.diskRef(name), staging, total, opts.Progress); err != nil {
		return fail(fmt.Errorf("store: restore %s: %w", name, err))
	}
	dc := hc
	dc.Database = m.Database
	if r.Conn, err = Open(ctx, dc, log); err != nil {
		return fail(err)
	}
	if r.Tables, err = tableStats(ctx, r.Conn); err != nil {
		return fail(fmt.Errorf("store: restore %s: %w", name, err))
	}
	if err := compareTables(m.Tables, r.Tables); err != nil {
		return fail(fmt.Errorf("%w: restore %s: the restored tables differ from the manifest: %w", ErrBackupCorrupt, name, err))
	}
	return r, nil
}

func compareTables(want, got []BackupTable) error {
	byName := map[string]BackupTable{}
	for _, t := range got {
		byName[t.Name] = t
	}
	var errs []error
	for _, w := range want {
		g, ok := byName[w.Name]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("table %s is missing", w.Name))
		case g.Rows != w.Rows:
			errs = append(errs, fmt.Errorf("table %s has %d rows, not %d", w.Name, g.Rows, w.Rows))
		case g.RowHash != w.RowHash:
			errs = append(errs, fmt.Errorf("table %s: row checksum differs", w.Name))
		}
		delete(byName, w.Name)
	}
	for n := range byName {
		errs = append(errs, fmt.Errorf("table %s is not in the manifest", n))
	}
	return errors.Join(errs...)
}

// Commit shuts the staging engine down and puts the staging directory in
// place of the target in one step: a missing or empty target is renamed
// over, a target with data is exchanged with it atomically and then
// removed. A process killed at any instant leaves the target either as it
// was or the complete restore. The process's engine is gone afterwards.
func (r *Restore) Commit() error {
	if r.done {
		return errors.New("store: restore already finished")
	}
	r.done = true
	r.closeConns()
	if err := syncTree(r.Staging); err != nil {
		return fmt.Errorf("store: restore: sync %s: %w", r.Staging, err)
	}
	// The engine configuration names the staging path; the next boot
	// writes it again for the target.
	_ = os.Remove(filepath.Join(r.Staging, storageConfigFile))
	if !r.replace {
		_ = os.Remove(r.Target) // an empty directory, if any
		if err := os.Rename(r.Staging, r.Target); err != nil {
			return fmt.Errorf("store: restore: put %s in place: %w", r.Staging, err)
		}
		return syncDir(filepath.Dir(r.Target))
	}
	unlock, err := lockDataDir(r.Target)
	if err != nil {
		return err
	}
	err = exchangeDirs(r.Staging, r.Target)
	unlock()
	if err != nil {
		return fmt.Errorf("store: restore: exchange %s and %s: %w", r.Staging, r.Target, err)
	}
	if err := syncDir(filepath.Dir(r.Target)); err != nil {
		return err
	}
	// r.Staging now holds the replaced data.
	return os.RemoveAll(r.Staging)
}

// Abort drops the staging directory; the target is left as it was.
func (r *Restore) Abort() {
	if r.done {
		return
	}
	r.done = true
	r.closeConns()
	_ = os.RemoveAll(r.Staging)
}

func (r *Restore) closeConns() {
	if r.Conn != nil {
		_ = r.Conn.Close()
	}
	if r.hold != nil {
		_ = r.hold.Close()
	}
}

// dirEmpty tells whether dir is missing or holds nothing (an engine lock
// file left by a stopped engine counts as nothing).
func dirEmpty(dir string) (bool, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	for _, e := range entries {
		if e.Name() != "status" {
			return false, nil
		}
	}
	return true, nil
}

// removeStaleStaging removes the staging directories of restores into
// target that were stopped or killed (and the data a killed Commit
// exchanged out), unless an engine runs on one.
func removeStaleStaging(target string, log *slog.Logger) error {
	matches, _ := filepath.Glob(target + restoreStagingInfix + "*")
	for _, m := range matches {
		if !strings.HasPrefix(filepath.Base(m), filepath.Base(target)+restoreStagingInfix) {
			continue
		}
		if err := checkNotRunning(m); err != nil {
			return fmt.Errorf("store: restore: %s: %w", m, err)
		}
		if err := os.RemoveAll(m); err != nil {
			return err
		}
		log.Info("removed the staging directory of a restore that did not finish", "path", m)
	}
	return nil
}

// syncTree fsyncs every file and directory under dir.
func syncTree(dir string) error {
	return filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && !d.Type().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		err = f.Sync()
		f.Close()
		return err
	})
}
