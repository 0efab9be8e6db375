package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// A backup NAME in a BackupStore's directory is the directory NAME/
// holding archive/ (what the engine's BACKUP wrote, through the backup
// disk: encrypted files when the store has a key) and manifest.json
// (written by Meterline once the archive is complete: per-table row
// counts and row checksums, and every archive file's size and SHA-256).
// A backup without a manifest is incomplete (its creation was stopped).
const (
	backupArchiveDir = "archive"
	manifestFile     = "manifest.json"
	manifestFormat   = 1
	maxManifestBytes = 64 << 20
)

// ErrBackupCorrupt marks a backup whose files do not match its manifest
// (missing, truncated or changed files), or that has no manifest.
var ErrBackupCorrupt = errors.New("backup is corrupt or incomplete")

// backupNameRe is what a backup may be called: a directory name, no path.
var backupNameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$`)

// CheckBackupName refuses names that are not plain directory names.
func CheckBackupName(name string) error {
	if !backupNameRe.MatchString(name) || strings.Contains(name, "..") {
		return fmt.Errorf("backup name %q must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	return nil
}

// BackupManifest describes one backup.
type BackupManifest struct {
	Format    int       `json:"format"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	// Base names the backup this one is incremental on ("" for a full one).
	Base     string `json:"base,omitempty"`
	Database string `json:"database"`
	// Encryption is BackupPlain, BackupPassword or BackupAtRestKeys;
	// KeyFingerprint is the fingerprint of the key the archive was written
	// with (the engine writes it into every encrypted file's header).
	Encryption     string `json:"encryption"`
	KeyFingerprint string `json:"key_fingerprint,omitempty"`
	// Tables are the MergeTree tables' row counts and checksums, taken
	// with merges stopped, right after the BACKUP.
	Tables []BackupTable `json:"tables"`
	// Files are the archive's files, relative to archive/.
	Files []BackupFile `json:"files"`
	// Bytes is the archive's size on disk; Seconds how long BACKUP took.
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
	// KafkaOffsets are, per partition of the events topic, the offset
	// after the last event the backup holds: a restore followed by a
	// reset of the sink's consumer group to these offsets re-reads every
	// event the backup lacks (the sink deduplicates what it holds).
	KafkaOffsets map[string]int64 `json:"kafka_offsets,omitempty"`
}

// BackupTable is one table's content in a manifest.
type BackupTable struct {
	Name string `json:"name"`
	Rows uint64 `json:"rows"`
	// RowHash is the sum of the rows' hashes (cityHash64 of each row in
	// RowBinary, mod 2^64), over every column, aggregate states included: equal
	// contents have equal hashes, whatever the order of rows and parts.
	RowHash uint64 `json:"row_hash"`
}

// BackupFile is one file of an archive.
type BackupFile struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// BackupInfo is one entry of ListBackups.
type BackupInfo struct {
	Name string
	// Manifest is nil for an incomplete backup.
	Manifest *BackupManifest
	// Err says why the manifest could not be read.
	Err error
}

// BackupOptions tunes CreateBackup.
type BackupOptions struct {
	// Name of the new backup; default the UTC time, 20261207T161500Z.
	Name string
	// Base makes the backup incremental on that backup of the store,
	// which must verify.
	Base string
	// Progress, when set, is called with the bytes written so far and
	// an estimate of the total.
	Progress func(done, total int64)
}

// BackupDir returns the directory of backup name in st.
func (st *BackupStore) BackupDir(name string) string { return filepath.Join(st.Dir, name) }

func (st *BackupStore) diskPath(name string) string { return name + "/" + backupArchiveDir }

// diskRef is the engine's name of backup name's archive.
func (st *BackupStore) diskRef(name string) string {
	return "Disk('" + backupDiskName + "', '" + st.diskPath(name) + "')"
}

// checkConn refuses an embedded Conn whose engine booted without st.
func (st *BackupStore) checkConn(c Conn) error {
	if id, ok := embeddedBackupID(c); ok && id != st.id() {
		return errors.New("store: the embedded engine was opened without this backup store (Config.Backup)")
	}
	return nil
}

