package httplimit

import (
	"hash/maphash"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// maxRateLimits matches the catalogue's bound on rate limits per plan.
const maxRateLimits = 8

// rateLimit is one plan rate limit: at most requests per window per.
type rateLimit struct {
	per      time.Duration
	requests int64
	name     string // "1s", as the catalogue writes it: the policy's name in headers
	quoted   string // `"1s"`
	reason   string // "rate_limit:1s", the event property of a refusal
}

// win is one sliding window: the count of the current fixed window and of
// the one before. The estimate of the last per is prev weighted by the
// part of it still inside the sliding window, plus cur (the sliding
// window counter that Cloudflare and others use: two integers per key and
// limit, exact when requests are spread evenly, and never more than the
// limit over any one fixed window).
type win struct {
	idx       int64 // the current fixed window: unix nanos / per
	cur, prev int64
}

// keyWindows are one key's windows, one per rate limit of its plan.
type keyWindows struct {
	last int64 // unix nanos of the last request, for eviction
	per  [maxRateLimits]time.Duration
	w    [maxRateLimits]win
}

// windows holds the keys' windows in shards, each under its own mutex and
// holding at most perShard keys.
type windows struct {
	seed     maphash.Seed
	perShard int
	shards   [64]wshard
	evicted  atomic.Uint64
}

type wshard struct {
	mu sync.Mutex
	m  map[string]*keyWindows
	_  [40]byte // keep shards on separate cache lines
}

func newWindows(maxKeys int) *windows {
	w := &windows{seed: maphash.MakeSeed(), perShard: max(1, (maxKeys+63)/64)}
	for i := range w.shards {
		w.shards[i].m = make(map[string]*keyWindows)
	}
	return w
}

// verdict is the outcome of one request against a key's rate limits.
type verdict struct {
	allowed bool
	// limit is the index of the limit that refused the request, or (when
	// allowed) of the one with the fewest requests left.
	limit int
	// remaining is that limit's requests left after this one.
	remaining int64
	// reset is when that limit frees a request (refused) or when its
	// current window ends (allowed), rounded up to whole seconds, at
	// least 1.
	reset int64
}

// take counts one request of key against limits at now, unless one of
// them would be exceeded: a refused request uses none of the quota.
func (ws *windows) take(key string, limits []rateLimit, now time.Time) verdict {
	sh := &ws.shards[maphash.String(ws.seed, key)%uint64(len(ws.shards))]
	t := now.UnixNano()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	kw := sh.m[key]
	if kw == nil {
		if len(sh.m) >= ws.perShard {
			ws.evict(sh)
		}
		kw = &keyWindows{}
		sh.m[key] = kw
	}
	kw.last = t
	v := verdict{allowed: true, remaining: math.MaxInt64}
	var refusedWait int64 = -1
	for i, rl := range limits {
		if i == maxRateLimits {
			break
		}
		w := &kw.w[i]
		per := int64(rl.per)
		if kw.per[i] != rl.per { // a new key, or its plan changed
			kw.per[i] = rl.per
			*w = win{idx: t / per}
		}
		idx := t / per
		switch {
		case idx == w.idx+1:
			w.prev, w.cur, w.idx = w.cur, 0, idx
		case idx != w.idx:
			w.prev, w.cur, w.idx = 0, 0, idx
		}
		elapsed := t - idx*per
		frac := float64(elapsed) / float64(per)
		est := float64(w.prev)*(1-frac) + float64(w.cur)
		L := float64(rl.requests)
		// Refused once the estimate reached the limit: a fixed window
		// then never holds more than L, and a saturated key gets L per
		// window.
		if est >= L {
			wait := refusedFor(w.prev, w.cur, L, frac, per)
			if wait > refusedWait {
				refusedWait = wait
				v = verdict{allowed: false, limit: i, remaining: 0, reset: ceilSeconds(wait)}
			}
			continue
		}
		if refusedWait >= 0 {
			continue
		}
		if rem := max(int64(L-est)-1, 0); rem < v.remaining {
			v.limit, v.remaining, v.reset = i, rem, ceilSeconds(per-elapsed)
		}
	}
	if !v.allowed {
		return v
	}
	for i := range limits {
		if i == maxRateLimits {
			break
		}
		kw.w[i].cur++
	}
	return v
}

// refusedFor returns how long, in nanoseconds, until one more request
// fits: prev*(1-f) + cur < L, later in this window or in the next (where
// the current count becomes the previous one).
func refusedFor(prev, cur int64, L, frac float64, per int64) int64 {
	if float64(cur) < L && prev > 0 {
		f := 1 - (L-float64(cur))/float64(prev)
		return max(int64((f-frac)*float64(per)), 0) + 1
	}
	g := 0.0
	if cur > 0 {
		g = max(0, 1-L/float64(cur))
	}
	return int64((1-frac)*float64(per)+g*float64(per)) + 1
}

func ceilSeconds(ns int64) int64 {
	s := (ns + int64(time.Second) - 1) / int64(time.Second)
	return max(s, 1)
}

// evict drops one key of a full shard: of a few sampled (map iteration
// order is random), the one idle longest. Its counts are forgotten, so
// its next requests start a fresh window: the cost of bounded memory.
func (ws *windows) evict(sh *wshard) {
	var victim string
	oldest := int64(math.MaxInt64)
	n := 0
	for k, kw := range sh.m {
		if kw.last < oldest {
			victim, oldest = k, kw.last
		}
		if n++; n == 8 {
			break
		}
	}
	delete(sh.m, victim)
	ws.evicted.Add(1)
}

// len returns the number of keys held.
func (ws *windows) len() int {
	n := 0
	for i := range ws.shards {
		sh := &ws.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}
