//go:build !linux

package store

// memFile is Linux-only (memfd_create).
func memFile([]byte) (string, func(), error) { return "", nil, errNoMemFile }
