//go:build !(linux || darwin)

package store

import (
	"context"
	"fmt"
	"log/slog"
)

// openEmbedded is unavailable where purego cannot load libchdb.
func openEmbedded(context.Context, Config, *slog.Logger) (Conn, error) {
	return nil, fmt.Errorf("%w: the embedded engine is not supported on this platform", ErrUnavailable)
}