// CreateBackup backs the Conn's database up into st with the engine's
// BACKUP DATABASE, writes the manifest and returns it. Merges are stopped
// while it runs, so the row counts describe exactly what the archive
// holds. A failed or stopped backup leaves no directory behind.
func CreateBackup(ctx context.Context, c Conn, st *BackupStore, opts BackupOptions) (*BackupManifest, error) {
	if err := st.checkConn(c); err != nil {
		return nil, err
	}
	name := opts.Name
	if name == "" {
		name = time.Now().UTC().Format("20060102T150405Z")
	}
	if err := CheckBackupName(name); err != nil {
		return nil, err
	}
	var base *BackupManifest
	if opts.Base != "" {
		if err := CheckBackupName(opts.Base); err != nil {
			return nil, fmt.Errorf("base: %w", err)
		}
		m, err := VerifyBackup(st, opts.Base)
		if err != nil {
			return nil, fmt.Errorf("store: base backup %s: %w", opts.Base, err)
		}
		base = m
	}
	dir := st.BackupDir(name)
	if _, err := os.Lstat(dir); err == nil {
		return nil, fmt.Errorf("store: backup %s already exists in %s", name, st.Dir)
	}
	db, err := currentDatabase(ctx, c)
	if err != nil {
		return nil, err
	}
	if base != nil && base.Database != db {
		return nil, fmt.Errorf("store: base backup %s is of database %s, not %s", opts.Base, base.Database, db)
	}
	qdb, err := quoteName(db)
	if err != nil {
		return nil, err
	}
	if err := c.Exec(ctx, "SYSTEM STOP MERGES"); err != nil {
		return nil, fmt.Errorf("store: backup: stop merges: %w", err)
	}
	defer func() { _ = c.Exec(context.WithoutCancel(ctx), "SYSTEM START MERGES") }()
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(dir)
		}
	}()
	var total int64
	if rows, err := c.Query(ctx, "SELECT toInt64(sum(bytes_on_disk)) FROM system.parts WHERE database = currentDatabase() AND active"); err == nil {
		if rows.Next() {
			_ = rows.Scan(&total)
		}
		rows.Close()
	}
	q := "BACKUP DATABASE " + qdb + " TO " + st.diskRef(name)
	if base != nil {
		q += " SETTINGS base_backup = " + st.diskRef(opts.Base)
	}
	start := time.Now()
	if err := runAsync(ctx, c, q, filepath.Join(dir, backupArchiveDir), total, opts.Progress); err != nil {
		return nil, fmt.Errorf("store: backup %s: %w", name, err)
	}
	m := &BackupManifest{Format: manifestFormat, Name: name, CreatedAt: start.UTC(), Base: opts.Base, Database: db,
		Encryption: st.mode(), Seconds: time.Since(start).Seconds()}
	if m.Encryption != BackupPlain {
		h, err := archiveHeader(filepath.Join(dir, backupArchiveDir))
		if err != nil {
			return nil, err
		}
		m.KeyFingerprint = hex.EncodeToString(h.fingerprint[:])
	}
	if m.Tables, err = tableStats(ctx, c); err != nil {
		return nil, fmt.Errorf("store: backup %s: %w", name, err)
	}
	if m.KafkaOffsets, err = kafkaOffsets(ctx, c); err != nil {
		return nil, fmt.Errorf("store: backup %s: %w", name, err)
	}
	if m.Files, m.Bytes, err = hashTree(filepath.Join(dir, backupArchiveDir)); err != nil {
		return nil, fmt.Errorf("store: backup %s: %w", name, err)
	}
	if err := writeManifest(dir, m); err != nil {
		return nil, fmt.Errorf("store: backup %s: %w", name, err)
	}
	ok = true
	return m, nil
}

