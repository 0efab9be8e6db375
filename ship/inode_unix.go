//go:build unix

package ship

import (
	"io/fs"
	"syscall"
)

// fileInode identifies a file across renames, to notice rotation.
func fileInode(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Ino)
	}
	return 0
}
