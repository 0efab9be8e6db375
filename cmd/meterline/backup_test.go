package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meterline/meterline/internal/testenv"
)

// backupEnv is one test stack for the backup commands: a configuration,
// its data directory, backups directory and erasure log.
type backupEnv struct {
	t       testing.TB
	cfg     string
	dataDir string
	env     []string
}

func newBackupEnv(t testing.TB, extra string) *backupEnv {
	t.Helper()
	testenv.Require(t, testenv.EnvChdb)
	brokers := testenv.KafkaBrokers(t)
	cfg, _ := writeConfig(t, strings.Join(brokers, ","), testenv.Unique("backup"), "privacy:\n  erased_refresh: 10ms\n"+extra)
	e := &backupEnv{t: t, cfg: cfg, dataDir: filepath.Join(filepath.Dir(cfg), "ch")}
	e.ok("migrate")
	return e
}

// run runs meterline with --config added after the subcommand words.
func (e *backupEnv) run(args ...string) (string, error) {
	e.t.Helper()
	words := 1
	if args[0] == "backup" || args[0] == "privacy" {
		words = 2
	}
	full := append(append(append([]string{}, args[:words]...), "--config", e.cfg), args[words:]...)
	return meterlineCmd(e.t, e.env, full...)
}

func (e *backupEnv) ok(args ...string) string {
	e.t.Helper()
	out, err := e.run(args...)
	if err != nil {
		e.t.Fatalf("meterline %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// fails runs a command that must fail with exit code code and say want.
func (e *backupEnv) fails(code int, want string, args ...string) string {
	e.t.Helper()
	out, err := e.run(args...)
	ee, isExit := err.(*exec.ExitError)
	if !isExit || ee.ExitCode() != code {
		e.t.Fatalf("meterline %s: got %v, want exit code %d\n%s", strings.Join(args, " "), err, code, out)
	}
	if !strings.Contains(out, want) {
		e.t.Fatalf("meterline %s: output lacks %q:\n%s", strings.Join(args, " "), want, out)
	}
	return out
}

// insert stores n events of customers cus-A (key-a, every third) and
// cus-B (key-b) with ids prefix-N; the rollups follow through their views.
func (e *backupEnv) insert(prefix string, n int) {
	e.t.Helper()
	e.ok("sql", fmt.Sprintf(`INSERT INTO events (id, time, api_key_id, customer_id, route, status, units, user_agent, kafka_partition, kafka_offset, ingested_at)
SELECT concat('%s-', toString(number)), now64(3) - toIntervalSecond(number %% 7200),
  if(number %% 3 = 0, 'key-a', 'key-b'), if(number %% 3 = 0, 'cus-A', 'cus-B'), '/v1/pets/{id}', 200 + number %% 5,
  1 + number %% 4, 'agent/QZBACKUPMARKQZ', toInt32(number %% 3), toInt64(number), now64(3)
FROM numbers(%d)`, prefix, n))
	e.ok("sql", fmt.Sprintf(`INSERT INTO usage_minute (customer_id, api_key_id, window_start, route, method, status_class, gateway,
  requests, units, latency_state, client_ips_state, computed_at)
SELECT customer_id, api_key_id, toStartOfMinute(time), route, method, concat(toString(intDiv(status, 100)), 'xx'), gateway,
  count(), sum(units), quantilesTDigestState(0.5, 0.95, 0.99)(assumeNotNull(latency_ms)), uniqExactState(assumeNotNull(client_ip)), now64(3)
FROM events WHERE startsWith(id, '%s-')
GROUP BY customer_id, api_key_id, toStartOfMinute(time), route, method, status, gateway`, prefix))
}

// counts returns, per table with a customer_id column, the rows of each
// customer and the sum of a hash of the rows, as "table customer rows hash"
// (the privacy tables, which keep an erased customer's requests as proof, aside).
func (e *backupEnv) counts(cfg string) []string {
	e.t.Helper()
	tables := sqlRows(e.t, cfg, "SELECT table FROM system.columns WHERE database = currentDatabase() AND name = 'customer_id' AND NOT startsWith(table, 'privacy_') AND table IN (SELECT name FROM system.tables WHERE database = currentDatabase() AND engine LIKE '%MergeTree') ORDER BY table")
	var out []string
	for _, tbl := range tables {
		for _, l := range sqlRows(e.t, cfg, "SELECT customer_id, count(), toString(sum(cityHash64(formatRow('RowBinary', *)))) FROM "+tbl+" GROUP BY customer_id ORDER BY customer_id") {
			out = append(out, tbl+" "+strings.Join(strings.Fields(l), " "))
		}
	}
	sort.Strings(out)
	return out
}

// withDataDir writes a copy of the configuration with another data
// directory and returns its path.
func (e *backupEnv) withDataDir(dir string) string {
	e.t.Helper()
	b, err := os.ReadFile(e.cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	s := strings.Replace(string(b), "  data_dir: "+e.dataDir+"\n", "  data_dir: "+dir+"\n", 1)
	// Same backups directory and erasure log as the source.
	s += "backup:\n  dir: " + e.backupDir() + "\n"
	s = strings.Replace(s, "privacy:\n", "privacy:\n  erasure_log: "+e.erasureLog()+"\n", 1)
	p := filepath.Join(e.t.TempDir(), "other.yaml")
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return p
}

func (e *backupEnv) backupDir() string { return filepath.Join(filepath.Dir(e.dataDir), "backups") }
func (e *backupEnv) erasureLog() string {
	return filepath.Join(filepath.Dir(e.dataDir), "erasures.jsonl")
}

func filterCustomer(rows []string, customer string) []string {
	var out []string
	for _, r := range rows {
		if strings.Fields(r)[1] == customer {
			out = append(out, r)
		}
	}
	return out
}

// TestBackupRestoreKeepsErasures backs up two customers' data, erases one
// customer, stores more events of the other, and restores the backup into
// a fresh data directory: the erased customer's rows stay gone from every
// table (the erasure is recorded in the restored privacy_erasures, where
// the sink's blocklist reads it), and the other customer's rows equal the
// source at the backup, table by table.
func TestBackupRestoreKeepsErasures(t *testing.T) {
	e := newBackupEnv(t, "")
	e.insert("ev", 3000)
	before := e.counts(e.cfg)
	if len(filterCustomer(before, "cus-A")) < 2 {
		t.Fatalf("cus-A has rows in too few tables: %v", before)
	}
	out := e.ok("backup", "create", "--name", "full", "--quiet")
	if !strings.Contains(out, "backup full (full, encryption none)") {
		t.Fatalf("create said:\n%s", out)
	}
	e.ok("privacy", "erase", "--customer", "cus-A", "--yes")
	e.insert("late", 300)
	if _, err := os.Stat(e.erasureLog()); err != nil {
		t.Fatalf("the erasure was not logged outside the database: %v", err)
	}

	fresh := filepath.Join(t.TempDir(), "restored")
	out = e.ok("backup", "restore", "--target", fresh, "--quiet", "full")
	if !strings.Contains(out, "1 re-applied") || !strings.Contains(out, "of 1 erased customer(s) removed again") {
		t.Fatalf("restore said:\n%s", out)
	}
	restored := e.withDataDir(fresh)
	after := e.counts(restored)
	if got := filterCustomer(after, "cus-A"); len(got) != 0 {
		t.Fatalf("the erased customer's rows came back with the restore: %v", got)
	}
	if got, want := filterCustomer(after, "cus-B"), filterCustomer(before, "cus-B"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("cus-B after the restore:\n%s\nat the backup:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := sqlRows(t, restored, "SELECT status FROM privacy_erasures FINAL WHERE customer_id = 'cus-A'"); len(got) != 1 || got[0] != "done" {
		t.Fatalf("restored erasure of cus-A: %v", got)
	}
	if got := sqlRows(t, restored, "SELECT count() FROM privacy_audit WHERE action = 'erasure_reapplied' AND customer_id = 'cus-A'"); got[0] != "1" {
		t.Fatalf("audit of the re-applied erasure: %v", got)
	}
	// The erasure's keys are restored too: the sink drops key-a's events
	// even without a customer id.
	if got := sqlRows(t, restored, "SELECT has(api_key_ids, 'key-a') FROM privacy_erasures FINAL WHERE customer_id = 'cus-A'"); got[0] != "1" {
		t.Fatalf("restored erasure lacks the key: %v", got)
	}
	// The events stored after the backup are not in the restore.
	if got := sqlRows(t, restored, "SELECT count() FROM events WHERE id LIKE 'late-%'"); got[0] != "0" {
		t.Fatalf("restore holds %s events newer than the backup", got[0])
	}
	if _, err := os.Stat(fresh + ".meterline-restore-x"); err == nil {
		t.Fatal("staging left behind")
	}
	if m, _ := filepath.Glob(fresh + ".meterline-restore-*"); len(m) > 0 {
		t.Fatalf("staging directories left behind: %v", m)
	}
	// A restore into a directory with data needs --replace.
	e.fails(1, "holds data", "backup", "restore", "--target", fresh, "--quiet", "full")
}

// TestBackupVerifyDetectsDamage damages backups in the ways a disk or a
// stopped copy does and expects verify and restore to refuse each with a
// clear error, leaving the target untouched.
func TestBackupVerifyDetectsDamage(t *testing.T) {
	e := newBackupEnv(t, "")
	e.insert("ev", 2000)
	for _, n := range []string{"trunc", "flip", "nomanifest", "hostile", "extra"} {
		e.ok("backup", "create", "--name", n, "--quiet", "--no-prune")
	}
	out := e.ok("backup", "verify", "trunc")
	if !strings.Contains(out, "backup trunc is complete") {
		t.Fatalf("verify said:\n%s", out)
	}
	largest := func(name string) string {
		var best string
		var size int64
		_ = filepath.Walk(filepath.Join(e.backupDir(), name, "archive"), func(p string, info os.FileInfo, err error) error {
			if err == nil && info.Mode().IsRegular() && info.Size() > size {
				best, size = p, info.Size()
			}
			return nil
		})
		return best
	}
	f := largest("trunc")
	info, _ := os.Stat(f)
	if err := os.Truncate(f, info.Size()/2); err != nil {
		t.Fatal(err)
	}
	f = largest("flip")
	b, _ := os.ReadFile(f)
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(f, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(e.backupDir(), "nomanifest", "manifest.json")); err != nil {
		t.Fatal(err)
	}
	mpath := filepath.Join(e.backupDir(), "hostile", "manifest.json")
	mb, _ := os.ReadFile(mpath)
	var m map[string]any
	if err := json.Unmarshal(mb, &m); err != nil {
		t.Fatal(err)
	}
	m["files"] = append(m["files"].([]any), map[string]any{"path": "../../../../etc/passwd", "size": 1, "sha256": "00"})
	mb, _ = json.Marshal(m)
	if err := os.WriteFile(mpath, mb, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.backupDir(), "extra", "archive", "planted.bin"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "target")
	for name, want := range map[string]string{
		"trunc":      "truncated or changed",
		"flip":       "does not match its checksum (corrupted)",
		"nomanifest": "has no manifest",
		"hostile":    "outside the archive",
		"extra":      "planted.bin is not in the manifest",
	} {
		e.fails(1, want, "backup", "verify", name)
		e.fails(1, want, "backup", "restore", "--target", target, "--quiet", name)
		if _, err := os.Stat(target); !os.IsNotExist(err) {
			t.Fatalf("restore of %s changed the target: %v", name, err)
		}
		if m, _ := filepath.Glob(target + ".meterline-restore-*"); len(m) > 0 {
			t.Fatalf("restore of %s left %v", name, m)
		}
	}
	out = e.ok("backup", "list")
	for _, want := range []string{"nomanifest", "incomplete", "trunc", "complete"} {
		if !strings.Contains(out, want) {
			t.Fatalf("list lacks %q:\n%s", want, out)
		}
	}
	// A damaged data directory with --replace stays as it was too.
	digest := dirDigest(t, e.dataDir)
	e.fails(1, "truncated or changed", "backup", "restore", "--replace", "--quiet", "trunc")
	if dirDigest(t, e.dataDir) != digest {
		t.Fatal("a refused restore changed the data directory")
	}
}

// TestBackupIncremental restores an incremental backup to the later state
// and refuses one whose base is damaged.
func TestBackupIncremental(t *testing.T) {
	e := newBackupEnv(t, "")
	e.insert("ev", 2000)
	e.ok("backup", "create", "--name", "full", "--quiet")
	e.insert("more", 1000)
	later := e.counts(e.cfg)
	out := e.ok("backup", "create", "--name", "inc", "--base", "full", "--quiet")
	if !strings.Contains(out, "incremental on full") {
		t.Fatalf("create said:\n%s", out)
	}
	var full, inc struct{ Bytes int64 }
	for name, dst := range map[string]*struct{ Bytes int64 }{"full": &full, "inc": &inc} {
		b, err := os.ReadFile(filepath.Join(e.backupDir(), name, "manifest.json"))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, dst); err != nil {
			t.Fatal(err)
		}
	}
	if inc.Bytes >= full.Bytes {
		t.Fatalf("incremental backup (%d bytes) is not smaller than the full one (%d)", inc.Bytes, full.Bytes)
	}
	fresh := filepath.Join(t.TempDir(), "restored")
	e.ok("backup", "restore", "--target", fresh, "--quiet", "inc")
	if got := e.counts(e.withDataDir(fresh)); strings.Join(got, "\n") != strings.Join(later, "\n") {
		t.Fatalf("restored incremental:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(later, "\n"))
	}
	// A base that lost a file makes the incremental unusable.
	var victim string
	_ = filepath.Walk(filepath.Join(e.backupDir(), "full", "archive", "data"), func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() && victim == "" {
			victim = p
		}
		return nil
	})
	if err := os.Remove(victim); err != nil {
		t.Fatal(err)
	}
	e.fails(1, "base backup of inc", "backup", "verify", "inc")
	e.fails(1, "is missing", "backup", "create", "--name", "inc2", "--base", "full", "--quiet")
}

// TestBackupPassword writes a password-protected backup, whose files hold
// no stored value in plain, and refuses another password clearly.
func TestBackupPassword(t *testing.T) {
	e := newBackupEnv(t, "")
	e.env = []string{"METERLINE_BACKUP_PASSWORD=correct horse battery staple"}
	e.insert("ev", 1000)
	before := e.counts(e.cfg)
	out := e.ok("backup", "create", "--name", "secret", "--quiet")
	if !strings.Contains(out, "encryption password") {
		t.Fatalf("create said:\n%s", out)
	}
	if hits := grepDir(t, filepath.Join(e.backupDir(), "secret"), "QZBACKUPMARKQZ"); len(hits) > 0 {
		t.Fatalf("the backup holds stored values in plain: %v", hits)
	}
	e.env = []string{"METERLINE_BACKUP_PASSWORD=wrong"}
	e.fails(1, "wrong password", "backup", "verify", "secret")
	target := filepath.Join(t.TempDir(), "target")
	e.fails(1, "wrong password", "backup", "restore", "--target", target, "--quiet", "secret")
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Fatalf("a refused restore created the target: %v", err)
	}
	e.env = nil
	e.fails(1, "is encrypted", "backup", "restore", "--target", target, "--quiet", "secret")
	e.env = []string{"METERLINE_BACKUP_PASSWORD=correct horse battery staple"}
	e.ok("backup", "restore", "--target", target, "--quiet", "secret")
	if got := e.counts(e.withDataDir(target)); strings.Join(got, "\n") != strings.Join(before, "\n") {
		t.Fatalf("restored:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(before, "\n"))
	}
}

// TestBackupRestoreKilled kills `backup restore --replace` while it
// builds its staging directory: the data directory it replaces is either
// exactly as before or the complete restore, and a second restore removes
// the leftovers and completes.
func TestBackupRestoreKilled(t *testing.T) {
	e := newBackupEnv(t, "")
	e.insert("ev", 200_000)
	e.ok("backup", "create", "--name", "full", "--quiet")
	atBackup := e.counts(e.cfg)
	e.insert("after", 500)
	beforeKill := dirDigest(t, e.dataDir)
	beforeFiles := fileDigests(t, e.dataDir)

	cmd := exec.Command(binPath, "backup", "restore", "--config", e.cfg, "--replace", "--quiet", "full")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// Kill as soon as the staging directory holds restored data.
	staged := false
	testenv.Eventually(t, 120*time.Second, func() error {
		select {
		case err := <-exited:
			exited <- err
			return nil
		default:
		}
		m, _ := filepath.Glob(e.dataDir + ".meterline-restore-*")
		for _, d := range m {
			if parts, _ := filepath.Glob(filepath.Join(d, "store", "*", "*", "*")); len(parts) > 0 {
				staged = true
				return nil
			}
		}
		return fmt.Errorf("no staging directory with data yet")
	})
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
	now := dirDigest(t, e.dataDir)
	if now != beforeKill {
		for p, h := range fileDigests(t, e.dataDir) {
			if beforeFiles[p] != h {
				t.Logf("changed: %s", p)
			}
		}
	}
	switch {
	case now == beforeKill:
		t.Logf("killed mid-restore (staging seen: %v): the data directory is as before", staged)
	default:
		if got := e.counts(e.cfg); strings.Join(got, "\n") != strings.Join(atBackup, "\n") {
			t.Fatalf("after the kill the data directory is neither untouched nor the complete restore:\n%s", strings.Join(got, "\n"))
		}
		t.Log("the restore completed before the kill")
	}
	e.ok("backup", "restore", "--replace", "--quiet", "full")
	if m, _ := filepath.Glob(e.dataDir + ".meterline-restore-*"); len(m) > 0 {
		t.Fatalf("leftovers of the killed restore: %v", m)
	}
	if got := e.counts(e.cfg); strings.Join(got, "\n") != strings.Join(atBackup, "\n") {
		t.Fatalf("after the second restore:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(atBackup, "\n"))
	}
}

// TestBackupBadInput gives the backup commands bad flags, names and
// erasure logs: each is refused with a clear message and changes nothing.
func TestBackupBadInput(t *testing.T) {
	e := newBackupEnv(t, "")
	e.insert("ev", 100)
	e.ok("backup", "create", "--name", "good", "--quiet")
	for _, c := range []struct {
		code int
		want string
		args []string
	}{
		{2, "unknown subcommand", []string{"backup", "explode"}},
		{2, "must be 1-100 letters", []string{"backup", "create", "--name", "../../etc"}},
		{2, "must be 1-100 letters", []string{"backup", "create", "--name", strings.Repeat("a", 101)}},
		{2, "must be 1-100 letters", []string{"backup", "create", "--base", "a/b"}},
		{2, "unexpected argument", []string{"backup", "create", "stray"}},
		{2, "give exactly one backup name", []string{"backup", "verify"}},
		{2, "give exactly one backup name", []string{"backup", "restore", "a", "b"}},
		{2, "must be 1-100 letters", []string{"backup", "restore", "--target", "/tmp/x", ".."}},
		{2, "flag provided but not defined", []string{"backup", "create", "--frobnicate"}},
		{1, "no backup nope", []string{"backup", "verify", "nope"}},
		{1, "already exists", []string{"backup", "create", "--name", "good", "--quiet"}},
		{1, "no backup missing", []string{"backup", "create", "--name", "x", "--base", "missing", "--quiet"}},
		{1, "must lie outside the data directory", []string{"backup", "list", "--dir", e.dataDir + "/inner"}},
	} {
		e.fails(c.code, c.want, c.args...)
	}
	for args, want := range map[string][]string{
		"backup restore -h": {"-target", "-replace", "-reset-offsets", "-dir", "-quiet"},
		"backup create -h":  {"-name", "-base", "-no-prune", "-quiet"},
		"backup help":       {"create", "list", "verify", "restore", "prune", "stop 'meterline serve'"},
	} {
		out, err := meterlineCmd(t, nil, strings.Fields(args)...)
		if err != nil {
			t.Fatalf("%s: %v\n%s", args, err, out)
		}
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("%s lacks %q:\n%s", args, w, out)
			}
		}
	}
	if out, err := meterlineCmd(t, nil, "backup"); err == nil || !strings.Contains(out, "Usage: meterline backup") {
		t.Fatalf("backup without a subcommand: %v\n%s", err, out)
	}
	if out := e.ok("backup", "list"); strings.Contains(out, " x ") || !strings.Contains(out, "good") {
		t.Fatalf("list after refused commands:\n%s", out)
	}
	// A damaged erasure log stops a restore before anything is written.
	target := filepath.Join(t.TempDir(), "target")
	good := `{"id":"er_0123456789abcdef0123","customer_id":"cus-Z","kind":"erasure","requested_by":"t","requested_at":"2026-01-01T00:00:00Z","not_before":"2026-01-01T00:00:00Z","status":"done","removed":{},"pseudonymised":{},"pseudonym":"erased:er_0123456789abcdef0123","updated_at":"2026-01-01T00:00:01Z"}`
	for body, want := range map[string]string{
		good + "\nnot json\n":                               "line 2: not an erasure record",
		strings.Replace(good, "er_0", "../", 1) + "\n":      "is not an erasure id",
		strings.Replace(good, `"done"`, `"gone"`, 1) + "\n": `status "gone" is unknown`,
		good + "\n" + strings.Repeat("x", 5<<20) + "\n":     "longer than",
	} {
		if err := os.WriteFile(e.erasureLog(), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		e.fails(1, want, "backup", "restore", "--target", target, "--quiet", "good")
		if _, err := os.Stat(target); !os.IsNotExist(err) {
			t.Fatalf("restore with a bad erasure log created the target: %v", err)
		}
	}
	// A last line cut short by a crash is skipped; the whole lines count.
	if err := os.WriteFile(e.erasureLog(), []byte(good+"\n"+good[:40]), 0o600); err != nil {
		t.Fatal(err)
	}
	out := e.ok("backup", "restore", "--target", target, "--quiet", "good")
	if !strings.Contains(out, "erasures: 1 recorded") {
		t.Fatalf("restore said:\n%s", out)
	}
}

func fileDigests(t *testing.T, dir string) map[string]string {
	out := map[string]string{}
	_ = filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil {
			b, _ := os.ReadFile(p)
			out[p] = fmt.Sprintf("%v %x", info.Mode(), b)
		}
		return nil
	})
	return out
}

// TestBackupWithEncryptionAtRest backs up an engine encrypted at rest:
// the backup is written with the at-rest keys (no stored value in plain
// in it), restores with them into a fresh directory that is encrypted
// too, and is refused clearly where the key that wrote it is missing.
func TestBackupWithEncryptionAtRest(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "keys")
	writeKeys(t, keys, "1 "+hexKey(t)+"\n", 0o600)
	e := newBackupEnvEncrypted(t, keys)
	e.insert("ev", 1000)
	before := e.counts(e.cfg)
	out := e.ok("backup", "create", "--name", "enc", "--quiet")
	if !strings.Contains(out, "encryption at-rest-keys") {
		t.Fatalf("create said:\n%s", out)
	}
	if hits := grepDir(t, filepath.Join(e.backupDir(), "enc"), "QZBACKUPMARKQZ"); len(hits) > 0 {
		t.Fatalf("the backup holds stored values in plain: %v", hits)
	}
	fresh := filepath.Join(t.TempDir(), "restored")
	e.ok("backup", "restore", "--target", fresh, "--quiet", "enc")
	if hits := grepDir(t, fresh, "QZBACKUPMARKQZ"); len(hits) > 0 {
		t.Fatalf("the restored data directory holds stored values in plain: %v", hits)
	}
	restored := e.withDataDir(fresh)
	if got := e.counts(restored); strings.Join(got, "\n") != strings.Join(before, "\n") {
		t.Fatalf("restored:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(before, "\n"))
	}
	// Another key under the same id cannot read the backup.
	writeKeys(t, keys, "1 "+hexKey(t)+"\n", 0o600)
	other := filepath.Join(t.TempDir(), "other")
	e.fails(1, "not configured", "backup", "restore", "--target", other, "--quiet", "enc")
	if _, err := os.Stat(other); !os.IsNotExist(err) {
		t.Fatalf("a refused restore created the target: %v", err)
	}
}

func newBackupEnvEncrypted(t *testing.T, keys string) *backupEnv {
	t.Helper()
	testenv.Require(t, testenv.EnvChdb)
	brokers := testenv.KafkaBrokers(t)
	cfg, _ := writeConfig(t, strings.Join(brokers, ","), testenv.Unique("backup"), "privacy:\n  erased_refresh: 10ms\n")
	e := &backupEnv{t: t, cfg: cfg, dataDir: filepath.Join(filepath.Dir(cfg), "ch")}
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(b), "  data_dir: "+e.dataDir+"\n", "  data_dir: "+e.dataDir+"\n  encryption:\n    keys_file: "+keys+"\n", 1)
	if err := os.WriteFile(cfg, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	e.ok("migrate")
	return e
}

// TestBackupRestoreRereadsKafka restores a backup older than what the
// sink consumed, with --reset-offsets: `serve` reads again from Kafka
// every event after the backup, stores each distinct one once (the ones
// sent twice too), and drops those of a customer erased after the backup.
func TestBackupRestoreRereadsKafka(t *testing.T) {
	testenv.Require(t, testenv.EnvChdb)
	brokers := testenv.KafkaBrokers(t)
	topic := testenv.Unique("backup-kafka")
	cfg, addr := writeConfig(t, strings.Join(brokers, ","), topic, "privacy:\n  erased_refresh: 10ms\n")
	e := &backupEnv{t: t, cfg: cfg, dataDir: filepath.Join(filepath.Dir(cfg), "ch")}
	waitMetric := func(name string, want float64) {
		t.Helper()
		testenv.Eventually(t, 90*time.Second, func() error {
			v, err := metric(addr, name)
			if err != nil {
				return err
			}
			if v < want {
				return fmt.Errorf("%s is %v, want %v", name, v, want)
			}
			return nil
		})
	}

	p, _ := start(t, cfg, addr)
	postEvents(t, addr, append(customerEvents("a1", "cus-A", 150), customerEvents("b1", "cus-B", 150)...))
	waitMetric("meterline_sink_events_stored_total", 300)
	stopGracefully(t, p)
	e.ok("backup", "create", "--name", "before", "--quiet")

	p, _ = start(t, cfg, addr)
	later := append(customerEvents("a2", "cus-A", 100), customerEvents("b2", "cus-B", 100)...)
	postEvents(t, addr, later)
	postEvents(t, addr, later) // a gateway's retry: the same ids again
	waitMetric("meterline_sink_events_stored_total", 200)
	stopGracefully(t, p)
	e.ok("privacy", "erase", "--customer", "cus-A", "--yes")

	out := e.ok("backup", "restore", "--replace", "--reset-offsets", "--quiet", "before")
	if !strings.Contains(out, "consumer group "+topic+"-sink reset") {
		t.Fatalf("restore said:\n%s", out)
	}
	if got := sqlRows(t, cfg, "SELECT count() FROM events WHERE customer_id = 'cus-B'"); got[0] != "150" {
		t.Fatalf("restored cus-B events: %v, want the backup's 150", got)
	}
	p, _ = start(t, cfg, addr)
	// What Kafka holds after the backup: 200 events twice.
	waitMetric("meterline_sink_erased_events_dropped_total", 200)
	waitMetric("meterline_sink_events_stored_total", 100)
	stopGracefully(t, p)
	if got := sqlRows(t, cfg, "SELECT count(), uniqExact(id) FROM events FINAL WHERE customer_id = 'cus-B'"); strings.Join(strings.Fields(got[0]), " ") != "250 250" {
		t.Fatalf("cus-B after the catch-up (count, distinct ids): %v, want 250 250", got)
	}
	if got := sqlRows(t, cfg, "SELECT count() FROM events WHERE customer_id = 'cus-A' OR api_key_id = 'cus-A-key'"); got[0] != "0" {
		t.Fatalf("the erased customer's events came back from Kafka: %v", got)
	}
}

// TestBackupSettings: defaults follow the data directory, bad settings
// are refused with the setting's name.
func TestBackupSettings(t *testing.T) {
	c, err := loadConfig("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.backupDir() != ".run/backups" || c.erasureLogPath() != ".run/erasures.jsonl" || c.Backup.RetentionMonths != 12 {
		t.Fatalf("defaults: %s %s %d", c.backupDir(), c.erasureLogPath(), c.Backup.RetentionMonths)
	}
	c.ClickHouse.DataDir = "/srv/m/ch"
	if c.backupDir() != "/srv/m/backups" || c.erasureLogPath() != "/srv/m/erasures.jsonl" {
		t.Fatalf("defaults follow the data directory: %s %s", c.backupDir(), c.erasureLogPath())
	}
	c2, err := loadConfig("", []string{"METERLINE_RETENTION_RAW_MONTHS=24"})
	if err != nil || c2.Backup.RetentionMonths != 24 {
		t.Fatalf("backup retention follows the longest data retention: %v %v", c2.Backup.RetentionMonths, err)
	}
	for _, bad := range []struct{ file, want string }{
		{"backup:\n  retention_months: 0\n", ""},
		{"backup:\n  retention_months: -1\n", "backup.retention_months: -1 is out of range"},
		{"backup:\n  retention_months: 5000\n", "backup.retention_months: 5000 is out of range"},
		{"clickhouse:\n  data_dir: /srv/ch\nbackup:\n  dir: /srv/ch/backups\n", "backup.dir: /srv/ch/backups must lie outside the data directory"},
		{"clickhouse:\n  data_dir: /srv/ch\nbackup:\n  dir: /srv\n", "must lie outside the data directory"},
		{"clickhouse:\n  data_dir: /srv/ch\nprivacy:\n  erasure_log: /srv/ch/erasures.jsonl\n", "privacy.erasure_log: /srv/ch/erasures.jsonl must lie outside the data directory"},
		{"backup:\n  dir: /srv/b\nprivacy:\n  erasure_log: /srv/b/e.jsonl\n", "must lie outside the backups directory"},
		{"backup:\n  password: " + strings.Repeat("p", 1025) + "\n", "backup.password: longer than 1024 bytes"},
		{"backup:\n  compress: yes\n", "field compress not found"},
	} {
		c, err := loadConfig(writeFile(t, bad.file), nil)
		if err == nil {
			err = c.Validate()
		}
		if bad.want == "" {
			if err != nil {
				t.Errorf("%q: %v", bad.file, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: %v, want %q", bad.file, err, bad.want)
		}
	}
	// The password is a secret: printed redacted, readable from a file.
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c3, err := loadConfig("", []string{"METERLINE_BACKUP_PASSWORD_FILE=" + pw})
	if err != nil || c3.Backup.Password != "s3cret" {
		t.Fatalf("password from a file: %q %v", c3.Backup.Password, err)
	}
	if shown := redactSecrets(c3); shown.Backup.Password != redacted {
		t.Fatalf("password shown as %q", shown.Backup.Password)
	}
}

// TestBackupCreateKilled kills `backup create` while the engine writes the
// archive: what it leaves is listed as incomplete, refused by verify and
// restore, and never taken for a base; the next create works.
func TestBackupCreateKilled(t *testing.T) {
	e := newBackupEnv(t, "")
	e.insert("ev", 300_000)
	cmd := exec.Command(binPath, "backup", "create", "--config", e.cfg, "--name", "killed", "--quiet")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	archive := filepath.Join(e.backupDir(), "killed", "archive")
	finished := false
	testenv.Eventually(t, 120*time.Second, func() error {
		select {
		case err := <-exited:
			exited <- err
			finished = true
			return nil
		default:
		}
		if _, err := os.Stat(archive); err != nil {
			return err
		}
		return nil
	})
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
	if _, err := os.Stat(filepath.Join(e.backupDir(), "killed", "manifest.json")); err == nil {
		t.Skipf("the backup completed before the kill (finished=%v):\n%s", finished, out.String())
	}
	if list := e.ok("backup", "list"); !strings.Contains(list, "killed") || !strings.Contains(list, "incomplete") {
		t.Fatalf("list after the kill:\n%s", list)
	}
	e.fails(1, "has no manifest", "backup", "verify", "killed")
	e.fails(1, "has no manifest", "backup", "create", "--name", "inc", "--base", "killed", "--quiet")
	target := filepath.Join(t.TempDir(), "target")
	e.fails(1, "has no manifest", "backup", "restore", "--target", target, "--quiet", "killed")
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Fatalf("restore of an incomplete backup created the target: %v", err)
	}
	before := e.counts(e.cfg)
	e.ok("backup", "create", "--name", "next", "--quiet")
	e.ok("backup", "restore", "--target", target, "--quiet", "next")
	if got := e.counts(e.withDataDir(target)); strings.Join(got, "\n") != strings.Join(before, "\n") {
		t.Fatalf("restored after a killed create:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(before, "\n"))
	}
}

// TestPrivacyReapplyCommand plays a database restored by other means
// (a server's own RESTORE): the erasure is missing from the tables and the
// customer's rows are back; `privacy reapply` brings both from the log.
func TestPrivacyReapplyCommand(t *testing.T) {
	e := newBackupEnv(t, "")
	e.insert("ev", 300)
	e.ok("privacy", "erase", "--customer", "cus-A", "--yes")
	e.ok("sql", "ALTER TABLE privacy_erasures DELETE WHERE customer_id = 'cus-A' SETTINGS mutations_sync = 2")
	e.insert("back", 300)
	if got := sqlRows(t, e.cfg, "SELECT count() FROM events WHERE customer_id = 'cus-A'"); got[0] == "0" {
		t.Fatal("setup: no rows of cus-A")
	}
	out := e.ok("privacy", "reapply")
	if !strings.Contains(out, "1 re-applied") {
		t.Fatalf("reapply said:\n%s", out)
	}
	if got := filterCustomer(e.counts(e.cfg), "cus-A"); len(got) != 0 {
		t.Fatalf("rows of the erased customer after reapply: %v", got)
	}
	if got := sqlRows(t, e.cfg, "SELECT status FROM privacy_erasures FINAL WHERE customer_id = 'cus-A'"); len(got) != 1 || got[0] != "done" {
		t.Fatalf("erasure after reapply: %v", got)
	}
	e.fails(2, "unexpected argument", "privacy", "reapply", "extra")
}
