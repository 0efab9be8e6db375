package store

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// EncryptionStatus is what the encrypted disk of a data directory holds,
// by key. It is read from the files' headers, without the engine.
type EncryptionStatus struct {
	// DataDir is the engine's data directory.
	DataDir string
	// CurrentKeyID is the key new parts are written with.
	CurrentKeyID uint64
	// Keys has one entry per configured key, in id order, also for keys
	// no file uses any more (those may be removed).
	Keys []KeyUsage
	// Unknown lists files written with keys that are not configured.
	Unknown []UnknownKeyUsage
	// Unencrypted counts files on the encrypted disk without an
	// encryption header (expected: 0).
	Unencrypted int
}

// KeyUsage counts what one key encrypts.
type KeyUsage struct {
	ID      uint64
	Current bool
	// Files and Bytes count every file (parts, and the tables' own small
	// files such as format_version.txt and mutation logs); Parts counts
	// the part directories among them.
	Files int
	Parts int
	Bytes int64
}

// UnknownKeyUsage counts the files of a key that is not configured.
type UnknownKeyUsage struct {
	Fingerprint [16]byte
	Files       int
	Parts       int
	Bytes       int64
}

// encFile is one file of the encrypted disk.
type encFile struct {
	path   string
	size   int64
	part   string // part directory relative to the disk, "" for table files
	header encHeader
	ok     bool
}

// walkEncrypted lists the regular files of the encrypted disk with their
// headers. Leftover rotation temporaries are skipped.
func walkEncrypted(dir string) ([]encFile, error) {
	root := filepath.Join(dir, encryptedDataDir)
	var out []encFile
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.Type().IsRegular() || strings.HasSuffix(p, rotateTempSuffix) {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) { // removed by a merge meanwhile
				return nil
			}
			return err
		}
		if info.Size() == 0 {
			// The engine leaves empty files unencrypted (no header):
			// they hold nothing.
			return nil
		}
		h, ok, err := readEncHeader(p)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out = append(out, encFile{path: p, size: info.Size(), part: partOf(rel), header: h, ok: ok})
		return nil
	})
	return out, err
}

// partOf names the part directory of a file of the encrypted disk:
// store/<xxx>/<uuid>/<part>/<file> (and detached/<part>/<file>); files
// of the table itself (format_version.txt, mutations, deduplication logs)
// belong to no part.
func partOf(rel string) string {
	c := strings.Split(filepath.ToSlash(rel), "/")
	if len(c) < 5 || c[0] != "store" {
		return ""
	}
	switch c[3] {
	case "deduplication_logs":
		return ""
	case "detached":
		if len(c) >= 6 {
			return strings.Join(c[:5], "/")
		}
		return ""
	}
	return strings.Join(c[:4], "/")
}

// scanEncrypted counts the encrypted disk's files by key.
func scanEncrypted(dir string, e *Encryption) (EncryptionStatus, error) {
	st := EncryptionStatus{DataDir: dir, CurrentKeyID: e.CurrentKeyID}
	files, err := walkEncrypted(dir)
	if err != nil {
		return st, err
	}
	byFP := e.byFingerprint()
	usage := map[uint64]*KeyUsage{}
	for _, k := range e.Keys {
		usage[k.ID] = &KeyUsage{ID: k.ID, Current: k.ID == e.CurrentKeyID}
	}
	unknown := map[[16]byte]*UnknownKeyUsage{}
	parts := map[string]bool{}
	for _, f := range files {
		if !f.ok {
			st.Unencrypted++
			continue
		}
		id, known := byFP[f.header.fingerprint]
		partKey := fmt.Sprintf("%x/%s", f.header.fingerprint, f.part)
		newPart := f.part != "" && !parts[partKey]
		parts[partKey] = true
		if known {
			u := usage[id]
			u.Files++
			u.Bytes += f.size
			if newPart {
				u.Parts++
			}
			continue
		}
		u := unknown[f.header.fingerprint]
		if u == nil {
			u = &UnknownKeyUsage{Fingerprint: f.header.fingerprint}
			unknown[f.header.fingerprint] = u
		}
		u.Files++
		u.Bytes += f.size
		if newPart {
			u.Parts++
		}
	}
	for _, k := range e.Keys {
		st.Keys = append(st.Keys, *usage[k.ID])
	}
	slices.SortFunc(st.Keys, func(a, b KeyUsage) int { return int(a.ID) - int(b.ID) })
	for _, u := range unknown {
		st.Unknown = append(st.Unknown, *u)
	}
	slices.SortFunc(st.Unknown, func(a, b UnknownKeyUsage) int { return b.Files - a.Files })
	return st, nil
}

// ReadEncryptionStatus reports which keys the files of the data directory
// dir use. It reads headers only, so it may run while the engine runs (a
// merge in flight may then be counted half done).
func ReadEncryptionStatus(dir string, e *Encryption) (EncryptionStatus, error) {
	if err := e.Validate(); err != nil {
		return EncryptionStatus{}, fmt.Errorf("store: encryption: %w", err)
	}
	if e == nil {
		return EncryptionStatus{}, errors.New("store: encryption is not configured")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return EncryptionStatus{}, err
	}
	return scanEncrypted(abs, e)
}

