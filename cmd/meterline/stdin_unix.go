//go:build unix

package main

import (
	"os"

	"golang.org/x/sys/unix"
)

// detachStdin points standard input at /dev/null. No command reads it, and
// the embedded ClickHouse engine refuses inline inserts while standard input
// holds unread data (`echo x | meterline serve` would fail every insert).
func detachStdin() {
	f, err := os.Open(os.DevNull)
	if err != nil {
		return
	}
	defer f.Close()
	_ = unix.Dup2(int(f.Fd()), 0)
}
