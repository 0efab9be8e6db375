package retry

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestBackoffGrowsWithJitterWithinBounds(t *testing.T) {
	b := NewBackoff(100*time.Millisecond, time.Second)
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		d, hi := b.Next(), w*time.Millisecond
		if d < hi/2 || d > hi {
			t.Errorf("step %d: %s not in [%s, %s]", i, d, hi/2, hi)
		}
	}
	b.Reset()
	if d := b.Next(); d > 100*time.Millisecond {
		t.Errorf("after Reset: %s", d)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Duration{
		"": 0, "0": 0, "-3": 0, "junk": 0, "2": 2 * time.Second, "99999": time.Minute,
		now.Add(30 * time.Second).Format(http.TimeFormat): 30 * time.Second,
		now.Add(-time.Hour).Format(http.TimeFormat):       0,
	} {
		if got := ParseRetryAfter(in, now, time.Minute); got != want {
			t.Errorf("ParseRetryAfter(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestCleanTextAndSleep(t *testing.T) {
	if got := CleanText("a\x00b\nc\xff"+strings.Repeat("é", 10), 8); got != "a b c\uFFFD" || !utf8.ValidString(got) {
		t.Errorf("CleanText = %q", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if Sleep(ctx, time.Hour) {
		t.Error("Sleep ignored a cancelled context")
	}
}
