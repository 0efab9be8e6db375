package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

func randomKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// The Go fingerprint must equal the engine's sipHash128Keyed, which the
// engine writes into every encrypted file's header: random keys and data of
// every tail length.
func TestKeyFingerprintMatchesEngine(t *testing.T) {
	c := embeddedConnForTest(t, Config{})
	for n := 0; n <= 40; n++ {
		data := make([]byte, n)
		_, _ = rand.Read(data)
		if n == 32 {
			data = randomKey(t)
		}
		rows, err := c.Query(testCtx(t), "SELECT hex(sipHash128Keyed((toUInt64(0x4368456E63727970), toUInt64(0x7465644469736B46)), unhex({d:String})))", P("d", hex.EncodeToString(data)))
		if err != nil {
			t.Fatal(err)
		}
		var got string
		for rows.Next() {
			if err := rows.Scan(&got); err != nil {
				t.Fatal(err)
			}
		}
		rows.Close()
		fp := keyFingerprint(data)
		if want := strings.ToUpper(hex.EncodeToString(fp[:])); got != want {
			t.Fatalf("%d bytes: engine %s, Go %s", n, got, want)
		}
	}
}

func TestEncryptionValidate(t *testing.T) {
	k := randomKey(t)
	for _, tc := range []struct {
		name string
		e    *Encryption
		want string
	}{
		{"nil is off", nil, ""},
		{"ok", &Encryption{Keys: []EncryptionKey{{1, k}, {2, randomKey(t)}}, CurrentKeyID: 2}, ""},
		{"no key", &Encryption{}, "no key"},
		{"short key", &Encryption{Keys: []EncryptionKey{{1, k[:16]}}, CurrentKeyID: 1}, "needs 32"},
		{"id 0", &Encryption{Keys: []EncryptionKey{{0, k}}, CurrentKeyID: 0}, "out of range"},
		{"huge id", &Encryption{Keys: []EncryptionKey{{MaxEncryptionKeyID + 1, k}}, CurrentKeyID: MaxEncryptionKeyID + 1}, "out of range"},
		{"same key under two ids", &Encryption{Keys: []EncryptionKey{{1, k}, {2, k}}, CurrentKeyID: 2}, "same key"},
		{"twice", &Encryption{Keys: []EncryptionKey{{1, k}, {1, k}}, CurrentKeyID: 1}, "twice"},
		{"current missing", &Encryption{Keys: []EncryptionKey{{1, k}}, CurrentKeyID: 3}, "current key id 3"},
	} {
		err := tc.e.Validate()
		if (tc.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestStorageConfigXMLHoldsNoKey(t *testing.T) {
	k1, k2 := randomKey(t), randomKey(t)
	e := &Encryption{Keys: []EncryptionKey{{2, k2}, {1, k1}}, CurrentKeyID: 2}
	xml, err := StorageConfigXML("/srv/ch/encrypted/", e, "default")
	if err != nil {
		t.Fatal(err)
	}
	s := string(xml)
	for _, k := range [][]byte{k1, k2} {
		if strings.Contains(strings.ToLower(s), hex.EncodeToString(k)) {
			t.Fatal("the configuration holds a key")
		}
	}
	for _, want := range []string{`from_env="METERLINE_CLICKHOUSE_KEY_1"`, `from_env="METERLINE_CLICKHOUSE_KEY_2"`,
		"<current_key_id>2</current_key_id>", "<type>encrypted</type>", "<tmp_policy>default</tmp_policy>", "<path>/srv/ch/encrypted/</path>"} {
		if !strings.Contains(s, want) {
			t.Errorf("configuration lacks %s:\n%s", want, s)
		}
	}
	for _, bad := range []struct{ path, policy string }{
		{"relative/", "default"}, {"/x/</path><evil>/", "default"}, {"/x/", "bad policy"}, {"/x/", ""}, {"/x/", "p'"},
	} {
		if _, err := StorageConfigXML(bad.path, e, bad.policy); err == nil {
			t.Errorf("path %q policy %q accepted", bad.path, bad.policy)
		}
	}
	if _, err := StorageConfigXML("/x/", &Encryption{Keys: []EncryptionKey{{1, k1[:5]}}, CurrentKeyID: 1}, "p"); err == nil {
		t.Error("short key accepted")
	}
}

// Every CREATE TABLE of the migrations gets the storage policy, and the
// engine's parser accepts the result (formatQuery parses without running).
func TestMigrationsStoragePolicyParse(t *testing.T) {
	c := embeddedConnForTest(t, Config{})
	fsys, err := migrationFS(nil)
	if err != nil {
		t.Fatal(err)
	}
	files, err := loadMigrations(fsys)
	if err != nil {
		t.Fatal(err)
	}
	stmts := []string{createMigrationsTable}
	for _, f := range files {
		s, err := f.render(TemplateData{RawRetentionMonths: 12, RollupRetentionMonths: 12, LedgerRetentionMonths: 12})
		if err != nil {
			t.Fatal(err)
		}
		stmts = append(stmts, s...)
	}
	tables := 0
	for _, s := range stmts {
		out := withStoragePolicy(s, "meterline_encrypted")
		if !createMergeTree.MatchString(stripLeadingComments(s)) {
			if out != s {
				t.Errorf("statement changed though it creates no table:\n%s", s)
			}
			continue
		}
		tables++
		rows, err := c.Query(testCtx(t), "SELECT formatQuery({q:String})", P("q", out))
		if err != nil {
			t.Fatalf("engine does not parse:\n%s\n%v", out, err)
		}
		var formatted string
		for rows.Next() {
			if err := rows.Scan(&formatted); err != nil {
				t.Fatal(err)
			}
		}
		rows.Close()
		if !strings.Contains(formatted, "storage_policy = 'meterline_encrypted'") {
			t.Errorf("parsed statement lacks the policy:\n%s", formatted)
		}
	}
	if tables < 10 {
		t.Fatalf("only %d tables found in the migrations", tables)
	}
	if got := withStoragePolicy(createMigrationsTable, ""); got != createMigrationsTable {
		t.Error("empty policy changed the statement")
	}
}

func TestMigrateRejectsBadStoragePolicy(t *testing.T) {
	c := embeddedConnForTest(t, Config{})
	for _, p := range []string{"x'; DROP TABLE events; --", "a b", strings.Repeat("p", 65)} {
		if _, err := Migrate(testCtx(t), c, MigrateOptions{StoragePolicy: p}, testLogger); err == nil || !strings.Contains(err.Error(), "storage policy") {
			t.Errorf("policy %q: %v", p, err)
		}
	}
	rows, err := c.Query(testCtx(t), "SELECT count() FROM system.tables WHERE database = currentDatabase()")
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for rows.Next() {
		_ = rows.Scan(&n)
	}
	rows.Close()
	if n != 0 {
		t.Errorf("a refused migration created %d tables", n)
	}
}

func TestPartOf(t *testing.T) {
	for rel, want := range map[string]string{
		"store/abc/abc-uuid/all_1_1_0/data.bin":            "store/abc/abc-uuid/all_1_1_0",
		"store/abc/abc-uuid/format_version.txt":            "",
		"store/abc/abc-uuid/mutation_5.txt":                "",
		"store/abc/abc-uuid/deduplication_logs/log_1.txt":  "",
		"store/abc/abc-uuid/detached/broken_1/columns.txt": "store/abc/abc-uuid/detached/broken_1",
		"other/file": "",
	} {
		if got := partOf(rel); got != want {
			t.Errorf("partOf(%q) = %q, want %q", rel, got, want)
		}
	}
}

// checkDataDir refuses encryption over plain tables and plain start-up over
// encrypted ones, before anything boots.
func TestCheckDataDirRefusesMixedDirectories(t *testing.T) {
	e := &Encryption{Keys: []EncryptionKey{{1, randomKey(t)}}, CurrentKeyID: 1}
	plain := t.TempDir()
	if err := os.MkdirAll(filepath.Join(plain, "store/a1b/a1b-uuid"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(plain, "store/a1b/a1b-uuid/format_version.txt"), []byte("1"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checkDataDir(plain, e); !errors.Is(err, ErrEncryptionKey) || !strings.Contains(err.Error(), "without encryption") {
		t.Errorf("encryption over plain tables: %v", err)
	}
	if err := checkDataDir(plain, nil); err != nil {
		t.Errorf("plain over plain: %v", err)
	}
	enc := t.TempDir()
	if err := os.MkdirAll(filepath.Join(enc, encryptedDataDir, "store/x/y"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(enc, encryptedDataDir, "store/x/y/format_version.txt"), []byte("ENC..."), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checkDataDir(enc, nil); !errors.Is(err, ErrEncryptionKey) || !strings.Contains(err.Error(), "encryption is not configured") {
		t.Errorf("plain over encrypted tables: %v", err)
	}
	if err := checkDataDir(t.TempDir(), e); err != nil {
		t.Errorf("new directory: %v", err)
	}
}

// encryptedChildEnv makes the test binary boot an encrypted engine in a
// directory of its own (one engine per process) and run one scenario.
const encryptedChildEnv = "METERLINE_STORE_TEST_ENCRYPTED_DIR"

// encryptedChild runs the scenario named by METERLINE_STORE_TEST_SCENARIO
// on the directory dir, with the keys of METERLINE_STORE_TEST_KEYS
// ("id:hex,id:hex") and current key METERLINE_STORE_TEST_CURRENT. It
// prints "ROWS n" on success and "OPEN ERROR: ..." when Open fails.
func encryptedChild(dir string) int {
	var enc *Encryption
	if ks := os.Getenv("METERLINE_STORE_TEST_KEYS"); ks != "" {
		enc = &Encryption{}
		for _, kv := range strings.Split(ks, ",") {
			id, k, _ := strings.Cut(kv, ":")
			n, _ := strconv.ParseUint(id, 10, 64)
			b, _ := hex.DecodeString(k)
			enc.Keys = append(enc.Keys, EncryptionKey{ID: n, Key: b})
		}
		enc.CurrentKeyID, _ = strconv.ParseUint(os.Getenv("METERLINE_STORE_TEST_CURRENT"), 10, 64)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := Open(ctx, Config{DataDir: dir, Encryption: enc, MaxOpenConns: 2}, nil)
	if err != nil {
		fmt.Println("OPEN ERROR:", err)
		return 2
	}
	defer c.Close()
	fail := func(err error) int {
		fmt.Println("ERROR:", err)
		return 1
	}
	if _, err := Migrate(ctx, c, MigrateOptions{}, nil); err != nil {
		return fail(err)
	}
	marker := os.Getenv("METERLINE_STORE_TEST_MARKER")
	if os.Getenv("METERLINE_STORE_TEST_SCENARIO") == "write" {
		at := time.Now().UTC().Add(-time.Hour).Truncate(time.Millisecond)
		for b := range 3 {
			rows := make([][]any, 2000)
			for i := range rows {
				r := eventRow(fmt.Sprintf("%s-%d-%d", marker, b, i), at.Add(time.Duration(i)*time.Millisecond), i)
				r[6] = "/v1/" + marker + "/{id}"                       // route
				r[12] = "agent-" + marker                              // user agent
				r[14] = map[string]string{"plan": marker, "sdk": "go"} // properties
				r[3] = "cus-" + marker                                 // customer
				rows[i] = r
			}
			if err := c.Insert(ctx, "events", eventColumns, rows, InsertOptions{DedupToken: fmt.Sprintf("%s-%d", marker, b)}); err != nil {
				return fail(err)
			}
		}
		// A mutation writes its command (with the marker) into the
		// table's directory; merges rewrite every part.
		if err := c.Exec(ctx, "ALTER TABLE events DELETE WHERE id = {id:String} SETTINGS mutations_sync = 1", P("id", marker+"-0-0")); err != nil {
			return fail(err)
		}
		if err := c.Exec(ctx, "OPTIMIZE TABLE events FINAL"); err != nil {
			return fail(err)
		}
	}
	rows, err := c.Query(ctx, "SELECT count(), countIf(user_agent = {ua:String} AND properties['plan'] = {m:String}) FROM events", P("ua", "agent-"+marker), P("m", marker))
	if err != nil {
		return fail(err)
	}
	defer rows.Close()
	var n, marked int64
	for rows.Next() {
		if err := rows.Scan(&n, &marked); err != nil {
			return fail(err)
		}
	}
	if err := rows.Err(); err != nil {
		return fail(err)
	}
	fmt.Printf("ROWS %d MARKED %d\n", n, marked)
	return 0
}

type childKeys map[uint64][]byte

func (k childKeys) env(current uint64) []string {
	if k == nil {
		return nil
	}
	var parts []string
	for id, key := range k {
		parts = append(parts, fmt.Sprintf("%d:%x", id, key))
	}
	sort.Strings(parts)
	return []string{"METERLINE_STORE_TEST_KEYS=" + strings.Join(parts, ","), fmt.Sprintf("METERLINE_STORE_TEST_CURRENT=%d", current)}
}

func (k childKeys) encryption(current uint64) *Encryption {
	e := &Encryption{CurrentKeyID: current}
	for id, key := range k {
		e.Keys = append(e.Keys, EncryptionKey{ID: id, Key: key})
	}
	return e
}

// runEncryptedChild runs the scenario in a new process of this test binary
// with TMPDIR set to tmp, and returns its output and whether it succeeded.
func runEncryptedChild(t *testing.T, dir, tmp, scenario, marker string, keys childKeys, current uint64) (string, bool) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run", "^$")
	cmd.Env = append(os.Environ(), encryptedChildEnv+"="+dir, "METERLINE_STORE_TEST_SCENARIO="+scenario,
		"METERLINE_STORE_TEST_MARKER="+marker, "TMPDIR="+tmp)
	cmd.Env = append(cmd.Env, keys.env(current)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err == nil
}

// treeDigest hashes every path, mode and content under dir, so that a
// refused start can be shown to have changed nothing.
func treeDigest(t *testing.T, dir string) string {
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

// grepTree returns the files under dir whose bytes contain needle.
func grepTree(t *testing.T, dir string, needle []byte) []string {
	t.Helper()
	var hits []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.Type().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			if bytes.Contains(b, needle) {
				hits = append(hits, p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hits
}

// TestEncryptedEngineEndToEnd boots the real engine on an encrypted data
// directory in child processes: rows whose route, user agent, customer and
// properties hold a marker are inserted (through the Native memory-file
// path), mutated and merged, and the marker is found in no file of the data
// directory or the temporary directory; a wrong key, a missing key id and a
// start without encryption are refused and change nothing; after key 2
// becomes current and the keys are rotated, no file needs key 1, and the
// engine starts with key 2 alone and reads every row.
func TestEncryptedEngineEndToEnd(t *testing.T) {
	if embeddedSkip != "" {
		t.Skip(embeddedSkip)
	}
	dir, tmp := t.TempDir(), t.TempDir()
	marker := fmt.Sprintf("ZQMARK%dZQ", time.Now().UnixNano())
	k1, k2 := randomKey(t), randomKey(t)

	out, ok := runEncryptedChild(t, dir, tmp, "write", marker, childKeys{1: k1}, 1)
	if !ok || !strings.Contains(out, "ROWS 5999 MARKED 5999") {
		t.Fatalf("write with key 1:\n%s", out)
	}
	for _, d := range []string{dir, tmp} {
		if hits := grepTree(t, d, []byte(marker)); len(hits) > 0 {
			t.Fatalf("marker stored in plain in %v", hits)
		}
		for _, k := range [][]byte{k1, []byte(hex.EncodeToString(k1))} {
			if hits := grepTree(t, d, k); len(hits) > 0 {
				t.Fatalf("key stored in %v", hits)
			}
		}
	}
	st, err := ReadEncryptionStatus(dir, childKeys{1: k1}.encryption(1))
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Keys) != 1 || st.Keys[0].Parts == 0 || st.Keys[0].Files == 0 || len(st.Unknown) != 0 || st.Unencrypted != 0 {
		t.Fatalf("status after write: %+v", st)
	}

	before := treeDigest(t, dir)
	for _, tc := range []struct {
		name    string
		keys    childKeys
		current uint64
		want    string
	}{
		{"wrong key under id 1", childKeys{1: k2}, 1, "key id 1 is not the key"},
		{"key id 1 missing", childKeys{2: k2}, 2, "need key id 1, which is not configured"},
		{"encryption off", nil, 0, "encryption is not configured"},
	} {
		out, ok := runEncryptedChild(t, dir, tmp, "read", marker, tc.keys, tc.current)
		if ok || !strings.Contains(out, "OPEN ERROR") || !strings.Contains(out, tc.want) {
			t.Errorf("%s: want refusal %q, got:\n%s", tc.name, tc.want, out)
		}
		if after := treeDigest(t, dir); after != before {
			t.Fatalf("%s: the refused start changed the data directory", tc.name)
		}
	}

	// Key 2 becomes current: new parts use it, old ones keep key 1.
	both := childKeys{1: k1, 2: k2}
	out, ok = runEncryptedChild(t, dir, tmp, "read", marker, both, 2)
	if !ok || !strings.Contains(out, "ROWS 5999 ") {
		t.Fatalf("read with keys 1 and 2:\n%s", out)
	}
	// A rotation stopped part way leaves every file readable, and its
	// temporaries (as a kill would leave them) are cleaned up.
	ctx, cancel := context.WithCancel(testCtx(t))
	partial, err := RotateKeys(ctx, dir, both.encryption(2), func(p RotateProgress) {
		if p.Files == 3 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) || partial.Files != 3 || !strings.Contains(err.Error(), "run it again") {
		t.Fatalf("stopped rotation: %d files, %v", partial.Files, err)
	}
	files, err := walkEncrypted(dir)
	if err != nil || len(files) == 0 {
		t.Fatal(files, err)
	}
	leftover := files[0].path + rotateTempSuffix
	if err := os.WriteFile(leftover, []byte("half written"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, ok = runEncryptedChild(t, dir, tmp, "read", marker, both, 2)
	if !ok || !strings.Contains(out, "ROWS 5999 MARKED 5999") {
		t.Fatalf("read after a stopped rotation:\n%s", out)
	}
	if _, err := os.Stat(leftover); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("start-up left a rotation temporary: %v", err)
	}
	res, err := RotateKeys(testCtx(t), dir, both.encryption(2), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Files == 0 {
		t.Fatal("rotation rewrote no file")
	}
	if k := res.Status.Keys[0]; k.ID != 1 || k.Files != 0 || k.Parts != 0 {
		t.Fatalf("key 1 still used after rotation: %+v", res.Status)
	}
	again, err := RotateKeys(testCtx(t), dir, both.encryption(2), nil)
	if err != nil || again.Files != 0 {
		t.Fatalf("second rotation: %d files, %v", again.Files, err)
	}
	out, ok = runEncryptedChild(t, dir, tmp, "read", marker, childKeys{2: k2}, 2)
	if !ok || !strings.Contains(out, "ROWS 5999 MARKED 5999") {
		t.Fatalf("read with key 2 alone after rotation:\n%s", out)
	}
	if hits := grepTree(t, dir, []byte(marker)); len(hits) > 0 {
		t.Fatalf("marker stored in plain after rotation in %v", hits)
	}
	// Id 1's old key is needed by no file any more: the id may take a new key.
	if out, ok := runEncryptedChild(t, dir, tmp, "read", marker, childKeys{1: randomKey(t), 2: k2}, 2); !ok || !strings.Contains(out, "ROWS 5999 ") {
		t.Fatalf("new key under a retired id:\n%s", out)
	}
	// Rotating without the key that wrote the files is refused.
	if _, err := RotateKeys(testCtx(t), dir, childKeys{3: randomKey(t)}.encryption(3), nil); !errors.Is(err, ErrEncryptionKey) {
		t.Errorf("rotation without the files' key: %v", err)
	}
}

// Files the engine did not write, on the encrypted disk: a short file, a
// header of a key nobody configured, a symbolic link to a file elsewhere.
// Status counts them, start-up and rotation refuse, and nothing changes.
func TestEncryptedDiskHostileFiles(t *testing.T) {
	dir := t.TempDir()
	k1, stranger := randomKey(t), randomKey(t)
	e := &Encryption{Keys: []EncryptionKey{{1, k1}}, CurrentKeyID: 1}
	part := filepath.Join(dir, encryptedDataDir, "store/abc/abc-uuid/all_1_1_0")
	if err := os.MkdirAll(part, 0o750); err != nil {
		t.Fatal(err)
	}
	h := encHeader{version: encVersion, algorithm: encAlgAES256CTR, fingerprint: keyFingerprint(stranger)}
	if err := os.WriteFile(filepath.Join(part, "data.bin"), append(h.bytes(), "ciphertext"...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(part, "count.txt"), []byte("ENC short"), 0o600); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(t.TempDir(), "victim")
	mine := encHeader{version: encVersion, algorithm: encAlgAES256CTR, fingerprint: keyFingerprint(stranger)}
	if err := os.WriteFile(outside, append(mine.bytes(), "keep me"...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(part, "columns.txt")); err != nil {
		t.Fatal(err)
	}
	st, err := ReadEncryptionStatus(dir, e)
	if err != nil {
		t.Fatal(err)
	}
	if st.Unencrypted != 1 || len(st.Unknown) != 1 || st.Unknown[0].Files != 1 || st.Unknown[0].Parts != 1 || st.Keys[0].Files != 0 {
		t.Fatalf("status: %+v", st)
	}
	before := treeDigest(t, dir)
	victim, _ := os.ReadFile(outside)
	if err := checkDataDir(dir, e); !errors.Is(err, ErrEncryptionKey) || !strings.Contains(err.Error(), "not configured (fingerprint") {
		t.Errorf("start-up: %v", err)
	}
	if _, err := RotateKeys(testCtx(t), dir, e, nil); !errors.Is(err, ErrEncryptionKey) {
		t.Errorf("rotation: %v", err)
	}
	// With the stranger's key configured, rotation rewrites the file it
	// wrote but never follows the link out of the data directory.
	both := &Encryption{Keys: []EncryptionKey{{1, k1}, {2, stranger}}, CurrentKeyID: 1}
	res, err := RotateKeys(testCtx(t), dir, both, nil)
	if err != nil || res.Files != 1 {
		t.Fatalf("rotation with the key: %d files, %v", res.Files, err)
	}
	if got, _ := os.ReadFile(outside); !bytes.Equal(got, victim) {
		t.Error("rotation wrote through a symbolic link")
	}
	if treeDigest(t, dir) == before {
		t.Error("rotation changed nothing")
	}
	if err := os.WriteFile(filepath.Join(part, "bad.bin"), append(encHeader{version: 9, fingerprint: keyFingerprint(stranger)}.bytes(), 'x'), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := RotateKeys(testCtx(t), dir, both, nil); err == nil || !strings.Contains(err.Error(), "unsupported encryption header") {
		t.Errorf("unsupported header: %v", err)
	}
}

// A data directory written without encryption is refused with encryption
// on, then encrypted in place by EncryptPlainData: the marker is gone from
// every file, the engine starts with the key and reads every row, and a
// start without encryption is refused.
func TestEncryptPlainData(t *testing.T) {
	if embeddedSkip != "" {
		t.Skip(embeddedSkip)
	}
	dir, tmp := t.TempDir(), t.TempDir()
	marker := fmt.Sprintf("ZQPLAIN%dZQ", time.Now().UnixNano())
	k1 := randomKey(t)
	out, ok := runEncryptedChild(t, dir, tmp, "write", marker, nil, 0)
	if !ok || !strings.Contains(out, "ROWS 5999 MARKED 5999") {
		t.Fatalf("plain write:\n%s", out)
	}
	if len(grepTree(t, dir, []byte(marker))) == 0 {
		t.Fatal("the plain engine stored no marker in plain: this test could not fail")
	}
	before := treeDigest(t, dir)
	out, ok = runEncryptedChild(t, dir, tmp, "read", marker, childKeys{1: k1}, 1)
	if ok || !strings.Contains(out, "meterline encryption migrate") {
		t.Fatalf("encrypted start over plain tables:\n%s", out)
	}
	if treeDigest(t, dir) != before {
		t.Fatal("the refused start changed the data directory")
	}
	// Stopped after the first table, then run again.
	e := childKeys{1: k1}.encryption(1)
	ctx, cancel := context.WithCancel(testCtx(t))
	_, err := EncryptPlainData(ctx, dir, e, func(p RotateProgress) { cancel() })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("stopped migration: %v", err)
	}
	res, err := EncryptPlainData(testCtx(t), dir, e, nil)
	if err != nil || res.Tables == 0 {
		t.Fatalf("migration: %+v, %v", res, err)
	}
	if hits := grepTree(t, dir, []byte(marker)); len(hits) > 0 {
		t.Fatalf("marker still in plain after migration: %v", hits)
	}
	out, ok = runEncryptedChild(t, dir, tmp, "read", marker, childKeys{1: k1}, 1)
	if !ok || !strings.Contains(out, "ROWS 5999 MARKED 5999") {
		t.Fatalf("read after migration:\n%s", out)
	}
	out, ok = runEncryptedChild(t, dir, tmp, "read", marker, nil, 0)
	if ok || !strings.Contains(out, "encryption is not configured") {
		t.Fatalf("plain start after migration:\n%s", out)
	}
	again, err := EncryptPlainData(testCtx(t), dir, e, nil)
	if err != nil || again.Tables != 0 {
		t.Fatalf("second migration: %+v, %v", again, err)
	}
}
