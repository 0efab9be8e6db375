package httplimit

import (
	"fmt"
	"math"
	"testing"
	"time"
)

var (
	perSecond20 = []rateLimit{{per: time.Second, requests: 20, name: "1s"}}
	twoLimits   = []rateLimit{{per: time.Second, requests: 20, name: "1s"}, {per: time.Minute, requests: 600, name: "1m"}}
)

// saturate offers a request every step from start to end and returns the
// accepted ones' times.
func saturate(ws *windows, key string, limits []rateLimit, start, end time.Time, step time.Duration) []time.Time {
	var acc []time.Time
	for t := start; t.Before(end); t = t.Add(step) {
		if ws.take(key, limits, t).allowed {
			acc = append(acc, t)
		}
	}
	return acc
}

func countIn(ts []time.Time, from, to time.Time) int {
	n := 0
	for _, t := range ts {
		if !t.Before(from) && t.Before(to) {
			n++
		}
	}
	return n
}

// TestSlidingWindowAccuracy: a key offered five times its limit gets the
// limit over any stretch after the first window, within 10%, and never more
// than the limit in one fixed window.
func TestSlidingWindowAccuracy(t *testing.T) {
	ws := newWindows(1000)
	start := time.Unix(1_800_000_000, 370_000_000) // mid-window
	end := start.Add(30 * time.Second)
	acc := saturate(ws, "k", perSecond20, start, end, 10*time.Millisecond)
	for _, span := range []time.Duration{time.Second, 3 * time.Second, 10 * time.Second} {
		for from := start.Add(2 * time.Second); !from.Add(span).After(end); from = from.Add(span + 130*time.Millisecond) {
			got := float64(countIn(acc, from, from.Add(span))) / span.Seconds()
			if math.Abs(got-20)/20 > 0.10 {
				t.Errorf("accepted %.1f/s over %s from %s, want 20 ± 10%%", got, span, from.Sub(start))
			}
		}
	}
	for w := start.Truncate(time.Second); w.Before(end); w = w.Add(time.Second) {
		if n := countIn(acc, w, w.Add(time.Second)); n > 20 {
			t.Errorf("%d accepted in the fixed window at %s", n, w.Sub(start))
		}
	}
}

// TestTwoLimits: the minute's limit binds once its 600 are used.
func TestTwoLimits(t *testing.T) {
	ws := newWindows(1000)
	start := time.Unix(1_800_000_000, 0)
	acc := saturate(ws, "k", twoLimits, start, start.Add(59*time.Second), 10*time.Millisecond)
	if n := len(acc); n > 600 || n < 540 {
		t.Errorf("%d accepted in the first minute, want 540-600", n)
	}
	// Once the minute is used up, the 429 names the minute's limit and a
	// reset that frees a request.
	tEnd := start.Add(59 * time.Second)
	v := ws.take("k", twoLimits, tEnd)
	if v.allowed || twoLimits[v.limit].name != "1m" || v.reset < 1 {
		t.Fatalf("verdict %+v", v)
	}
	if !ws.take("k", twoLimits, tEnd.Add(time.Duration(v.reset)*time.Second)).allowed {
		t.Errorf("not allowed after its Retry-After of %ds", v.reset)
	}
}

// TestRetryAfterFrees: after a refusal, waiting reset seconds is enough.
func TestRetryAfterFrees(t *testing.T) {
	for _, phase := range []time.Duration{0, 250 * time.Millisecond, 990 * time.Millisecond} {
		ws := newWindows(10)
		t0 := time.Unix(1_800_000_000, 0).Add(phase)
		var v verdict
		i := 0
		for v = ws.take("k", perSecond20, t0); v.allowed; v = ws.take("k", perSecond20, t0) {
			i++
		}
		if i != 20 || v.remaining != 0 || v.reset < 1 {
			t.Fatalf("phase %s: %d allowed at once, then %+v", phase, i, v)
		}
		if !ws.take("k", perSecond20, t0.Add(time.Duration(v.reset)*time.Second)).allowed {
			t.Errorf("phase %s: still refused after Retry-After %ds", phase, v.reset)
		}
	}
	// Remaining counts down on allowed requests.
	ws := newWindows(10)
	t0 := time.Unix(1_800_000_000, 0)
	if v := ws.take("k", perSecond20, t0); !v.allowed || v.remaining != 19 || v.reset != 1 {
		t.Errorf("first request: %+v", v)
	}
}

// TestKeysIndependent: one key's saturation leaves another's quota whole.
func TestKeysIndependent(t *testing.T) {
	ws := newWindows(1000)
	t0 := time.Unix(1_800_000_000, 0)
	saturate(ws, "busy", perSecond20, t0, t0.Add(time.Second), time.Millisecond)
	if n := len(saturate(ws, "calm", perSecond20, t0.Add(500*time.Millisecond), t0.Add(500*time.Millisecond+20*time.Millisecond), time.Millisecond)); n != 20 {
		t.Errorf("another key got %d of its 20", n)
	}
}

// TestWindowsBounded: memory stays within MaxKeys whatever the number of
// keys, and the keys evicted are idle ones.
func TestWindowsBounded(t *testing.T) {
	ws := newWindows(128)
	t0 := time.Unix(1_800_000_000, 0)
	for i := range 100_000 {
		ws.take(fmt.Sprintf("k%d", i), perSecond20, t0.Add(time.Duration(i)*time.Microsecond))
	}
	if n := ws.len(); n > 128 {
		t.Errorf("%d keys held, MaxKeys 128", n)
	}
	if ws.evicted.Load() < 100_000-128 {
		t.Errorf("%d evictions", ws.evicted.Load())
	}
}

// TestPlanChangeResetsWindows: a key whose plan's windows change starts
// counting afresh rather than reading another window's counts.
func TestPlanChangeResetsWindows(t *testing.T) {
	ws := newWindows(10)
	t0 := time.Unix(1_800_000_000, 0)
	saturate(ws, "k", perSecond20, t0, t0.Add(500*time.Millisecond), time.Millisecond)
	bigger := []rateLimit{{per: 2 * time.Second, requests: 100, name: "2s"}}
	if n := len(saturate(ws, "k", bigger, t0.Add(600*time.Millisecond), t0.Add(700*time.Millisecond), time.Millisecond)); n != 100 {
		t.Errorf("after the plan change: %d of 100", n)
	}
}
