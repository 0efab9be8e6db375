package limits

import (
	"context"
	"crypto/sha256"
	"log/slog"
	"os"
	"time"
)

// fileStamp is what a poll compares before reading the file at all.
type fileStamp struct {
	mtime time.Time
	size  int64
}

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
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if every <= 0 {
		every = 10 * time.Second
	}
	w := &watcher{path: path, reg: r, log: log}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.poll()
		}
	}
}

// watcher holds what WatchFile remembers between polls.
type watcher struct {
	path    string
	reg     *Registry
	log     *slog.Logger
	seen    fileStamp         // stamp of the last content examined
	badSum  [sha256.Size]byte // content that failed last, so it is logged once
	missing bool              // the last stat failed, so it is logged once
}

// poll checks the file once and reloads it if its content changed.
func (w *watcher) poll() {
	defer w.reg.polls.Add(1)
	st, err := os.Stat(w.path)
	if err != nil {
		if !w.missing {
			w.missing = true
			w.reg.reloads.WithLabelValues("error").Inc()
			w.log.Error("catalogue file unreadable; keeping the previous catalogue", "path", w.path, "err", err)
		}
		return
	}
	w.missing = false
	stamp := fileStamp{mtime: st.ModTime(), size: st.Size()}
	if stamp == w.seen {
		return
	}
	data, err := readCapped(w.path)
	if err != nil {
		w.seen = stamp
		w.fail(sha256.Sum256([]byte(err.Error())), err)
		return
	}
	// A file rewritten while it was read is read again at the next poll,
	// rather than judged on a mixture of two versions.
	if st2, err := os.Stat(w.path); err != nil || st2.ModTime() != stamp.mtime || st2.Size() != stamp.size {
		return
	}
	w.seen = stamp
	sum := sha256.Sum256(data)
	if sum == w.reg.Catalogue().sum {
		w.badSum = [sha256.Size]byte{}
		return // touched, or changed and changed back
	}
	c, err := ParseCatalogue(data)
	if err != nil {
		w.fail(sum, err)
		return
	}
	w.badSum = [sha256.Size]byte{}
	w.reg.Swap(c)
	w.reg.reloads.WithLabelValues("success").Inc()
	w.log.Info("catalogue reloaded", "path", w.path, "plans", len(c.Plans), "customers", len(c.Customers))
}

// fail counts and logs a failed reload once per distinct bad content.
func (w *watcher) fail(sum [sha256.Size]byte, err error) {
	if sum == w.badSum {
		return
	}
	w.badSum = sum
	w.reg.reloads.WithLabelValues("error").Inc()
	w.log.Error("catalogue file rejected; keeping the previous catalogue", "path", w.path, "err", err)
}
