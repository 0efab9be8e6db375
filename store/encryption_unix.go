//go:build linux || darwin

package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/ebitengine/purego"
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

// libc's setenv and unsetenv. The engine reads its keys with getenv, which
// sees only the C environment: os.Setenv reaches it only in cgo builds,
// so the keys are set through libc itself. They are not in Go's copy of
// the environment either, so child processes never inherit them.
var (
	libcOnce     sync.Once
	libcErr      error
	libcSetenv   func(name, value *byte, overwrite int32) int32
	libcUnsetenv func(name *byte) int32
)

func loadLibc() error {
	libcOnce.Do(func() {
		name := "libc.so.6"
		if runtime.GOOS == "darwin" {
			name = "/usr/lib/libSystem.B.dylib"
		}
		h, err := purego.Dlopen(name, purego.RTLD_NOW|purego.RTLD_GLOBAL)
		if err != nil {
			libcErr = fmt.Errorf("store: load %s for the engine's key environment: %w", name, err)
			return
		}
		purego.RegisterLibFunc(&libcSetenv, h, "setenv")
		purego.RegisterLibFunc(&libcUnsetenv, h, "unsetenv")
	})
	return libcErr
}

// envKey is one key the engine reads from its environment.
type envKey struct {
	name string
	key  []byte
}

// setKeyEnv puts the keys into the C environment as hex and returns the
// function that removes them again (and wipes the Go copies).
func setKeyEnv(keys []envKey) (func(), error) {
	if err := loadLibc(); err != nil {
		return nil, err
	}
	var names [][]byte
	clear := func() {
		for _, n := range names {
			libcUnsetenv(&n[0])
		}
	}
	for _, k := range keys {
		n := cbytes([]byte(k.name))
		v := make([]byte, 2*len(k.key)+1)
		const digits = "0123456789abcdef"
		for i, b := range k.key {
			v[2*i], v[2*i+1] = digits[b>>4], digits[b&15]
		}
		rc := libcSetenv(&n[0], &v[0], 1)
		for i := range v {
			v[i] = 0
		}
		if rc != 0 {
			clear()
			return nil, fmt.Errorf("store: setenv %s failed", k.name)
		}
		names = append(names, n)
	}
	return clear, nil
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
