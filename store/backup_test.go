package store

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeTestBackup makes a backup directory by hand: an archive with one
// file and its manifest (the engine-made ones are tested through the
// binary, in cmd/meterline).
func writeTestBackup(t *testing.T, st *BackupStore, name, base string, created time.Time) {
	t.Helper()
	dir := st.BackupDir(name)
	if err := os.MkdirAll(filepath.Join(dir, backupArchiveDir), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, backupArchiveDir, ".backup"), []byte("<config/>"), 0o640); err != nil {
		t.Fatal(err)
	}
	files, size, err := hashTree(filepath.Join(dir, backupArchiveDir))
	if err != nil {
		t.Fatal(err)
	}
	m := &BackupManifest{Format: manifestFormat, Name: name, CreatedAt: created, Base: base, Database: "meterline",
		Encryption: BackupPlain, Files: files, Bytes: size}
	if err := writeManifest(dir, m); err != nil {
		t.Fatal(err)
	}
}

func TestCheckBackupName(t *testing.T) {
	for _, ok := range []string{"full", "20261207T161500Z", "a.b-c_d", strings.Repeat("x", 100)} {
		if err := CheckBackupName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "../x", "a/b", "-x", ".hidden", "a..b", "x y", "a\x00b", strings.Repeat("x", 101), "naïve"} {
		if err := CheckBackupName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestPruneBackupsKeepsTheRetentionPromise removes backups older than the
// cutoff and every incremental backup on them, and keeps the rest.
func TestPruneBackupsKeepsTheRetentionPromise(t *testing.T) {
	st := &BackupStore{Dir: t.TempDir()}
	now := time.Now().UTC()
	old := now.AddDate(0, -13, 0)
	writeTestBackup(t, st, "old-full", "", old)
	writeTestBackup(t, st, "inc-on-old", "old-full", now.AddDate(0, -1, 0))
	writeTestBackup(t, st, "inc-on-inc", "inc-on-old", now)
	writeTestBackup(t, st, "new-full", "", now.AddDate(0, -2, 0))
	writeTestBackup(t, st, "inc-on-new", "new-full", now)
	// An incomplete backup: old ones go, a fresh one (perhaps being
	// written) stays.
	if err := os.MkdirAll(st.BackupDir("stale-incomplete"), 0o750); err != nil {
		t.Fatal(err)
	}
	_ = os.Chtimes(st.BackupDir("stale-incomplete"), old, old)
	if err := os.MkdirAll(st.BackupDir("fresh-incomplete"), 0o750); err != nil {
		t.Fatal(err)
	}
	removed, err := PruneBackups(st, now.AddDate(0, -12, 0))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(removed, ","), "inc-on-inc,inc-on-old,old-full,stale-incomplete"; got != want {
		t.Fatalf("removed %s, want %s", got, want)
	}
	list, err := ListBackups(st)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, b := range list {
		left = append(left, b.Name)
		if b.Manifest == nil && b.Name != "fresh-incomplete" {
			t.Errorf("%s: %v", b.Name, b.Err)
		}
	}
	if got := strings.Join(left, ","); got != "fresh-incomplete,inc-on-new,new-full" {
		t.Fatalf("left %s", got)
	}
	if _, err := VerifyBackup(st, "inc-on-new"); err != nil {
		t.Fatalf("a kept backup no longer verifies: %v", err)
	}
}

// TestReadManifestRefusesHostileManifests feeds manifests that are not
// what CreateBackup writes.
func TestReadManifestRefusesHostileManifests(t *testing.T) {
	st := &BackupStore{Dir: t.TempDir()}
	writeTestBackup(t, st, "b", "", time.Now())
	path := filepath.Join(st.BackupDir("b"), manifestFile)
	good, _ := os.ReadFile(path)
	edit := func(f func(m map[string]any)) string {
		var m map[string]any
		if err := json.Unmarshal(good, &m); err != nil {
			t.Fatal(err)
		}
		f(m)
		b, _ := json.Marshal(m)
		return string(b)
	}
	for name, body := range map[string]string{
		"not json":       "{",
		"empty":          "",
		"unknown field":  edit(func(m map[string]any) { m["evil"] = 1 }),
		"other name":     edit(func(m map[string]any) { m["name"] = "other" }),
		"format":         edit(func(m map[string]any) { m["format"] = 99 }),
		"base is itself": edit(func(m map[string]any) { m["base"] = "b" }),
		"base path":      edit(func(m map[string]any) { m["base"] = "../../x" }),
		"encryption":     edit(func(m map[string]any) { m["encryption"] = "rot13" }),
		"database":       edit(func(m map[string]any) { m["database"] = "x; DROP TABLE events" }),
		"absolute file":  edit(func(m map[string]any) { m["files"] = []any{map[string]any{"path": "/etc/passwd"}} }),
		"parent file":    edit(func(m map[string]any) { m["files"] = []any{map[string]any{"path": "a/../../b"}} }),
		"offsets":        edit(func(m map[string]any) { m["kafka_offsets"] = map[string]any{"x": 1} }),
		"huge":           `{"name":"` + strings.Repeat("x", maxManifestBytes) + `"}`,
	} {
		if err := os.WriteFile(path, []byte(body), 0o640); err != nil {
			t.Fatal(err)
		}
		if _, err := VerifyBackup(st, "b"); !errors.Is(err, ErrBackupCorrupt) {
			t.Errorf("%s: %v, want ErrBackupCorrupt", name, err)
		}
	}
	// A loop of bases is refused, not followed forever.
	writeTestBackup(t, st, "x", "y", time.Now())
	writeTestBackup(t, st, "y", "x", time.Now())
	if _, err := VerifyBackup(st, "x"); !errors.Is(err, ErrBackupCorrupt) || !strings.Contains(err.Error(), "loop") {
		t.Errorf("base loop: %v", err)
	}
}

// TestOpenPasswordKey derives one key per password and backups
// directory, and refuses another password and a tampered record.
func TestOpenPasswordKey(t *testing.T) {
	dir := t.TempDir()
	k1, err := OpenPasswordKey(dir, "first password")
	if err != nil {
		t.Fatal(err)
	}
	k2, err := OpenPasswordKey(dir, "first password")
	if err != nil || string(k1) != string(k2) || len(k1) != 32 {
		t.Fatalf("same password, other key: %v", err)
	}
	if _, err := OpenPasswordKey(dir, "second password"); !errors.Is(err, ErrBackupKey) {
		t.Fatalf("another password: %v, want ErrBackupKey", err)
	}
	if _, err := OpenPasswordKey(t.TempDir(), ""); err == nil {
		t.Fatal("empty password accepted")
	}
	if _, err := OpenPasswordKey(t.TempDir(), strings.Repeat("p", 1025)); err == nil {
		t.Fatal("oversized password accepted")
	}
	other, err := OpenPasswordKey(t.TempDir(), "first password")
	if err != nil || string(other) == string(k1) {
		t.Fatalf("two directories share a key (salt): %v", err)
	}
	for _, rec := range []string{"{", `{"kdf":"md5","rounds":1,"salt":"00"}`, `{"kdf":"pbkdf2-sha256","rounds":600000,"salt":"zz"}`} {
		if err := os.WriteFile(filepath.Join(dir, passwordKeyFile), []byte(rec), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := OpenPasswordKey(dir, "first password"); err == nil {
			t.Errorf("record %q accepted", rec)
		}
	}
}

// TestEngineConfigHoldsNoKey: the engine configuration of the backup
// disk names the key's variable, never the key, and refuses a backups
// directory inside the data directory.
func TestEngineConfigHoldsNoKey(t *testing.T) {
	data := t.TempDir()
	key := []byte("0123456789abcdef0123456789abcdef")
	for _, st := range []*BackupStore{
		{Dir: t.TempDir()},
		{Dir: t.TempDir(), Key: key},
		{Dir: t.TempDir(), AtRestKeys: true},
	} {
		enc := &Encryption{Keys: []EncryptionKey{{ID: 3, Key: []byte("fedcba9876543210fedcba9876543210")}}, CurrentKeyID: 3}
		xml, err := engineConfigXML(data, enc, st)
		if err != nil {
			t.Fatal(err)
		}
		s := string(xml)
		if strings.Contains(s, string(key)) || strings.Contains(s, "66656463") || strings.Contains(s, "fedcba") {
			t.Fatalf("configuration holds a key:\n%s", s)
		}
		if !strings.Contains(s, "<allowed_disk>meterline_backup</allowed_disk>") || !strings.Contains(s, st.Dir) {
			t.Fatalf("configuration lacks the backup disk:\n%s", s)
		}
		if st.mode() != BackupPlain && !strings.Contains(s, "<type>encrypted</type>\n        <disk>meterline_backup_root</disk>") {
			t.Fatalf("backup disk is not encrypted:\n%s", s)
		}
	}
	if _, err := engineConfigXML(data, nil, &BackupStore{Dir: filepath.Join(data, "backups")}); err == nil {
		t.Fatal("a backups directory inside the data directory was accepted")
	}
	if _, err := engineConfigXML(data, nil, &BackupStore{Dir: t.TempDir(), AtRestKeys: true}); err == nil {
		t.Fatal("at-rest keys without encryption at rest were accepted")
	}
}
