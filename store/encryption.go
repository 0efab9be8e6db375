package store

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Encryption turns on encryption at rest of the embedded engine: every
// table is stored on an encrypted disk (AES-256-CTR), whatever its DDL
// says, because the engine's default storage policy is redefined to that
// disk. The keys are handed to the engine through its environment at
// start-up and never written to disk; see docs/design.md.
type Encryption struct {
	// Keys are the configured keys; each Key is 32 bytes. Parts written
	// with a key stay readable while that key is configured.
	Keys []EncryptionKey
	// CurrentKeyID is the key that new parts (and rotated ones) are
	// written with. It must be one of Keys.
	CurrentKeyID uint64
}

// EncryptionKey is one AES-256 key and its id.
type EncryptionKey struct {
	ID  uint64
	Key []byte
}

// MaxEncryptionKeyID bounds key ids (the engine takes any UInt64; a small
// range keeps ids readable in files and variable names).
const MaxEncryptionKeyID = 1_000_000

// ErrEncryptionKey marks a start-up refused because the configured keys
// do not fit the data directory (wrong key, missing key id, encryption
// turned on over plain data or off over encrypted data). Nothing was
// changed when it is returned.
var ErrEncryptionKey = errors.New("encryption keys do not fit the data directory")

// Validate checks the ids, the key sizes and the current key.
func (e *Encryption) Validate() error {
	if e == nil {
		return nil
	}
	var errs []error
	if len(e.Keys) == 0 {
		errs = append(errs, errors.New("no key"))
	}
	seen := map[uint64]bool{}
	sameKey := map[[16]byte]uint64{}
	current := false
	for _, k := range e.Keys {
		if k.ID < 1 || k.ID > MaxEncryptionKeyID {
			errs = append(errs, fmt.Errorf("key id %d is out of range 1-%d", k.ID, MaxEncryptionKeyID))
		}
		if seen[k.ID] {
			errs = append(errs, fmt.Errorf("key id %d is given twice", k.ID))
		}
		seen[k.ID] = true
		if len(k.Key) != 32 {
			errs = append(errs, fmt.Errorf("key id %d has %d bytes; AES-256 needs 32 (64 hex digits or 44 base64 characters)", k.ID, len(k.Key)))
		}
		current = current || k.ID == e.CurrentKeyID
		if fp := keyFingerprint(k.Key); len(k.Key) == 32 {
			if other, dup := sameKey[fp]; dup && other != k.ID {
				errs = append(errs, fmt.Errorf("key ids %d and %d hold the same key", other, k.ID))
			}
			sameKey[fp] = k.ID
		}
	}
	if len(e.Keys) > 0 && !current {
		errs = append(errs, fmt.Errorf("current key id %d is not among the configured keys", e.CurrentKeyID))
	}
	return errors.Join(errs...)
}

// key returns the key with id, or nil.
func (e *Encryption) key(id uint64) []byte {
	for _, k := range e.Keys {
		if k.ID == id {
			return k.Key
		}
	}
	return nil
}

// byFingerprint maps each configured key's fingerprint to its id.
func (e *Encryption) byFingerprint() map[[16]byte]uint64 {
	out := map[[16]byte]uint64{}
	for _, k := range e.Keys {
		out[keyFingerprint(k.Key)] = k.ID
	}
	return out
}

// Layout of an encrypted data directory. The engine's own "default" disk
// (the data directory itself) keeps only the databases' metadata (the
// CREATE statements); every table's data lives under encryptedDataDir.
const (
	plainDiskName     = "meterline_plain"
	encryptedDiskName = "meterline_encrypted"
	encryptedPolicy   = "default"
	// encryptedRoot is the plain disk under the data directory; the
	// encrypted disk is its subdirectory "data".
	encryptedRoot     = "encrypted"
	encryptedDataDir  = "encrypted/data"
	storageConfigFile = "meterline-storage.xml"
	keyRegistryFile   = "encryption-keys.json"
	rotateTempSuffix  = ".meterline-rotate.tmp"
)

// KeyEnvName is the environment variable through which the engine reads
// key id (the generated configuration names it with from_env). The
// embedded engine gets it set inside the process for the moment it boots;
// a ClickHouse server gets it from its service environment.
func KeyEnvName(id uint64) string { return "METERLINE_CLICKHOUSE_KEY_" + strconv.FormatUint(id, 10) }

