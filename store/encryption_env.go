//go:build (linux || darwin) && !noembedded

package store

import (
	"fmt"
	"runtime"
	"sync"

	"github.com/ebitengine/purego"
)

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