// runAsync runs a BACKUP or RESTORE with ASYNC and waits for it to end,
// reporting the size of dir against total as progress.
func runAsync(ctx context.Context, c Conn, q, dir string, total int64, progress func(done, total int64)) error {
	rows, err := c.Query(ctx, q+" ASYNC")
	if err != nil {
		return err
	}
	var id, status string
	if rows.Next() {
		err = rows.Scan(&id, &status)
	}
	rows.Close()
	if err != nil {
		return err
	}
	if id == "" {
		return errors.New("the engine returned no operation id")
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		var errText string
		rows, err := c.Query(context.WithoutCancel(ctx), "SELECT status, error FROM system.backups WHERE id = {id:String}", P("id", id))
		if err != nil {
			return err
		}
		if rows.Next() {
			err = rows.Scan(&status, &errText)
		}
		rows.Close()
		if err != nil {
			return err
		}
		switch status {
		case "BACKUP_CREATED", "RESTORED":
			if err := ctx.Err(); err != nil {
				return err
			}
			if progress != nil {
				done := treeSize(dir)
				progress(done, max(total, done))
			}
			return nil
		case "BACKUP_FAILED", "RESTORE_FAILED", "BACKUP_CANCELLED", "RESTORE_CANCELLED":
			if err := ctx.Err(); err != nil {
				return err
			}
			if i := strings.Index(errText, ", Stack trace"); i > 0 {
				errText = errText[:i]
			}
			return engineError(errText)
		}
		if progress != nil {
			done := treeSize(dir)
			progress(done, max(total, done))
		}
		if ctx.Err() != nil {
			// A started BACKUP or RESTORE cannot be stopped from here: wait
			// for the engine to finish it, so that the caller removes
			// what it wrote only once nothing writes there any more.
			<-tick.C
			continue
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

func treeSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

func currentDatabase(ctx context.Context, c Conn) (string, error) {
	rows, err := c.Query(ctx, "SELECT currentDatabase()")
	if err != nil {
		return "", err
	}
	defer rows.Close()
	var db string
	if rows.Next() {
		err = rows.Scan(&db)
	}
	if err == nil {
		err = rows.Err()
	}
	return db, err
}

// tableStats counts the rows of every MergeTree table of the database and
// sums their hashes.
func tableStats(ctx context.Context, c Conn) ([]BackupTable, error) {
	rows, err := c.Query(ctx, "SELECT name FROM system.tables WHERE database = currentDatabase() AND engine LIKE '%MergeTree' ORDER BY name")
	if err != nil {
		return nil, err
	}
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return nil, err
		}
		names = append(names, n)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	out := make([]BackupTable, 0, len(names))
	for _, n := range names {
		qt, err := quoteName(n)
		if err != nil {
			return nil, err
		}
		r, err := c.Query(ctx, "SELECT count(), sum(cityHash64(formatRow('RowBinary', *))) FROM "+qt)
		if err != nil {
			return nil, fmt.Errorf("count %s: %w", n, err)
		}
		t := BackupTable{Name: n}
		if r.Next() {
			err = r.Scan(&t.Rows, &t.RowHash)
		}
		r.Close()
		if err != nil {
			return nil, fmt.Errorf("count %s: %w", n, err)
		}
		out = append(out, t)
	}
	return out, nil
}

// kafkaOffsets reads, per partition, the offset after the newest event the
// events table holds (none when there is no events table).
func kafkaOffsets(ctx context.Context, c Conn) (map[string]int64, error) {
	rows, err := c.Query(ctx, "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'events'")
	if err != nil {
		return nil, err
	}
	var n int64
	if rows.Next() {
		err = rows.Scan(&n)
	}
	rows.Close()
	if err != nil || n == 0 {
		return nil, err
	}
	rows, err = c.Query(ctx, "SELECT toString(kafka_partition), max(kafka_offset) + 1 FROM events GROUP BY kafka_partition ORDER BY kafka_partition")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var p string
		var off int64
		if err := rows.Scan(&p, &off); err != nil {
			return nil, err
		}
		out[p] = off
	}
	return out, rows.Err()
}

// hashTree lists the regular files under dir with their sizes and SHA-256.
func hashTree(dir string) ([]BackupFile, int64, error) {
	var out []BackupFile
	var total int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s is not a regular file", p)
		}
		sum, size, err := hashFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out = append(out, BackupFile{Path: filepath.ToSlash(rel), Size: size, SHA256: sum})
		total += size
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, total, err
}

func hashFile(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// archiveHeader reads the encryption header of the archive's .backup file.
func archiveHeader(dir string) (encHeader, error) {
	h, ok, err := readEncHeader(filepath.Join(dir, ".backup"))
	if err != nil {
		return h, fmt.Errorf("store: backup archive: %w", err)
	}
	if !ok {
		return h, errors.New("store: backup archive: .backup is not encrypted although the store has a key")
	}
	return h, nil
}

// writeManifest writes the manifest atomically and durably: the backup
// counts as complete only once it is there.
func writeManifest(dir string, m *BackupManifest) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, manifestFile+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(data, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, manifestFile)); err != nil {
		return err
	}
	return syncDir(dir)
}

