// Package term draws progress for long-running commands: a redrawn bar on
// a terminal, a line per tenth of the work when the output is a file or a
// pipe (so logs stay readable).
package term

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// IsTerminal reports whether w is a character device (a terminal).
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// Progress shows how far a job is. The zero value is not usable; get one
// from NewProgress. Its methods are safe for concurrent use.
type Progress struct {
	w     io.Writer
	quiet bool
	tty   bool
	unit  string

	mu      sync.Mutex
	total   uint64
	done    uint64
	label   string
	started time.Time
	drawn   time.Time
	tenth   uint64
	bytes   atomic.Uint64
}

// NewProgress draws on w (standard error, usually); quiet draws nothing.
func NewProgress(w io.Writer, quiet bool) *Progress {
	return &Progress{w: w, quiet: quiet, tty: IsTerminal(w), unit: "rows"}
}

// Start begins a job of total units (rows by default).
func (p *Progress) Start(total uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.total, p.done, p.started, p.tenth = total, 0, time.Now(), 0
}

// StartBytes begins a job of unknown size counted in bytes (see Writer).
func (p *Progress) StartBytes() {
	p.Start(0)
	p.mu.Lock()
	p.unit = "bytes"
	p.mu.Unlock()
}

// SetUnit names what Start's total counts ("rows" by default).
func (p *Progress) SetUnit(unit string) {
	p.mu.Lock()
	p.unit = unit
	p.mu.Unlock()
}

// Writer returns a writer that counts the bytes written to it as done.
func (p *Progress) Writer() io.Writer { return byteCounter{p} }

type byteCounter struct{ p *Progress }

func (b byteCounter) Write(buf []byte) (int, error) {
	n := b.p.bytes.Add(uint64(len(buf)))
	b.p.Set(n, "")
	return len(buf), nil
}

// Set records progress: done units so far, and what is being worked on.
func (p *Progress) Set(done uint64, label string) {
	if p.quiet {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done = done
	if label != "" {
		p.label = label
	}
	now := time.Now()
	if p.tty {
		if now.Sub(p.drawn) >= 100*time.Millisecond {
			p.drawn = now
			fmt.Fprintf(p.w, "\r%-100s", p.line(now))
		}
		return
	}
	if p.total > 0 {
		if t := done * 10 / p.total; t > p.tenth {
			p.tenth = t
			fmt.Fprintln(p.w, p.line(now))
		}
	}
}

// Finish draws the final state and ends the line.
func (p *Progress) Finish() {
	if p.quiet {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty || p.total == 0 || p.tenth < 10 {
		if p.tty {
			fmt.Fprintf(p.w, "\r%-100s\n", p.line(time.Now()))
		} else {
			fmt.Fprintln(p.w, p.line(time.Now()))
		}
	}
}

func (p *Progress) line(now time.Time) string {
	el := now.Sub(p.started)
	if p.total == 0 {
		return fmt.Sprintf("%s %s  %s  %s", count(p.done), p.unit, p.label, el.Round(100*time.Millisecond))
	}
	frac := float64(p.done) / float64(p.total)
	if frac > 1 {
		frac = 1
	}
	const width = 30
	fill := int(frac * width)
	eta := ""
	if frac > 0 && frac < 1 {
		eta = fmt.Sprintf("  ETA %s", time.Duration(float64(el)/frac-float64(el)).Round(time.Second))
	}
	return fmt.Sprintf("[%s%s] %3.0f%%  %s/%s %s  %s  %s%s", strings.Repeat("#", fill), strings.Repeat(".", width-fill),
		frac*100, count(p.done), count(p.total), p.unit, p.label, el.Round(100*time.Millisecond), eta)
}

// count formats n with thousands separators.
func count(n uint64) string {
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	return b.String()
}
