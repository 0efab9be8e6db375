package term

import (
	"bytes"
	"strings"
	"testing"
)

// TestProgressToAFile: outside a terminal the bar prints one line per tenth
// of the work and a final line, never carriage returns.
func TestProgressToAFile(t *testing.T) {
	var buf bytes.Buffer
	p := NewProgress(&buf, false)
	p.Start(1000)
	for i := uint64(0); i <= 1000; i += 50 {
		p.Set(i, "events")
	}
	p.Finish()
	out := buf.String()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 10 || strings.Contains(out, "\r") {
		t.Fatalf("%d lines:\n%s", len(lines), out)
	}
	if !strings.Contains(lines[9], "100%") || !strings.Contains(lines[9], "1,000/1,000 rows") || !strings.Contains(lines[0], " 10%") {
		t.Fatalf("lines:\n%s", out)
	}
}

func TestProgressQuietAndBytes(t *testing.T) {
	var buf bytes.Buffer
	q := NewProgress(&buf, true)
	q.Start(10)
	q.Set(5, "x")
	q.Finish()
	if buf.Len() != 0 {
		t.Fatalf("quiet progress wrote %q", buf.String())
	}
	p := NewProgress(&buf, false)
	p.StartBytes()
	_, _ = p.Writer().Write(make([]byte, 1234567))
	p.Finish()
	if !strings.Contains(buf.String(), "1,234,567 bytes") {
		t.Fatalf("bytes progress: %q", buf.String())
	}
}

func TestCount(t *testing.T) {
	for n, want := range map[uint64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567"} {
		if got := count(n); got != want {
			t.Errorf("count(%d) = %q, want %q", n, got, want)
		}
	}
}
