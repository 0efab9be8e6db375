package store

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// migrateTempSuffix marks a table directory being encrypted.
const migrateTempSuffix = ".meterline-migrate.tmp"

// MigrateResult says what EncryptPlainData did.
type MigrateResult struct {
	// Tables, Files and Bytes were encrypted by this run.
	Tables, Files int
	Bytes         int64
}

// EncryptPlainData moves every table of a data directory written without
// encryption onto the encrypted disk, encrypting each file with the
// current key: table by table, into a temporary directory that is renamed
// into place once every file is synced, after which the plain directory
// is removed and the database's link to the table repointed. A run that is
// stopped leaves each table either plain or encrypted, and a second run
// continues. The engine must not run (its lock is taken). The plain files'
// blocks are freed, not overwritten: on SSDs and copy-on-write file systems
// their content may stay readable on the device, so migrate onto an
// encrypted or fresh volume where that matters.
func EncryptPlainData(ctx context.Context, dir string, e *Encryption, progress func(RotateProgress)) (MigrateResult, error) {
	var res MigrateResult
	dir, unlock, err := lockForRewrite(dir, e)
	if err != nil {
		return res, err
	}
	defer unlock()
	tables, err := plainTableDirs(dir)
	if err != nil {
		return res, err
	}
	var total int64
	var totalFiles int
	for _, t := range tables {
		_ = filepath.WalkDir(filepath.Join(dir, t), func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				if info, err := d.Info(); err == nil {
					total += info.Size()
					totalFiles++
				}
			}
			return nil
		})
	}
	key := e.key(e.CurrentKeyID)
	fp := keyFingerprint(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		return res, err
	}
	for _, t := range tables {
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("store: encrypt data: stopped after %d of %d tables (run it again to continue): %w", res.Tables, len(tables), err)
		}
		src := filepath.Join(dir, t)
		dst := filepath.Join(dir, encryptedDataDir, t)
		if _, err := os.Stat(dst); err == nil {
			// Encrypted by a run that stopped before removing the plain copy.
			if err := os.RemoveAll(src); err != nil {
				return res, err
			}
			continue
		}
		tmp := dst + migrateTempSuffix
		if err := os.RemoveAll(tmp); err != nil {
			return res, err
		}
		err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(src, p)
			out := filepath.Join(tmp, rel)
			info, err := d.Info()
			if err != nil {
				return err
			}
			switch {
			case d.IsDir():
				return os.MkdirAll(out, info.Mode().Perm()|0o700)
			case d.Type().IsRegular():
				if err := encryptFile(p, out, info, block, fp); err != nil {
					return err
				}
				res.Files++
				res.Bytes += info.Size()
				if progress != nil {
					progress(RotateProgress{Files: res.Files, TotalFiles: totalFiles, Bytes: res.Bytes, TotalBytes: total})
				}
				return nil
			default:
				return fmt.Errorf("%s is neither a file nor a directory; move it away and run again", p)
			}
		})
		if err != nil {
			_ = os.RemoveAll(tmp)
			return res, fmt.Errorf("store: encrypt table directory %s: %w", src, err)
		}
		if err := syncDir(filepath.Dir(tmp)); err != nil {
			return res, err
		}
		if err := os.Rename(tmp, dst); err != nil {
			return res, err
		}
		if err := repointTableLinks(dir, t); err != nil {
			return res, err
		}
		if err := os.RemoveAll(src); err != nil {
			return res, err
		}
		res.Tables++
	}
	if err := writeKeyRegistryFor(dir, e); err != nil {
		return res, err
	}
	return res, nil
}

// plainTableDirs lists the table data directories (store/<xxx>/<uuid>
// holding format_version.txt) of the engine's own disk. Tables of Ordinary
// databases (data/<db>/<table> directories) are refused.
func plainTableDirs(dir string) ([]string, error) {
	var out []string
	matches, err := filepath.Glob(filepath.Join(dir, "store", "*", "*", "format_version.txt"))
	if err != nil {
		return nil, err
	}
	for _, m := range matches {
		rel, _ := filepath.Rel(dir, filepath.Dir(m))
		if strings.HasSuffix(rel, migrateTempSuffix) {
			continue
		}
		out = append(out, rel)
	}
	ordinary, _ := filepath.Glob(filepath.Join(dir, "data", "*", "*", "format_version.txt"))
	for _, m := range ordinary {
		if st, err := os.Lstat(filepath.Dir(m)); err == nil && st.IsDir() {
			return nil, fmt.Errorf("store: %s is a table of an Ordinary database, which cannot be moved to the encrypted disk", filepath.Dir(m))
		}
	}
	return out, nil
}

// repointTableLinks points the databases' links (data/<db>/<table>) that
// named the plain table directory rel at its encrypted copy.
func repointTableLinks(dir, rel string) error {
	links, _ := filepath.Glob(filepath.Join(dir, "data", "*", "*"))
	for _, l := range links {
		target, err := os.Readlink(l)
		if err != nil {
			continue
		}
		if filepath.Clean(filepath.Join(filepath.Dir(l), target)) != filepath.Join(dir, rel) {
			continue
		}
		tmp := l + migrateTempSuffix
		_ = os.Remove(tmp)
		if err := os.Symlink(filepath.Join("..", "..", encryptedDataDir, rel), tmp); err != nil {
			return err
		}
		if err := os.Rename(tmp, l); err != nil {
			return err
		}
	}
	return nil
}

// encryptFile writes src encrypted to dst: the engine's header, then
// AES-256-CTR from a fresh IV. An empty file stays empty, as the engine
// leaves it.
func encryptFile(src, dst string, info fs.FileInfo, block cipher.Block, fp [16]byte) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, info.Mode().Perm())
	if err != nil {
		return err
	}
	defer out.Close()
	if info.Size() > 0 {
		h := encHeader{version: encVersion, algorithm: encAlgAES256CTR, fingerprint: fp}
		if _, err := rand.Read(h.iv[:]); err != nil {
			return err
		}
		if _, err := out.Write(h.bytes()); err != nil {
			return err
		}
		stream := cipher.NewCTR(block, h.iv[:])
		buf := make([]byte, 1<<20)
		for {
			n, rerr := in.Read(buf)
			if n > 0 {
				stream.XORKeyStream(buf[:n], buf[:n])
				if _, err := out.Write(buf[:n]); err != nil {
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
	}
	if err := out.Sync(); err != nil {
		return err
	}
	return out.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