// StorageConfigXML renders the engine configuration that defines the
// encrypted disk over plainPath (an absolute directory ending in "/"),
// makes it the storage of policy "default" (so every table created without
// a storage_policy setting lands on it) and of the temporary data. The
// keys appear only as from_env references (KeyEnvName): the file holds no
// secret. policy names the storage policy ("default" for the embedded
// engine; a server may keep its default and name another).
func StorageConfigXML(plainPath string, e *Encryption, policy string) ([]byte, error) {
	if err := e.Validate(); err != nil {
		return nil, err
	}
	if e == nil {
		return nil, errors.New("no encryption configured")
	}
	if !filepath.IsAbs(plainPath) || strings.ContainsAny(plainPath, "<>&\"'") {
		return nil, fmt.Errorf("disk path %q must be absolute and free of XML markup characters", plainPath)
	}
	if !validPolicyName(policy) {
		return nil, fmt.Errorf("storage policy %q must match [A-Za-z_][A-Za-z0-9_]*", policy)
	}
	if !strings.HasSuffix(plainPath, "/") {
		plainPath += "/"
	}
	var b bytes.Buffer
	b.WriteString("<clickhouse>\n  <storage_configuration>\n    <disks>\n")
	encryptedDisksXML(&b, plainPath, e)
	b.WriteString("    </disks>\n")
	policyXML(&b, policy)
	b.WriteString("  </storage_configuration>\n")
	fmt.Fprintf(&b, "  <tmp_policy>%s</tmp_policy>\n</clickhouse>\n", policy)
	return b.Bytes(), nil
}

// encryptedDisksXML writes the plain disk at plainPath and the encrypted
// disk over it, with e's keys as from_env references.
func encryptedDisksXML(b *bytes.Buffer, plainPath string, e *Encryption) {
	fmt.Fprintf(b, "      <%s>\n        <type>local</type>\n        <path>%s</path>\n      </%s>\n", plainDiskName, plainPath, plainDiskName)
	encryptedDiskXML(b, encryptedDiskName, plainDiskName, "data/", e, KeyEnvName)
}

// encryptedDiskXML writes one encrypted disk named name over the disk
// under, at path (relative to it, "" for its root), with e's keys read
// from the environment variables envName names.
func encryptedDiskXML(b *bytes.Buffer, name, under, path string, e *Encryption, envName func(uint64) string) {
	ids := make([]uint64, 0, len(e.Keys))
	for _, k := range e.Keys {
		ids = append(ids, k.ID)
	}
	slices.Sort(ids)
	fmt.Fprintf(b, "      <%s>\n        <type>encrypted</type>\n        <disk>%s</disk>\n", name, under)
	if path != "" {
		fmt.Fprintf(b, "        <path>%s</path>\n", path)
	}
	b.WriteString("        <algorithm>AES_256_CTR</algorithm>\n")
	for _, id := range ids {
		fmt.Fprintf(b, "        <key_hex id=\"%d\" from_env=\"%s\"></key_hex>\n", id, envName(id))
	}
	fmt.Fprintf(b, "        <current_key_id>%d</current_key_id>\n      </%s>\n", e.CurrentKeyID, name)
}

// policyXML writes the storage policy that puts tables on the encrypted disk.
func policyXML(b *bytes.Buffer, policy string) {
	fmt.Fprintf(b, "    <policies>\n      <%s>\n        <volumes>\n          <main>\n            <disk>%s</disk>\n          </main>\n        </volumes>\n      </%s>\n    </policies>\n", policy, encryptedDiskName, policy)
}

