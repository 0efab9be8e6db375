package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meterline/meterline/internal/testenv"
)

func hexKey(t *testing.T) string {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(k)
}

func writeKeys(t *testing.T, path, body string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// Keys come from a keys file (0600) or the environment, never from the
// configuration file; every malformed key source is a clear error that
// never repeats the key.
func TestEncryptionSettings(t *testing.T) {
	dir := t.TempDir()
	k1, k2 := hexKey(t), hexKey(t)
	raw, _ := hex.DecodeString(k2)
	good := filepath.Join(dir, "keys")
	writeKeys(t, good, "# keys\n1 "+k1+"\n\n2 "+base64.StdEncoding.EncodeToString(raw)+"  # second\n", 0o600)

	c, err := loadConfig(writeFile(t, "clickhouse:\n  encryption:\n    keys_file: "+good+"\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	enc, err := c.ClickHouse.Encryption.load()
	if err != nil || enc == nil || len(enc.Keys) != 2 || enc.CurrentKeyID != 2 || hex.EncodeToString(enc.Keys[1].Key) != k2 {
		t.Fatalf("keys file: %+v, %v", enc, err)
	}

	c, err = loadConfig("", []string{"METERLINE_ENCRYPTION_KEY_7=" + k1, "METERLINE_CLICKHOUSE_ENCRYPTION_CURRENT_KEY_ID=7"})
	if err != nil {
		t.Fatal(err)
	}
	if enc, err := c.ClickHouse.Encryption.load(); err != nil || enc == nil || enc.CurrentKeyID != 7 || len(enc.Keys) != 1 {
		t.Fatalf("environment keys: %+v, %v", enc, err)
	}

	c, err = loadConfig("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if enc, err := c.ClickHouse.Encryption.load(); err != nil || enc != nil {
		t.Fatalf("default must be off: %+v, %v", enc, err)
	}

	bad := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		writeKeys(t, p, body, mode)
		return p
	}
	big := bad("big", strings.Repeat("# padding\n", 7000), 0o600)
	for _, tc := range []struct {
		name, yaml string
		env        []string
		want       string
	}{
		{"key in the config file", "clickhouse:\n  encryption:\n    keys: [\"" + k1 + "\"]\n", nil, "must not be written into the configuration file"},
		{"key (singular) in the config file", "clickhouse:\n  encryption:\n    key: " + k1 + "\n", nil, "keys_file (mode 0600)"},
		{"readable by others", "clickhouse:\n  encryption:\n    keys_file: " + bad("open", "1 "+k1+"\n", 0o644) + "\n", nil, "chmod 600"},
		{"missing file", "clickhouse:\n  encryption:\n    keys_file: " + filepath.Join(dir, "nope") + "\n", nil, "no such file"},
		{"directory", "clickhouse:\n  encryption:\n    keys_file: " + dir + "\n", nil, "not a regular file"},
		{"oversized", "clickhouse:\n  encryption:\n    keys_file: " + big + "\n", nil, "larger than"},
		{"short key", "clickhouse:\n  encryption:\n    keys_file: " + bad("short", "1 "+k1[:40]+"\n", 0o600) + "\n", nil, "not a 256-bit key"},
		{"three fields", "clickhouse:\n  encryption:\n    keys_file: " + bad("three", "1 "+k1+" x\n", 0o600) + "\n", nil, "want \"ID KEY\""},
		{"bad id", "clickhouse:\n  encryption:\n    keys_file: " + bad("id", "-1 "+k1+"\n", 0o600) + "\n", nil, "not a number"},
		{"duplicate id", "clickhouse:\n  encryption:\n    keys_file: " + bad("dup", "1 "+k1+"\n1 "+k2+"\n", 0o600) + "\n", nil, "given twice"},
		{"empty file", "clickhouse:\n  encryption:\n    keys_file: " + bad("empty", "# nothing\n", 0o600) + "\n", nil, "holds no key"},
		{"current key absent", "clickhouse:\n  encryption:\n    keys_file: " + good + "\n    current_key_id: 9\n", nil, "current key id 9"},
		{"current key without keys", "clickhouse:\n  encryption:\n    current_key_id: 1\n", nil, "no key is configured"},
		{"env key malformed", "", []string{"METERLINE_ENCRYPTION_KEY_1=zz"}, "METERLINE_ENCRYPTION_KEY_1: not a 256-bit key"},
		{"env key id bad", "", []string{"METERLINE_ENCRYPTION_KEY_X=" + k1}, "key id \"X\""},
		{"env and file same id", "clickhouse:\n  encryption:\n    keys_file: " + good + "\n", []string{"METERLINE_ENCRYPTION_KEY_1=" + k2}, "also in the keys file"},
		{"with a server", "clickhouse:\n  addr: [h:9000]\n  encryption:\n    keys_file: " + good + "\n", nil, "applies to the embedded engine"},
		{"hostile storage policy", "clickhouse:\n  storage_policy: \"x'; DROP TABLE events\"\n", nil, "clickhouse.storage_policy"},
	} {
		var path string
		if tc.yaml != "" {
			path = writeFile(t, tc.yaml)
		}
		c, err := loadConfig(path, tc.env)
		if err == nil {
			err = c.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
			continue
		}
		for _, k := range []string{k1, k2, k1[:40]} {
			if strings.Contains(err.Error(), k) {
				t.Errorf("%s: the error repeats a key: %v", tc.name, err)
			}
		}
	}
}

func TestEncryptionCLIUsage(t *testing.T) {
	for _, args := range [][]string{
		{"encryption"}, {"encryption", "nope"}, {"encryption", "generate-key", "--id", "0"},
		{"encryption", "server-config", "--disk-path", "relative"}, {"encryption", "server-config", "--keys", "1,x"},
		{"encryption", "server-config", "--policy", "a'b"},
	} {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code == 0 {
			t.Errorf("%v: exit 0\n%s", args, out.String())
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"encryption", "server-config", "--keys", "1,2", "--disk-path", "/var/lib/clickhouse/disks/meterline"}, &out, &errb); code != 0 {
		t.Fatalf("server-config: %s", errb.String())
	}
	for _, want := range []string{`from_env="METERLINE_CLICKHOUSE_KEY_2"`, "<current_key_id>2</current_key_id>", "<meterline_encrypted>", "<path>/var/lib/clickhouse/disks/meterline/</path>"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("server-config lacks %s:\n%s", want, out.String())
		}
	}
	keys := filepath.Join(t.TempDir(), "keys")
	for _, id := range []string{"1", "2"} {
		if code := run([]string{"encryption", "generate-key", "--id", id, "--out", keys}, &out, &errb); code != 0 {
			t.Fatalf("generate-key: %s", errb.String())
		}
	}
	if code := run([]string{"encryption", "generate-key", "--id", "2", "--out", keys}, &out, &errb); code == 0 {
		t.Error("generate-key overwrote key id 2")
	}
	got, err := readKeysFile(keys)
	if err != nil || len(got) != 2 {
		t.Fatalf("generated keys file: %v, %v", got, err)
	}
}

// meterlineCmd runs the binary and returns its output and error.
func meterlineCmd(t testing.TB, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(binPath, args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func dirDigest(t testing.TB, dir string) string {
	t.Helper()
	h := sha256.New()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fmt.Fprintf(h, "%s %v\n", rel, d.Type())
		if d.Type().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			h.Write(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func grepDir(t *testing.T, dir, needle string) []string {
	t.Helper()
	var hits []string
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.Type().IsRegular() {
			if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(needle)) {
				hits = append(hits, p)
			}
		}
		return nil
	})
	return hits
}

// TestEncryptionAtRestEndToEnd runs `meterline serve` with encryption on:
// events whose route, user agent and properties hold a marker go through
// the collector, Kafka and the sink into the embedded engine; after a merge
// the marker is in no file of the data directory or the process's temporary
// directory. A wrong key is refused at start and changes nothing. Then key
// 2 becomes current, `meterline encryption rotate` rewrites what key 1
// wrote, status reports no part on key 1, and with key 1 removed the same
// rows are read.
func TestEncryptionAtRestEndToEnd(t *testing.T) {
	testenv.Require(t, testenv.EnvChdb)
	brokers := testenv.KafkaBrokers(t)
	topic := testenv.Unique("e2e-atrest")
	work := t.TempDir()
	keys := filepath.Join(work, "keys")
	k1, k2 := hexKey(t), hexKey(t)
	writeKeys(t, keys, "1 "+k1+"\n", 0o600)
	cfgPath, addr := writeConfig(t, strings.Join(brokers, ","), topic, "")
	cfg, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(filepath.Dir(cfgPath), "ch")
	withKeys := strings.Replace(string(cfg), "  data_dir: "+dataDir+"\n", "  data_dir: "+dataDir+"\n  encryption:\n    keys_file: "+keys+"\n", 1)
	if withKeys == string(cfg) {
		t.Fatal("could not add the encryption section")
	}
	if err := os.WriteFile(cfgPath, []byte(withKeys), 0o600); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(work, "tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TMPDIR", tmp)

	marker := fmt.Sprintf("QZMARK%dQZ", time.Now().UnixNano())
	p, logs := start(t, cfgPath, addr)
	const n = 300
	var evs []map[string]any
	for i := range n {
		e := event(fmt.Sprintf("%s-%d", marker, i), "key-atrest")
		e["route"] = "/v1/" + marker + "/{id}"
		e["user_agent"] = "agent/" + marker
		e["properties"] = map[string]string{"plan": marker}
		evs = append(evs, e)
	}
	postEvents(t, addr, evs)
	testenv.Eventually(t, 60*time.Second, func() error {
		v, err := metric(addr, "meterline_sink_events_stored_total")
		if err != nil {
			return err
		}
		if v < n {
			return fmt.Errorf("%v of %d rows inserted", v, n)
		}
		return nil
	})
	stopGracefully(t, p)
	if strings.Contains(logs.String(), k1) {
		t.Fatal("the log holds the key")
	}
	if out, err := meterlineCmd(t, nil, "sql", "--config", cfgPath, "OPTIMIZE TABLE events FINAL"); err != nil {
		t.Fatalf("optimize: %v\n%s", err, out)
	}
	count := func(env []string) string {
		cmd := exec.Command(binPath, "sql", "--config", cfgPath, "SELECT count(), countIf(user_agent = 'agent/"+marker+"') FROM events")
		cmd.Env = append(os.Environ(), env...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("count: %v\n%s%s", err, out, stderr.String())
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		f := strings.Fields(lines[len(lines)-1])
		if len(f) != 2 || f[0] != f[1] {
			t.Fatalf("count: not every row holds the marker:\n%s", out)
		}
		return f[0]
	}
	if got := count(nil); got != fmt.Sprint(n) {
		t.Fatalf("stored %s rows, want %d", got, n)
	}
	for _, d := range []string{dataDir, tmp} {
		if hits := grepDir(t, d, marker); len(hits) > 0 {
			t.Fatalf("marker stored in plain: %v", hits)
		}
		if hits := grepDir(t, d, k1); len(hits) > 0 {
			t.Fatalf("key stored: %v", hits)
		}
	}

	// A wrong key under id 1 is refused before the engine starts.
	before := dirDigest(t, dataDir)
	writeKeys(t, keys, "1 "+k2+"\n", 0o600)
	out, err := meterlineCmd(t, nil, "sql", "--config", cfgPath, "SELECT count() FROM events")
	if err == nil || !strings.Contains(out, "key id 1 is not the key") {
		t.Fatalf("wrong key: %v\n%s", err, out)
	}
	if dirDigest(t, dataDir) != before {
		t.Fatal("the refused start changed the data directory")
	}

	// Key 2 becomes current; rotation rewrites what key 1 wrote.
	writeKeys(t, keys, "1 "+k1+"\n2 "+k2+"\n", 0o600)
	out, err = meterlineCmd(t, nil, "encryption", "status", "--config", cfgPath)
	if err != nil || !strings.Contains(out, "key 1 is still needed") {
		t.Fatalf("status before rotation: %v\n%s", err, out)
	}
	// The server holds the directory: rotation refuses to run beside it.
	p, _ = start(t, cfgPath, addr)
	out, err = meterlineCmd(t, nil, "encryption", "rotate", "--config", cfgPath)
	if err == nil || !strings.Contains(out, "stop `meterline serve` first") {
		t.Fatalf("rotate beside a running server: %v\n%s", err, out)
	}
	stopGracefully(t, p)
	out, err = meterlineCmd(t, nil, "encryption", "rotate", "--config", cfgPath)
	if err != nil || !strings.Contains(out, "no part or file needs key 1") || !strings.Contains(out, "re-encrypted") {
		t.Fatalf("rotate: %v\n%s", err, out)
	}
	writeKeys(t, keys, "2 "+k2+"\n", 0o600)
	out, err = meterlineCmd(t, nil, "encryption", "status", "--config", cfgPath)
	if err != nil || strings.Contains(out, "not configured") {
		t.Fatalf("status after rotation with key 2 alone: %v\n%s", err, out)
	}
	if got := count(nil); got != fmt.Sprint(n) {
		t.Fatalf("after rotation %s rows, want %d", got, n)
	}
	if hits := grepDir(t, dataDir, marker); len(hits) > 0 {
		t.Fatalf("marker stored in plain after rotation: %v", hits)
	}
	// Keys from the environment work the same way, without a file.
	writeKeys(t, keys, "# moved to the environment\n", 0o600)
	cfgNoFile := strings.Replace(withKeys, "  encryption:\n    keys_file: "+keys+"\n", "", 1)
	if err := os.WriteFile(cfgPath, []byte(cfgNoFile), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := count([]string{"METERLINE_ENCRYPTION_KEY_2=" + k2}); got != fmt.Sprint(n) {
		t.Fatalf("with the key from the environment %s rows, want %d", got, n)
	}
	if out, err := meterlineCmd(t, nil, "sql", "--config", cfgPath, "SELECT 1"); err == nil || !strings.Contains(out, "encryption is not configured") {
		var ee *exec.ExitError
		t.Fatalf("start without keys on encrypted data: %v %v\n%s", err, errors.As(err, &ee), out)
	}
}

// A data directory that `meterline migrate` created without encryption:
// refused once encryption is configured, encrypted by `meterline
// encryption migrate`, then used as before.
func TestEncryptionMigrateCommand(t *testing.T) {
	testenv.Require(t, testenv.EnvChdb)
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys")
	writeKeys(t, keys, "1 "+hexKey(t)+"\n", 0o600)
	plain := writeFile(t, "clickhouse:\n  data_dir: "+filepath.Join(dir, "ch")+"\n")
	enc := writeFile(t, "clickhouse:\n  data_dir: "+filepath.Join(dir, "ch")+"\n  encryption:\n    keys_file: "+keys+"\n")
	if out, err := meterlineCmd(t, nil, "migrate", "--config", plain); err != nil {
		t.Fatalf("plain migrate: %v\n%s", err, out)
	}
	if out, err := meterlineCmd(t, nil, "sql", "--config", plain, "INSERT INTO privacy_audit (at, action, customer_id) VALUES (now64(3), 'export', 'cust-QZPLAINQZ')"); err != nil {
		t.Fatalf("insert: %v\n%s", err, out)
	}
	if out, err := meterlineCmd(t, nil, "migrate", "--config", enc); err == nil || !strings.Contains(out, "meterline encryption migrate") {
		t.Fatalf("encrypted start over plain data: %v\n%s", err, out)
	}
	out, err := meterlineCmd(t, nil, "encryption", "migrate", "--config", enc)
	if err != nil || !strings.Contains(out, "encrypted ") {
		t.Fatalf("encryption migrate: %v\n%s", err, out)
	}
	if hits := grepDir(t, filepath.Join(dir, "ch"), "QZPLAINQZ"); len(hits) > 0 {
		t.Fatalf("plain after migration: %v", hits)
	}
	cmd := exec.Command(binPath, "sql", "--config", enc, "SELECT count() FROM privacy_audit WHERE customer_id = 'cust-QZPLAINQZ'")
	got, err := cmd.Output()
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(got)), "1") {
		t.Fatalf("read after migration: %v\n%s", err, got)
	}
}
