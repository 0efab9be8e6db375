//go:build !(linux || darwin)

package store

import "fmt"

func lockDataDir(string) (func(), error) {
	return nil, fmt.Errorf("%w: encryption at rest needs the embedded engine, which is not supported on this platform", ErrUnavailable)
}

func checkNotRunning(string) error {
	return fmt.Errorf("%w: the embedded engine is not supported on this platform", ErrUnavailable)
}
