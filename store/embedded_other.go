//go:build !(linux || darwin) || noembedded

package store

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
)

// EmbeddedBuilt tells whether this binary carries the embedded engine. A
// build with the tag noembedded (the static binary of the container image,
// built with CGO_ENABLED=0) leaves it out: it loads no shared library at
// all, so it runs on an image without a C library, and talks to a
// ClickHouse server only.
const EmbeddedBuilt = false

// errNoEmbedded is the error of an embedded Open in such a binary.
// It is ErrNoLibrary (the engine cannot be had), not a fault that a retry
// could fix.
var errNoEmbedded = func() error {
	if runtime.GOOS == "linux" || runtime.GOOS == "darwin" {
		return &libError{msg: "this meterline binary was built without the embedded ClickHouse engine (build tag noembedded): set clickhouse.addr to a ClickHouse server"}
	}
	return &libError{msg: "the embedded ClickHouse engine is not supported on " + runtime.GOOS + ": set clickhouse.addr to a ClickHouse server"}
}()

// openEmbedded is unavailable where purego cannot load libchdb, or where the
// build left the engine out.
func openEmbedded(context.Context, Config, *slog.Logger) (Conn, error) {
	return nil, fmt.Errorf("store: %w", errNoEmbedded)
}

// embeddedBackupID: no Conn is embedded in such a binary.
func embeddedBackupID(Conn) (string, bool) { return "", false }
