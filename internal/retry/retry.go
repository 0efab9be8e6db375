// Package retry holds the small helpers every Meterline component that
// calls a remote system shares: exponential backoff with jitter, a sleep
// that ends with its context, the Retry-After header, and a cleaner for
// error texts that are logged and recorded.
package retry

import (
	"context"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Backoff yields exponentially growing delays with jitter in [d/2, d], so
// callers that failed together do not retry in lockstep. The zero value is
// not usable: build it with NewBackoff.
type Backoff struct {
	min, max, cur time.Duration
}

// NewBackoff returns a Backoff starting at lo and doubling up to hi.
func NewBackoff(lo, hi time.Duration) *Backoff {
	lo = max(lo, time.Millisecond)
	hi = max(hi, lo)
	return &Backoff{min: lo, max: hi, cur: lo}
}

// Next returns the next delay.
func (b *Backoff) Next() time.Duration {
	d := b.cur
	b.cur = min(b.cur*2, b.max)
	return d/2 + rand.N(d/2+1)
}

// Reset starts over from the minimum delay.
func (b *Backoff) Reset() { b.cur = b.min }

// Sleep waits d or until ctx ends; it reports whether the full d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// ParseRetryAfter reads a Retry-After value, delay-seconds or an HTTP date,
// capped at limit; 0 when absent, unreadable or in the past.
func ParseRetryAfter(v string, now time.Time, limit time.Duration) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		if secs > int64(limit/time.Second) {
			return limit
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return min(t.Sub(now), limit)
	}
	return 0
}

// CleanText makes a text safe to record and log: valid UTF-8, no control
// characters, at most maxBytes bytes (cut at a rune boundary), trimmed.
func CleanText(s string, maxBytes int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || (r >= 0x7F && r <= 0x9F) {
			return ' '
		}
		return r
	}, s)
	if len(s) > maxBytes {
		cut := maxBytes
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return strings.TrimSpace(s)
}
