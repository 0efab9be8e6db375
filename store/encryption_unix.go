//go:build linux || darwin

package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// lockDataDir takes the lock the engine takes on its data directory (an
// exclusive flock of the "status" file), so that the engine cannot boot
// on dir while the caller rewrites files, and the caller cannot start
// while the engine runs.
func lockDataDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, "status"), os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("store: lock data directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: data directory %s is in use by a running engine; stop it first", ErrUnavailable, dir)
		}
		return nil, fmt.Errorf("store: lock data directory: %w", err)
	}
	return func() {
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
}

// checkNotRunning fails when an engine holds dir's lock, without creating
// or changing anything in dir (a stopped engine leaves no lock file).
func checkNotRunning(dir string) error {
	f, err := os.OpenFile(filepath.Join(dir, "status"), os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("store: lock data directory: %w", err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("%w: data directory %s is in use by a running engine; stop it first", ErrUnavailable, dir)
		}
		return fmt.Errorf("store: lock data directory: %w", err)
	}
	return unix.Flock(int(f.Fd()), unix.LOCK_UN)
}
