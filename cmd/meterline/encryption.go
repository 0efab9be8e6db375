package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/meterline/meterline/internal/term"
	"github.com/meterline/meterline/store"
)

// EncryptionConfig is encryption at rest of the embedded engine. It is on
// when a key is configured (keys_file or METERLINE_ENCRYPTION_KEY_<ID>),
// off by default: a lost key loses the data, so turning it on is a choice
// made together with keeping the keys (see docs/design.md).
type EncryptionConfig struct {
	// KeysFile holds the keys, one "ID KEY" line each (KEY: 64 hex digits
	// or 32 bytes in base64; # starts a comment). It must not be readable
	// by group or others (mode 0600). Default empty.
	KeysFile string `yaml:"keys_file"`
	// CurrentKeyID is the key new parts are written with; the others stay
	// configured only to read older parts until `meterline encryption
	// rotate` has rewritten them. Default: the highest configured id.
	CurrentKeyID int `yaml:"current_key_id"`
	// Keys and Key exist only to refuse keys written into the
	// configuration file itself.
	Keys any `yaml:"keys,omitempty"`
	Key  any `yaml:"key,omitempty"`

	// envKeys are the METERLINE_ENCRYPTION_KEY_<ID> variables.
	envKeys []string
}

// encryptionKeyEnv starts the environment variables that carry keys.
const encryptionKeyEnv = "METERLINE_ENCRYPTION_KEY_"

// maxKeysFile caps the keys file.
const maxKeysFile = 64 << 10

// enabled tells whether any key source is configured.
func (e EncryptionConfig) enabled() bool { return e.KeysFile != "" || len(e.envKeys) > 0 }

// load returns the engine's encryption settings (nil when off).
func (e EncryptionConfig) load() (*store.Encryption, error) {
	if e.Keys != nil || e.Key != nil {
		return nil, errors.New("clickhouse.encryption: keys must not be written into the configuration file; put them in clickhouse.encryption.keys_file (mode 0600) or in METERLINE_ENCRYPTION_KEY_<ID> variables")
	}
	if !e.enabled() {
		if e.CurrentKeyID != 0 {
			return nil, errors.New("clickhouse.encryption.current_key_id is set but no key is configured (keys_file or METERLINE_ENCRYPTION_KEY_<ID>)")
		}
		return nil, nil
	}
	var keys []store.EncryptionKey
	var errs []error
	if e.KeysFile != "" {
		k, err := readKeysFile(e.KeysFile)
		if err != nil {
			return nil, fmt.Errorf("clickhouse.encryption.keys_file: %w", err)
		}
		keys = k
	}
	for _, kv := range e.envKeys {
		name, val, _ := strings.Cut(kv, "=")
		id, err := parseKeyID(strings.TrimPrefix(name, encryptionKeyEnv))
		if err != nil {
			errs = append(errs, fmt.Errorf("environment: %s: %w", name, err))
			continue
		}
		key, err := parseKey(val)
		if err != nil {
			errs = append(errs, fmt.Errorf("environment: %s: %w", name, err))
			continue
		}
		if slices.ContainsFunc(keys, func(k store.EncryptionKey) bool { return k.ID == id }) {
			errs = append(errs, fmt.Errorf("environment: %s: key id %d is also in the keys file", name, id))
			continue
		}
		keys = append(keys, store.EncryptionKey{ID: id, Key: key})
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	enc := &store.Encryption{Keys: keys, CurrentKeyID: uint64(e.CurrentKeyID)}
	if e.CurrentKeyID < 0 {
		return nil, fmt.Errorf("clickhouse.encryption.current_key_id: %d is negative", e.CurrentKeyID)
	}
	if e.CurrentKeyID == 0 {
		for _, k := range keys {
			enc.CurrentKeyID = max(enc.CurrentKeyID, k.ID)
		}
	}
	if err := enc.Validate(); err != nil {
		return nil, fmt.Errorf("clickhouse.encryption: %w", err)
	}
	return enc, nil
}

// readKeysFile reads and checks a keys file.
func readKeysFile(path string) ([]store.EncryptionKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if perm := info.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%s is readable or writable by group or others (mode %04o); run chmod 600 %s", path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeysFile+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxKeysFile {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxKeysFile)
	}
	var keys []store.EncryptionKey
	var errs []error
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxKeysFile)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			errs = append(errs, fmt.Errorf("line %d: want \"ID KEY\"", n))
			continue
		}
		id, err := parseKeyID(f[0])
		if err != nil {
			errs = append(errs, fmt.Errorf("line %d: %w", n, err))
			continue
		}
		key, err := parseKey(f[1])
		if err != nil {
			errs = append(errs, fmt.Errorf("line %d (key id %d): %w", n, id, err))
			continue
		}
		if slices.ContainsFunc(keys, func(k store.EncryptionKey) bool { return k.ID == id }) {
			errs = append(errs, fmt.Errorf("line %d: key id %d is given twice", n, id))
			continue
		}
		keys = append(keys, store.EncryptionKey{ID: id, Key: key})
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s: %w", path, errors.Join(errs...))
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s holds no key", path)
	}
	return keys, nil
}

