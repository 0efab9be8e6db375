package store

import (
	"bytes"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// BackupStore is the directory that holds the backups of the embedded
// engine, given to it as a disk at start-up (BACKUP and RESTORE only reach
// disks that the engine's configuration allows). The engine writes each
// backup onto that disk, encrypted when a key is set: the engine built as a
// library has no zip support, so ClickHouse's own archive passwords are not
// available, and an encrypted disk (AES-256-CTR, the same as encryption at
// rest) takes their place.
type BackupStore struct {
	// Dir is the backups directory. It must lie outside the data
	// directory, so that losing one does not lose the other.
	Dir string
	// Key, when set, encrypts the backups with this 32-byte key, derived
	// from a password by OpenPasswordKey.
	Key []byte
	// AtRestKeys encrypts the backups with the keys of encryption at rest
	// (Config.Encryption, current key for writing) when Key is not set.
	AtRestKeys bool
}

// Names of the backup disks in the engine configuration: the directory as
// a local disk, and the encrypted disk over it when backups are encrypted.
// Backups are always written to and read from backupDiskName.
const (
	backupRootDiskName = "meterline_backup_root"
	backupDiskName     = "meterline_backup"
	backupKeyEnv       = "METERLINE_CLICKHOUSE_BACKUP_KEY_1"
	// passwordKeyFile holds the salt of the password's key derivation and
	// the fingerprint of the derived key (no secret).
	passwordKeyFile   = "backup-key.json"
	passwordKDFRounds = 600_000
)

// Backup encryption modes, as a manifest records them.
const (
	BackupPlain      = "none"
	BackupPassword   = "password"
	BackupAtRestKeys = "at-rest-keys"
)

// ErrBackupKey marks a backup that the configured password or keys cannot
// read (wrong password, a key that is not configured). Nothing was
// changed when it is returned.
var ErrBackupKey = errors.New("backup key does not fit")

// mode says how the backups of s are encrypted.
func (s *BackupStore) mode() string {
	switch {
	case s == nil:
		return ""
	case len(s.Key) > 0:
		return BackupPassword
	case s.AtRestKeys:
		return BackupAtRestKeys
	}
	return BackupPlain
}

// id identifies the configuration s boots the engine with.
func (s *BackupStore) id() string {
	if s == nil {
		return ""
	}
	fp := keyFingerprint(s.Key)
	return s.Dir + "\x00" + s.mode() + "\x00" + hex.EncodeToString(fp[:])
}

func (s *BackupStore) validate() error {
	if s == nil {
		return nil
	}
	if s.Dir == "" {
		return errors.New("no directory")
	}
	abs, err := filepath.Abs(s.Dir)
	if err != nil {
		return err
	}
	s.Dir = abs
	if strings.ContainsAny(abs, "<>&\"'") {
		return fmt.Errorf("directory %q must be free of XML markup characters", abs)
	}
	if len(s.Key) > 0 && len(s.Key) != 32 {
		return fmt.Errorf("key has %d bytes; AES-256 needs 32", len(s.Key))
	}
	return nil
}

// checkOutside refuses a backups directory inside the data directory (or
// the reverse).
func (s *BackupStore) checkOutside(dataDir string) error {
	if within(s.Dir, dataDir) || within(dataDir, s.Dir) {
		return fmt.Errorf("store: backups directory %s and data directory %s must not contain each other", s.Dir, dataDir)
	}
	return nil
}

func within(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// engineConfigXML renders the configuration the embedded engine boots
// with: the encrypted disk of encryption at rest (enc) and the backup
// disks (backup), either or both.
func engineConfigXML(path string, enc *Encryption, backup *BackupStore) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("<clickhouse>\n  <storage_configuration>\n    <disks>\n")
	if enc != nil {
		if err := removeRotateTemps(path); err != nil {
			return nil, fmt.Errorf("store: encryption: %w", err)
		}
		if err := os.MkdirAll(filepath.Join(path, encryptedDataDir), 0o750); err != nil {
			return nil, fmt.Errorf("store: encryption: %w", err)
		}
		encryptedDisksXML(&b, filepath.Join(path, encryptedRoot)+"/", enc)
	}
	if backup != nil {
		if err := backup.checkOutside(path); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(backup.Dir, 0o750); err != nil {
			return nil, fmt.Errorf("store: backups directory: %w", err)
		}
		root := backupDiskName
		if backup.mode() != BackupPlain {
			root = backupRootDiskName
		}
		fmt.Fprintf(&b, "      <%s>\n        <type>local</type>\n        <path>%s/</path>\n      </%s>\n", root, backup.Dir, root)
		switch backup.mode() {
		case BackupPassword:
			key := &Encryption{Keys: []EncryptionKey{{ID: 1, Key: backup.Key}}, CurrentKeyID: 1}
			encryptedDiskXML(&b, backupDiskName, root, "", key, func(uint64) string { return backupKeyEnv })
		case BackupAtRestKeys:
			if enc == nil {
				return nil, errors.New("store: backups encrypted with the keys of encryption at rest, which is not configured")
			}
			encryptedDiskXML(&b, backupDiskName, root, "", enc, KeyEnvName)
		}
	}
	b.WriteString("    </disks>\n")
	if enc != nil {
		policyXML(&b, encryptedPolicy)
	}
	b.WriteString("  </storage_configuration>\n")
	if enc != nil {
		fmt.Fprintf(&b, "  <tmp_policy>%s</tmp_policy>\n", encryptedPolicy)
	}
	if backup != nil {
		fmt.Fprintf(&b, "  <backups>\n    <allowed_disk>%s</allowed_disk>\n  </backups>\n", backupDiskName)
	}
	b.WriteString("</clickhouse>\n")
	return b.Bytes(), nil
}

// envKey is one key the engine reads from its environment.
type envKey struct {
	name string
	key  []byte
}

// bootKeys lists the keys the engine reads from its environment at boot.
func bootKeys(enc *Encryption, backup *BackupStore) []envKey {
	var out []envKey
	if enc != nil {
		for _, k := range enc.Keys {
			out = append(out, envKey{name: KeyEnvName(k.ID), key: k.Key})
		}
	}
	if backup.mode() == BackupPassword {
		out = append(out, envKey{name: backupKeyEnv, key: backup.Key})
	}
	return out
}

// passwordKey is the record of passwordKeyFile.
type passwordKey struct {
	KDF         string `json:"kdf"`
	Rounds      int    `json:"rounds"`
	Salt        string `json:"salt"`
	Fingerprint string `json:"fingerprint"`
}

// OpenPasswordKey derives the backup key of dir from password
// (PBKDF2-SHA-256 with the directory's salt, created on first use). A
// password that is not the one the directory's backups were written with
// fails with ErrBackupKey: every backup of a directory has one password.
func OpenPasswordKey(dir, password string) ([]byte, error) {
	if password == "" {
		return nil, errors.New("store: backup password is empty")
	}
	if len(password) > 1024 {
		return nil, errors.New("store: backup password is longer than 1024 bytes")
	}
	path := filepath.Join(dir, passwordKeyFile)
	var rec passwordKey
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		salt := make([]byte, 16)
		if _, err := rand.Read(salt); err != nil {
			return nil, err
		}
		rec = passwordKey{KDF: "pbkdf2-sha256", Rounds: passwordKDFRounds, Salt: hex.EncodeToString(salt)}
	case err != nil:
		return nil, fmt.Errorf("store: backup password: %w", err)
	default:
		if len(data) > 4096 || json.Unmarshal(data, &rec) != nil || rec.KDF != "pbkdf2-sha256" || rec.Rounds < 1000 || rec.Rounds > 10_000_000 {
			return nil, fmt.Errorf("store: %s is not a backup key record; restore it from a copy of the backups directory", path)
		}
	}
	salt, err := hex.DecodeString(rec.Salt)
	if err != nil || len(salt) < 16 {
		return nil, fmt.Errorf("store: %s: bad salt", path)
	}
	key, err := pbkdf2.Key(sha256.New, password, salt, rec.Rounds, 32)
	if err != nil {
		return nil, err
	}
	fp := keyFingerprint(key)
	got := hex.EncodeToString(fp[:])
	if rec.Fingerprint != "" && rec.Fingerprint != got {
		return nil, fmt.Errorf("%w: the backup password is not the one the backups in %s were written with (wrong password?)", ErrBackupKey, dir)
	}
	if rec.Fingerprint == "" {
		rec.Fingerprint = got
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, err
		}
		out, _ := json.MarshalIndent(rec, "", "  ")
		if err := writeFileAtomic(path, append(out, '\n'), 0o600); err != nil {
			return nil, fmt.Errorf("store: backup password: %w", err)
		}
	}
	return key, nil
}