func validPolicyName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i, r := range s {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// keyFingerprint is the engine's fingerprint of a key, written into the
// header of every encrypted file: SipHash-128 (ClickHouse's variant) keyed
// with the constants "ChEncryp" and "tedDiskF".
func keyFingerprint(key []byte) [16]byte {
	return sipHash128Keyed(0x4368456E63727970, 0x7465644469736B46, key)
}

// sipHash128Keyed is ClickHouse's sipHash128Keyed: SipHash-2-4 rounds with
// its own 128-bit finalisation (v2 ^= 0xff, result v0^v1 then v2^v3, both
// little-endian). Checked against the engine in the tests.
func sipHash128Keyed(k0, k1 uint64, data []byte) [16]byte {
	v0 := 0x736f6d6570736575 ^ k0
	v1 := 0x646f72616e646f6d ^ k1
	v2 := 0x6c7967656e657261 ^ k0
	v3 := 0x7465646279746573 ^ k1
	round := func() {
		v0 += v1
		v1 = bits.RotateLeft64(v1, 13)
		v1 ^= v0
		v0 = bits.RotateLeft64(v0, 32)
		v2 += v3
		v3 = bits.RotateLeft64(v3, 16)
		v3 ^= v2
		v0 += v3
		v3 = bits.RotateLeft64(v3, 21)
		v3 ^= v0
		v2 += v1
		v1 = bits.RotateLeft64(v1, 17)
		v1 ^= v2
		v2 = bits.RotateLeft64(v2, 32)
	}
	n := len(data)
	for len(data) >= 8 {
		m := binary.LittleEndian.Uint64(data)
		v3 ^= m
		round()
		round()
		v0 ^= m
		data = data[8:]
	}
	var last [8]byte
	copy(last[:], data)
	last[7] = byte(n)
	m := binary.LittleEndian.Uint64(last[:])
	v3 ^= m
	round()
	round()
	v0 ^= m
	v2 ^= 0xff
	round()
	round()
	round()
	round()
	var out [16]byte
	binary.LittleEndian.PutUint64(out[:8], v0^v1)
	binary.LittleEndian.PutUint64(out[8:], v2^v3)
	return out
}

// encHeader is the 64-byte header that starts every file of an encrypted
// disk: "ENC", version (2), algorithm (2 = AES_256_CTR), the key's
// fingerprint, the initialisation vector, zero padding.
type encHeader struct {
	version     uint16
	algorithm   uint16
	fingerprint [16]byte
	iv          [16]byte
}

const (
	encHeaderSize   = 64
	encVersion      = 2
	encAlgAES256CTR = 2
)

func parseEncHeader(b []byte) (encHeader, bool) {
	var h encHeader
	if len(b) < encHeaderSize || string(b[:3]) != "ENC" {
		return h, false
	}
	h.version = binary.LittleEndian.Uint16(b[3:5])
	h.algorithm = binary.LittleEndian.Uint16(b[5:7])
	copy(h.fingerprint[:], b[7:23])
	copy(h.iv[:], b[23:39])
	return h, true
}

func (h encHeader) bytes() []byte {
	b := make([]byte, encHeaderSize)
	copy(b, "ENC")
	binary.LittleEndian.PutUint16(b[3:5], h.version)
	binary.LittleEndian.PutUint16(b[5:7], h.algorithm)
	copy(b[7:23], h.fingerprint[:])
	copy(b[23:39], h.iv[:])
	return b
}

// readEncHeader reads the header of one file; ok is false for a file that
// does not start with one (too short or another signature).
func readEncHeader(path string) (encHeader, bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return encHeader{}, false, err
	}
	defer f.Close()
	b := make([]byte, encHeaderSize)
	if _, err := io.ReadFull(f, b); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return encHeader{}, false, nil
		}
		return encHeader{}, false, err
	}
	h, ok := parseEncHeader(b)
	return h, ok, nil
}

// keyRegistry records which fingerprint each key id had when it was last
// configured, so that a start with a different key under a known id, or
// without an id that files still need, names the id. A fingerprint is no
// secret: the engine writes it into every file's header.
type keyRegistry struct {
	Keys []registeredKey `json:"keys"`
}

type registeredKey struct {
	ID          uint64 `json:"id"`
	Fingerprint string `json:"fingerprint"`
}

func readKeyRegistry(dir string) (keyRegistry, error) {
	var r keyRegistry
	data, err := os.ReadFile(filepath.Join(dir, keyRegistryFile))
	if errors.Is(err, fs.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return r, fmt.Errorf("%s: %w", keyRegistryFile, err)
	}
	return r, nil
}