func parseKeyID(s string) (uint64, error) {
	id, err := strconv.ParseUint(s, 10, 64)
	if err != nil || id < 1 || id > store.MaxEncryptionKeyID {
		return 0, fmt.Errorf("key id %q is not a number 1-%d", s, store.MaxEncryptionKeyID)
	}
	return id, nil
}

// parseKey accepts 64 hex digits or the standard base64 of 32 bytes. The
// error never repeats the value.
func parseKey(s string) ([]byte, error) {
	if len(s) == 64 {
		if b, err := hex.DecodeString(s); err == nil {
			return b, nil
		}
	}
	if b, err := base64.StdEncoding.DecodeString(s); err == nil && len(b) == 32 {
		return b, nil
	}
	return nil, fmt.Errorf("not a 256-bit key (%d characters; want 64 hex digits or 44 base64 characters, e.g. from `meterline encryption generate-key`)", len(s))
}

func runEncryption(args []string, stdout, stderr io.Writer) error {
	const synopsis = "encryption status|rotate|migrate|generate-key|server-config [flags]"
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: meterline "+synopsis)
		return errUsage
	}
	switch args[0] {
	case "status":
		return runEncryptionStatus(args[1:], stdout, stderr)
	case "rotate":
		return runEncryptionRotate(args[1:], stdout, stderr)
	case "migrate":
		return runEncryptionMigrate(args[1:], stdout, stderr)
	case "generate-key":
		return runEncryptionGenerateKey(args[1:], stdout, stderr)
	case "server-config":
		return runEncryptionServerConfig(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "meterline encryption: unknown subcommand %q\nusage: meterline %s\n", args[0], synopsis)
	return errUsage
}

// encryptionForCommand loads the configuration and its keys.
func encryptionForCommand(cf *commonFlags) (*Config, *store.Encryption, error) {
	cfg, err := cf.load()
	if err != nil {
		return nil, nil, err
	}
	if len(cfg.ClickHouse.Addr) > 0 {
		return nil, nil, errors.New("encryption status and rotate read the embedded engine's data directory; a ClickHouse server encrypts with its own storage configuration (meterline encryption server-config)")
	}
	enc, err := cfg.ClickHouse.Encryption.load()
	if err != nil {
		return nil, nil, err
	}
	if enc == nil {
		return nil, nil, errors.New("encryption is not configured: set clickhouse.encryption.keys_file or METERLINE_ENCRYPTION_KEY_<ID>")
	}
	return cfg, enc, nil
}

func runEncryptionStatus(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("encryption status", "encryption status [--config FILE]", stderr)
	var cf commonFlags
	cf.registerFor(fs, flagsStore)
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, enc, err := encryptionForCommand(&cf)
	if err != nil {
		return err
	}
	st, err := store.ReadEncryptionStatus(cfg.ClickHouse.DataDir, enc)
	if err != nil {
		return err
	}
	printEncryptionStatus(stdout, st)
	if len(st.Unknown) > 0 || st.Unencrypted > 0 {
		return errors.New("some files are not readable with the configured keys")
	}
	return nil
}

func printEncryptionStatus(w io.Writer, st store.EncryptionStatus) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY ID\tCURRENT\tPARTS\tFILES\tBYTES")
	for _, k := range st.Keys {
		cur := ""
		if k.Current {
			cur = "yes"
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%d\n", k.ID, cur, k.Parts, k.Files, k.Bytes)
	}
	for _, u := range st.Unknown {
		fmt.Fprintf(tw, "not configured (fingerprint %x)\t\t%d\t%d\t%d\n", u.Fingerprint, u.Parts, u.Files, u.Bytes)
	}
	_ = tw.Flush()
	if st.Unencrypted > 0 {
		fmt.Fprintf(w, "%d file(s) on the encrypted disk have no encryption header\n", st.Unencrypted)
	}
	for _, k := range st.Keys {
		if !k.Current && k.Files == 0 {
			fmt.Fprintf(w, "no part or file needs key %d: it may be removed from the keys\n", k.ID)
		} else if !k.Current {
			fmt.Fprintf(w, "key %d is still needed by %d file(s); run `meterline encryption rotate` (with the server stopped) to rewrite them with key %d\n", k.ID, k.Files, st.CurrentKeyID)
		}
	}
}

func runEncryptionRotate(args []string, stdout, stderr io.Writer) error {
	var res store.RotateResult
	enc, err := rewriteFiles("rotate", "rotation rewrites", args, stderr,
		func(ctx context.Context, dir string, enc *store.Encryption, progress func(store.RotateProgress)) (err error) {
			res, err = store.RotateKeys(ctx, dir, enc, progress)
			return err
		})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "re-encrypted %d file(s), %d bytes, with key %d\n", res.Files, res.Bytes, enc.CurrentKeyID)
	printEncryptionStatus(stdout, res.Status)
	return nil
}

