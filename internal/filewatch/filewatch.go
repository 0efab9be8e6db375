// Package filewatch reloads a configuration file when it changes, without a
// restart: the plan catalogue and the API tokens file share it.
package filewatch

import (
	"context"
	"crypto/sha256"
	"log/slog"
	"os"
	"time"
)

// Results counted by Watcher.Result.
const (
	ResultSuccess = "success"
	ResultError   = "error"
)

// stamp is what a poll compares before reading the file at all.
type stamp struct {
	mtime time.Time
	size  int64
}

// Watcher polls one file. A change is noticed by modification time and
// size, and confirmed by the content's SHA-256, so touching the file
// reloads nothing. A file that fails to load (unreadable, too large,
// invalid) is logged once per distinct content and what is in force stays:
// a typo must not turn every key or token into an unknown one.
//
// Write the file atomically (write a temporary file, then rename it over
// the old one): a poll that catches an editor half way through writing sees
// an invalid or truncated file. Such a file is usually rejected, and a read
// during which the file changed is skipped, but a truncation that happens
// to be valid YAML cannot be told apart from an intended edit.
type Watcher struct {
	// Path is the file watched.
	Path string
	// What names the content in logs ("catalogue", "tokens").
	What string
	// Read reads the file (nil: os.ReadFile); a size cap belongs here.
	Read func(path string) ([]byte, error)
	// Loaded returns the SHA-256 of the content in force, so an unchanged
	// or changed-back file is not loaded again.
	Loaded func() [sha256.Size]byte
	// Apply parses and validates data and puts it in force; on error
	// nothing changes. The attributes returned are logged on success.
	Apply func(data []byte) ([]any, error)
	// Result counts each reload by outcome (ResultSuccess or ResultError);
	// nil counts nothing.
	Result func(result string)
	// AfterPoll, when set, is called after every poll, whatever its
	// outcome (tests wait on it instead of sleeping).
	AfterPoll func()
	// Log receives one line per reload or failure; nil discards.
	Log *slog.Logger

	seen    stamp             // stamp of the last content examined
	badSum  [sha256.Size]byte // content that failed last, so it is logged once
	missing bool              // the last stat failed, so it is logged once
}

// Run polls every interval (10s when every <= 0) until ctx ends.
func (w *Watcher) Run(ctx context.Context, every time.Duration) {
	if every <= 0 {
		every = 10 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.Poll()
		}
	}
}

func (w *Watcher) log() *slog.Logger {
	if w.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return w.Log
}

func (w *Watcher) count(result string) {
	if w.Result != nil {
		w.Result(result)
	}
}

// Poll checks the file once and applies it if its content changed.
func (w *Watcher) Poll() {
	if w.AfterPoll != nil {
		defer w.AfterPoll()
	}
	st, err := os.Stat(w.Path)
	if err != nil {
		if !w.missing {
			w.missing = true
			w.count(ResultError)
			w.log().Error(w.What+" file unreadable; keeping the previous "+w.What, "path", w.Path, "err", err)
		}
		return
	}
	w.missing = false
	now := stamp{mtime: st.ModTime(), size: st.Size()}
	if now == w.seen {
		return
	}
	read := w.Read
	if read == nil {
		read = os.ReadFile
	}
	data, err := read(w.Path)
	if err != nil {
		w.seen = now
		w.fail(sha256.Sum256([]byte(err.Error())), err)
		return
	}
	// A file rewritten while it was read is read again at the next poll,
	// rather than judged on a mixture of two versions.
	if st2, err := os.Stat(w.Path); err != nil || st2.ModTime() != now.mtime || st2.Size() != now.size {
		return
	}
	w.seen = now
	sum := sha256.Sum256(data)
	if sum == w.Loaded() {
		w.badSum = [sha256.Size]byte{}
		return // touched, or changed and changed back
	}
	attrs, err := w.Apply(data)
	if err != nil {
		w.fail(sum, err)
		return
	}
	w.badSum = [sha256.Size]byte{}
	w.count(ResultSuccess)
	w.log().Info(w.What+" reloaded", append([]any{"path", w.Path}, attrs...)...)
}

// fail counts and logs a failed reload once per distinct bad content.
func (w *Watcher) fail(sum [sha256.Size]byte, err error) {
	if sum == w.badSum {
		return
	}
	w.badSum = sum
	w.count(ResultError)
	w.log().Error(w.What+" file rejected; keeping the previous "+w.What, "path", w.Path, "err", err)
}