// ReadManifest reads backup name's manifest; a missing or unreadable one
// is ErrBackupCorrupt.
func ReadManifest(st *BackupStore, name string) (*BackupManifest, error) {
	if err := CheckBackupName(name); err != nil {
		return nil, err
	}
	dir := st.BackupDir(name)
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("store: no backup %s in %s", name, st.Dir)
	}
	f, err := os.Open(filepath.Join(dir, manifestFile))
	if err != nil {
		return nil, fmt.Errorf("%w: %s has no manifest (its creation did not finish); remove it", ErrBackupCorrupt, name)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxManifestBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxManifestBytes {
		return nil, fmt.Errorf("%w: %s: manifest is larger than %d bytes", ErrBackupCorrupt, name, maxManifestBytes)
	}
	var m BackupManifest
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: %s: manifest: %v", ErrBackupCorrupt, name, err)
	}
	var errs []error
	if m.Format != manifestFormat {
		errs = append(errs, fmt.Errorf("format %d is not %d", m.Format, manifestFormat))
	}
	if m.Name != name {
		errs = append(errs, fmt.Errorf("names backup %q", m.Name))
	}
	if m.Base != "" {
		if err := CheckBackupName(m.Base); err != nil || m.Base == name {
			errs = append(errs, fmt.Errorf("base %q is not another backup's name", m.Base))
		}
	}
	switch m.Encryption {
	case BackupPlain, BackupPassword, BackupAtRestKeys:
	default:
		errs = append(errs, fmt.Errorf("encryption %q is unknown", m.Encryption))
	}
	if !validIdentifier(m.Database) {
		errs = append(errs, fmt.Errorf("database %q is not an identifier", m.Database))
	}
	for _, f := range m.Files {
		if f.Path == "" || strings.HasPrefix(f.Path, "/") || slices.Contains(strings.Split(f.Path, "/"), "..") || f.Size < 0 {
			errs = append(errs, fmt.Errorf("file %q is outside the archive", f.Path))
			break
		}
	}
	if _, err := m.PartitionOffsets(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: %s: manifest: %w", ErrBackupCorrupt, name, errors.Join(errs...))
	}
	return &m, nil
}

// PartitionOffsets returns KafkaOffsets by partition number.
func (m *BackupManifest) PartitionOffsets() (map[int]int64, error) {
	out := make(map[int]int64, len(m.KafkaOffsets))
	for k, v := range m.KafkaOffsets {
		p, err := strconv.Atoi(k)
		if err != nil || p < 0 || p > 1<<20 || v < 0 {
			return nil, fmt.Errorf("kafka offset %q: %d is not a partition and an offset", k, v)
		}
		out[p] = v
	}
	return out, nil
}

func validIdentifier(s string) bool { return identifier.MatchString(s) && len(s) <= 64 }

// VerifyBackup checks that every file of backup name (and of the backups
// it is incremental on) is there with its size and SHA-256, that no file
// was added, and that the archive was written with the store's key. It
// reads files only; the engine need not run.
func VerifyBackup(st *BackupStore, name string) (*BackupManifest, error) {
	return verifyChain(st, name, map[string]bool{})
}

func verifyChain(st *BackupStore, name string, seen map[string]bool) (*BackupManifest, error) {
	if seen[name] {
		return nil, fmt.Errorf("%w: %s: its base backups form a loop", ErrBackupCorrupt, name)
	}
	seen[name] = true
	m, err := ReadManifest(st, name)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(st.BackupDir(name), backupArchiveDir)
	got, _, err := hashTree(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s: %v", ErrBackupCorrupt, name, err)
	}
	have := map[string]BackupFile{}
	for _, f := range got {
		have[f.Path] = f
	}
	var errs []error
	for _, want := range m.Files {
		f, ok := have[want.Path]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("%s is missing", want.Path))
		case f.Size != want.Size:
			errs = append(errs, fmt.Errorf("%s has %d bytes, not %d (truncated or changed)", want.Path, f.Size, want.Size))
		case f.SHA256 != want.SHA256:
			errs = append(errs, fmt.Errorf("%s does not match its checksum (corrupted)", want.Path))
		}
		delete(have, want.Path)
	}
	for p := range have {
		errs = append(errs, fmt.Errorf("%s is not in the manifest", p))
	}
	if len(errs) > 5 {
		errs = append(errs[:5], fmt.Errorf("and %d more", len(errs)-5))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: %s: %w", ErrBackupCorrupt, name, errors.Join(errs...))
	}
	if err := st.checkKey(m); err != nil {
		return nil, err
	}
	if m.Base != "" {
		if _, err := verifyChain(st, m.Base, seen); err != nil {
			return nil, fmt.Errorf("base backup of %s: %w", name, err)
		}
	}
	return m, nil
}

