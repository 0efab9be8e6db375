package limits

import (
	"context"
	"crypto/sha256"
	"log/slog"
	"time"

	"github.com/meterline/meterline/internal/filewatch"
)

// WatchFile polls the catalogue file at path every interval (default 10s
// when every <= 0) until ctx ends, and swaps a changed, valid catalogue into
// r. A change is noticed by modification time and size, and confirmed by
// the content's SHA-256, so touching the file reloads nothing. A file that
// fails to load (unreadable, too large, invalid) is logged once per
// distinct content and the previous catalogue stays in force: a typo must
// not turn every key into an unknown one.
//
// Write the file atomically (write a temporary file, then rename it over
// the old one): a poll that catches an editor half way through writing
// sees an invalid or truncated file. Such a file is usually rejected, and
// a read during which the file changed is skipped, but a truncation that
// happens to be valid YAML cannot be told apart from an intended edit.
func WatchFile(ctx context.Context, path string, r *Registry, every time.Duration, log *slog.Logger) {
	w := &watcher{path: path, reg: r, log: log}
	w.core().Run(ctx, every)
}

// watcher holds what WatchFile remembers between polls: the shared file
// watcher, applied to the catalogue.
type watcher struct {
	path string
	reg  *Registry
	log  *slog.Logger
	w    *filewatch.Watcher
}

func (w *watcher) core() *filewatch.Watcher {
	if w.w == nil {
		w.w = &filewatch.Watcher{
			Path:   w.path,
			What:   "catalogue",
			Read:   readCapped,
			Loaded: func() [sha256.Size]byte { return w.reg.Catalogue().sum },
			Apply: func(data []byte) ([]any, error) {
				c, err := ParseCatalogue(data)
				if err != nil {
					return nil, err
				}
				w.reg.Swap(c)
				return []any{"plans", len(c.Plans), "customers", len(c.Customers)}, nil
			},
			Result:    func(result string) { w.reg.reloads.WithLabelValues(result).Inc() },
			AfterPoll: func() { w.reg.polls.Add(1) },
			Log:       w.log,
		}
	}
	return w.w
}

// poll checks the file once and reloads it if its content changed.
func (w *watcher) poll() { w.core().Poll() }