// idOf returns the registered id of a fingerprint, or 0.
func (r keyRegistry) idOf(fp [16]byte) uint64 {
	h := hex.EncodeToString(fp[:])
	for _, k := range r.Keys {
		if k.Fingerprint == h {
			return k.ID
		}
	}
	return 0
}

// writeKeyRegistry adds the configured keys to the registry (an id keeps
// its newest fingerprint) and writes it atomically.
func writeKeyRegistry(dir string, r keyRegistry, e *Encryption) error {
	for _, k := range e.Keys {
		fp := keyFingerprint(k.Key)
		h := hex.EncodeToString(fp[:])
		i := slices.IndexFunc(r.Keys, func(x registeredKey) bool { return x.ID == k.ID })
		if i < 0 {
			r.Keys = append(r.Keys, registeredKey{ID: k.ID, Fingerprint: h})
		} else {
			r.Keys[i].Fingerprint = h
		}
	}
	slices.SortFunc(r.Keys, func(a, b registeredKey) int { return int(a.ID) - int(b.ID) })
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, keyRegistryFile), append(data, '\n'), 0o600)
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}

// hasPlainTables reports whether the engine's default disk holds table
// data (a format_version.txt under store/ or data/): a directory created
// with encryption off.
func hasPlainTables(dir string) (bool, error) {
	found := false
	for _, sub := range []string{"store", "data"} {
		err := filepath.WalkDir(filepath.Join(dir, sub), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			if !d.IsDir() && d.Name() == "format_version.txt" {
				found = true
				return fs.SkipAll
			}
			return nil
		})
		if err != nil {
			return false, err
		}
		if found {
			return true, nil
		}
	}
	return false, nil
}

// hasEncryptedFiles reports whether the encrypted disk holds any file.
func hasEncryptedFiles(dir string) (bool, error) {
	found := false
	err := filepath.WalkDir(filepath.Join(dir, encryptedDataDir), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.Type().IsRegular() {
			found = true
			return fs.SkipAll
		}
		return nil
	})
	return found, err
}

// checkDataDir decides, before the engine boots, whether it may boot on
// dir with e (nil: encryption off). It reads file headers only and changes
// nothing; every refusal wraps ErrEncryptionKey and says what to do.
func checkDataDir(dir string, e *Encryption) error {
	if e == nil {
		enc, err := hasEncryptedFiles(dir)
		if err != nil {
			return fmt.Errorf("store: check data directory: %w", err)
		}
		if enc {
			return fmt.Errorf("%w: %s holds encrypted tables but encryption is not configured; configure clickhouse.encryption with the keys that wrote them", ErrEncryptionKey, dir)
		}
		return nil
	}
	plain, err := hasPlainTables(dir)
	if err != nil {
		return fmt.Errorf("store: check data directory: %w", err)
	}
	if plain {
		return fmt.Errorf("%w: %s holds tables written without encryption; run `meterline encryption migrate` (with the server stopped) to encrypt them, start on a new data directory, or turn encryption off", ErrEncryptionKey, dir)
	}
	reg, err := readKeyRegistry(dir)
	if err != nil {
		return fmt.Errorf("store: check data directory: %w", err)
	}
	st, err := scanEncrypted(dir, e)
	if err != nil {
		return fmt.Errorf("store: check data directory: %w", err)
	}
	var errs []error
	for _, u := range st.Unknown {
		id := reg.idOf(u.Fingerprint)
		switch {
		case id != 0 && e.key(id) != nil:
			// A key id that files need has another key now. (An id whose
			// old key no file uses may be given a new key.)
			errs = append(errs, fmt.Errorf("key id %d is not the key that wrote %d file(s) (%d part(s)) under id %d (wrong key?)", id, u.Files, u.Parts, id))
		case id != 0:
			errs = append(errs, fmt.Errorf("%d file(s) (%d part(s)) need key id %d, which is not configured; configure it again (run `meterline encryption rotate` before removing a key)", u.Files, u.Parts, id))
		default:
			errs = append(errs, fmt.Errorf("%d file(s) (%d part(s)) were written with a key that is not configured (fingerprint %x)", u.Files, u.Parts, u.Fingerprint))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %s: %w", ErrEncryptionKey, dir, errors.Join(errs...))
	}
	return nil
}