func runEncryptionMigrate(args []string, stdout, stderr io.Writer) error {
	var res store.MigrateResult
	enc, err := rewriteFiles("migrate", "migration moves", args, stderr,
		func(ctx context.Context, dir string, enc *store.Encryption, progress func(store.RotateProgress)) (err error) {
			res, err = store.EncryptPlainData(ctx, dir, enc, progress)
			return err
		})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "encrypted %d table(s), %d file(s), %d bytes, with key %d\n", res.Tables, res.Files, res.Bytes, enc.CurrentKeyID)
	return nil
}

// rewriteFiles is what rotate and migrate share: their flags, the keys,
// a progress bar over the bytes rewritten, and the hint when the engine
// holds the files (doing says what the command does to them).
func rewriteFiles(name, doing string, args []string, stderr io.Writer,
	run func(ctx context.Context, dir string, enc *store.Encryption, progress func(store.RotateProgress)) error) (*store.Encryption, error) {
	fs := newFlagSet("encryption "+name, "encryption "+name+" [--config FILE] [--quiet]", stderr)
	var cf commonFlags
	cf.registerFor(fs, flagsStore)
	quiet := fs.Bool("quiet", false, "no progress bar")
	if err := parse(fs, args); err != nil {
		return nil, err
	}
	cfg, enc, err := encryptionForCommand(&cf)
	if err != nil {
		return nil, err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	p := term.NewProgress(stderr, *quiet)
	p.SetUnit("bytes")
	started := false
	err = run(ctx, cfg.ClickHouse.DataDir, enc, func(pr store.RotateProgress) {
		if !started {
			p.Start(uint64(pr.TotalBytes))
			started = true
		}
		p.Set(uint64(pr.Bytes), fmt.Sprintf("%d/%d files", pr.Files, pr.TotalFiles))
	})
	if started {
		p.Finish()
	}
	if errors.Is(err, store.ErrUnavailable) {
		err = fmt.Errorf("%w\n(%s files the engine holds: stop `meterline serve` first)", err, doing)
	}
	return enc, err
}

func runEncryptionGenerateKey(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("encryption generate-key", "encryption generate-key [--id N] [--out FILE]", stderr)
	id := fs.Int("id", 1, "key `id` of the new key")
	out := fs.String("out", "", "append the key line to this keys `file` (created with mode 0600) instead of printing it")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := noArgs(fs, stderr); err != nil {
		return err
	}
	if *id < 1 || *id > store.MaxEncryptionKeyID {
		fmt.Fprintf(stderr, "meterline encryption generate-key: --id %d is out of range 1-%d\n", *id, store.MaxEncryptionKeyID)
		return errUsage
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	line := fmt.Sprintf("%d %s\n", *id, hex.EncodeToString(key))
	if *out == "" {
		_, err := io.WriteString(stdout, line)
		return err
	}
	if keys, err := readKeysFile(*out); err == nil {
		if slices.ContainsFunc(keys, func(k store.EncryptionKey) bool { return k.ID == uint64(*id) }) {
			return fmt.Errorf("%s already holds key id %d", *out, *id)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(*out, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.WriteString(f, line); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "added key %d to %s; keep a copy of it apart from the data: without it the data is lost\n", *id, *out)
	return nil
}

func runEncryptionServerConfig(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("encryption server-config", "encryption server-config --disk-path DIR [--keys ID,ID] [--current-key-id N] [--policy NAME]", stderr)
	diskPath := fs.String("disk-path", "/var/lib/clickhouse/disks/meterline/", "absolute `directory` on the server for the encrypted disk")
	ids := fs.String("keys", "1", "comma-separated key `ids` the server's environment provides (as METERLINE_CLICKHOUSE_KEY_<ID>, 64 hex digits)")
	current := fs.Int("current-key-id", 0, "key `id` new parts are written with (default the highest)")
	policy := fs.String("policy", "meterline_encrypted", "storage policy `name` (set the same as clickhouse.storage_policy)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := noArgs(fs, stderr); err != nil {
		return err
	}
	enc := &store.Encryption{CurrentKeyID: uint64(*current)}
	for _, s := range splitList(*ids) {
		id, err := parseKeyID(s)
		if err != nil {
			fmt.Fprintf(stderr, "meterline encryption server-config: --keys: %v\n", err)
			return errUsage
		}
		// The server reads the keys from its environment; the key here
		// only satisfies validation (distinct per id) and is not printed.
		placeholder := make([]byte, 32)
		binary.LittleEndian.PutUint64(placeholder, id)
		enc.Keys = append(enc.Keys, store.EncryptionKey{ID: id, Key: placeholder})
		if *current == 0 {
			enc.CurrentKeyID = max(enc.CurrentKeyID, id)
		}
	}
	xml, err := store.StorageConfigXML(filepath.Clean(*diskPath)+"/", enc, *policy)
	if err != nil {
		fmt.Fprintf(stderr, "meterline encryption server-config: %v\n", err)
		return errUsage
	}
	_, err = stdout.Write(xml)
	return err
}