// checkKey refuses a backup that the store's configuration cannot read.
func (st *BackupStore) checkKey(m *BackupManifest) error {
	mode := st.mode()
	if m.Encryption == BackupPlain {
		if mode != BackupPlain {
			// Reading it needs the plain disk: refuse rather than fail half way.
			return fmt.Errorf("%w: backup %s is not encrypted but the backups directory is configured with encryption (%s); restore it with neither a backup password nor encryption at rest configured", ErrBackupKey, m.Name, mode)
		}
		return nil
	}
	switch {
	case mode == BackupPlain:
		return fmt.Errorf("%w: backup %s is encrypted (%s); configure backup.password_file (or METERLINE_BACKUP_PASSWORD) or the keys of encryption at rest", ErrBackupKey, m.Name, m.Encryption)
	case m.Encryption == BackupPassword && mode != BackupPassword:
		return fmt.Errorf("%w: backup %s is protected by a password; configure backup.password_file or METERLINE_BACKUP_PASSWORD", ErrBackupKey, m.Name)
	}
	// What the archive's header says wins over what the manifest says.
	h, err := archiveHeader(filepath.Join(st.BackupDir(m.Name), backupArchiveDir))
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrBackupCorrupt, m.Name, err)
	}
	if fp := hex.EncodeToString(h.fingerprint[:]); fp != m.KeyFingerprint {
		return fmt.Errorf("%w: %s: the archive's key fingerprint is not the manifest's", ErrBackupCorrupt, m.Name)
	}
	if mode == BackupPassword {
		if keyFingerprint(st.Key) != h.fingerprint {
			return fmt.Errorf("%w: backup %s was written with another password (wrong password?)", ErrBackupKey, m.Name)
		}
		return nil
	}
	return nil
}

// checkAtRestKey refuses a backup written with an at-rest key that enc
// does not hold.
func checkAtRestKey(m *BackupManifest, enc *Encryption) error {
	if m.Encryption != BackupAtRestKeys {
		return nil
	}
	if enc != nil {
		for _, k := range enc.Keys {
			fp := keyFingerprint(k.Key)
			if hex.EncodeToString(fp[:]) == m.KeyFingerprint {
				return nil
			}
		}
	}
	return fmt.Errorf("%w: backup %s was written with an encryption-at-rest key that is not configured (fingerprint %s); configure it again", ErrBackupKey, m.Name, m.KeyFingerprint)
}

// ListBackups lists the backups of st by name; incomplete ones have no
// Manifest.
func ListBackups(st *BackupStore) ([]BackupInfo, error) {
	entries, err := os.ReadDir(st.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: list backups: %w", err)
	}
	var out []BackupInfo
	for _, e := range entries {
		if !e.IsDir() || CheckBackupName(e.Name()) != nil {
			continue
		}
		m, err := ReadManifest(st, e.Name())
		out = append(out, BackupInfo{Name: e.Name(), Manifest: m, Err: err})
	}
	return out, nil
}

// PruneBackups removes the backups created before cutoff, every backup
// incremental on a removed one (it cannot be restored without its base),
// and incomplete backups older than cutoff. It returns the removed names.
func PruneBackups(st *BackupStore, cutoff time.Time) ([]string, error) {
	list, err := ListBackups(st)
	if err != nil {
		return nil, err
	}
	remove := map[string]bool{}
	for _, b := range list {
		if b.Manifest != nil && b.Manifest.CreatedAt.Before(cutoff) {
			remove[b.Name] = true
		}
		if b.Manifest == nil {
			if info, err := os.Stat(st.BackupDir(b.Name)); err == nil && info.ModTime().Before(cutoff) {
				remove[b.Name] = true
			}
		}
	}
	for changed := true; changed; {
		changed = false
		for _, b := range list {
			if b.Manifest != nil && !remove[b.Name] && remove[b.Manifest.Base] {
				remove[b.Name] = true
				changed = true
			}
		}
	}
	var out []string
	for _, b := range list {
		if !remove[b.Name] {
			continue
		}
		if err := os.RemoveAll(st.BackupDir(b.Name)); err != nil {
			return out, fmt.Errorf("store: prune backup %s: %w", b.Name, err)
		}
		out = append(out, b.Name)
	}
	return out, nil
}

// randomSuffix returns 8 random hex digits.
func randomSuffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