// RotateProgress is reported after each re-encrypted file.
type RotateProgress struct {
	Files, TotalFiles int
	Bytes, TotalBytes int64
}

// RotateResult says what a rotation did and what is left.
type RotateResult struct {
	// Files and Bytes were re-encrypted by this run.
	Files int
	Bytes int64
	// Status is the encrypted disk afterwards.
	Status EncryptionStatus
}

// RotateKeys re-encrypts, with the current key, every file of dir's
// encrypted disk that an older key wrote: each file is decrypted and
// written again under a fresh initialisation vector to a temporary file
// beside it, synced, and renamed over the original, so a rotation that is
// stopped at any point leaves every file readable and a second run
// continues where it stopped. The engine must not run on dir meanwhile
// (its lock is taken; ErrUnavailable when it is held). Files of keys that
// are not configured stop the rotation before anything changes.
func RotateKeys(ctx context.Context, dir string, e *Encryption, progress func(RotateProgress)) (RotateResult, error) {
	var res RotateResult
	dir, unlock, err := lockForRewrite(dir, e)
	if err != nil {
		return res, err
	}
	defer unlock()
	if err := checkDataDir(dir, e); err != nil {
		return res, err
	}
	if err := removeRotateTemps(dir); err != nil {
		return res, err
	}
	files, err := walkEncrypted(dir)
	if err != nil {
		return res, err
	}
	cur := e.key(e.CurrentKeyID)
	curFP := keyFingerprint(cur)
	byFP := e.byFingerprint()
	var todo []encFile
	var total int64
	for _, f := range files {
		if f.ok && f.header.fingerprint != curFP {
			todo = append(todo, f)
			total += f.size
		}
	}
	for i, f := range todo {
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("store: rotate: stopped after %d of %d files (run it again to continue): %w", res.Files, len(todo), err)
		}
		old := e.key(byFP[f.header.fingerprint])
		if err := reencryptFile(f, old, cur, curFP); err != nil {
			return res, fmt.Errorf("store: rotate %s: %w (run it again to continue)", f.path, err)
		}
		res.Files++
		res.Bytes += f.size
		if progress != nil {
			progress(RotateProgress{Files: i + 1, TotalFiles: len(todo), Bytes: res.Bytes, TotalBytes: total})
		}
	}
	if err := writeKeyRegistryFor(dir, e); err != nil {
		return res, err
	}
	res.Status, err = scanEncrypted(dir, e)
	return res, err
}

func writeKeyRegistryFor(dir string, e *Encryption) error {
	reg, err := readKeyRegistry(dir)
	if err != nil {
		return err
	}
	return writeKeyRegistry(dir, reg, e)
}

// removeRotateTemps deletes the temporaries of a rotation that was killed.
func removeRotateTemps(dir string) error {
	return filepath.WalkDir(filepath.Join(dir, encryptedDataDir), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.Type().IsRegular() && strings.HasSuffix(p, rotateTempSuffix) {
			return os.Remove(p)
		}
		return nil
	})
}

// reencryptFile rewrites one file under newKey. The content is streamed:
// AES-CTR from the header's IV, as the engine writes it.
func reencryptFile(f encFile, oldKey, newKey []byte, newFP [16]byte) error {
	if f.header.algorithm != encAlgAES256CTR || f.header.version != encVersion {
		return fmt.Errorf("unsupported encryption header (version %d, algorithm %d)", f.header.version, f.header.algorithm)
	}
	if oldKey == nil {
		return errors.New("its key is not configured")
	}
	src, err := os.Open(f.path)
	if err != nil {
		return err
	}
	defer src.Close()
	info, err := src.Stat()
	if err != nil {
		return err
	}
	if _, err := src.Seek(encHeaderSize, io.SeekStart); err != nil {
		return err
	}
	ob, err := aes.NewCipher(oldKey)
	if err != nil {
		return err
	}
	nb, err := aes.NewCipher(newKey)
	if err != nil {
		return err
	}
	h := encHeader{version: encVersion, algorithm: encAlgAES256CTR, fingerprint: newFP}
	if _, err := rand.Read(h.iv[:]); err != nil {
		return err
	}
	dec := cipher.NewCTR(ob, f.header.iv[:])
	enc := cipher.NewCTR(nb, h.iv[:])
	tmp := f.path + rotateTempSuffix
	dst, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, info.Mode().Perm())
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			dst.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := dst.Write(h.bytes()); err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			dec.XORKeyStream(buf[:n], buf[:n])
			enc.XORKeyStream(buf[:n], buf[:n])
			if _, err := dst.Write(buf[:n]); err != nil {
				return err
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	if err := dst.Sync(); err != nil {
		return err
	}
	if err := dst.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, f.path); err != nil {
		return err
	}
	ok = true
	if d, err := os.Open(filepath.Dir(f.path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// lockForRewrite is what rotate and migrate do first: check the keys, make
// dir absolute and take the engine's lock on it.
func lockForRewrite(dir string, e *Encryption) (string, func(), error) {
	if e == nil {
		return "", nil, errors.New("store: encryption is not configured")
	}
	if err := e.Validate(); err != nil {
		return "", nil, fmt.Errorf("store: encryption: %w", err)
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", nil, err
	}
	unlock, err := lockDataDir(dir)
	if err != nil {
		return "", nil, err
	}
	return dir, unlock, nil
}
