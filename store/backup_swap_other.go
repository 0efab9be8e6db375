//go:build !linux

package store

import "errors"

// exchangeDirs would swap two directories atomically; only Linux has the
// call, so replacing a data directory is refused elsewhere.
func exchangeDirs(a, b string) error {
	return errors.New("store: replacing a data directory atomically needs Linux; restore into an empty directory and move it into place with the engine stopped")
}
