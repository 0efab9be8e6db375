package web

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"sync"
	"time"

	"github.com/meterline/meterline/auth"
)

// session is one signed-in browser.
type session struct {
	id        string
	principal auth.Principal
	csrf      string
	created   time.Time
	lastSeen  time.Time
}

// sessions is the in-memory session store: bounded, ids of 256 random bits.
type sessions struct {
	mu   sync.Mutex
	byID map[string]*session
	cfg  Config
	now  func() time.Time
}

func newSessions(cfg Config, now func() time.Time) *sessions {
	return &sessions{byID: map[string]*session{}, cfg: cfg, now: now}
}

// randomID returns 256 random bits, URL-safe base64.
func randomID() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic("web: no randomness: " + err.Error()) // crypto/rand does not fail on supported systems
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// create starts a session for p, ending the least recently used one when
// the store is full.
func (s *sessions) create(p auth.Principal) *session {
	now := s.now()
	ss := &session{id: randomID(), principal: p, csrf: randomID(), created: now, lastSeen: now}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(now)
	for len(s.byID) >= s.cfg.MaxSessions {
		var oldest *session
		for _, c := range s.byID {
			if oldest == nil || c.lastSeen.Before(oldest.lastSeen) {
				oldest = c
			}
		}
		delete(s.byID, oldest.id)
	}
	s.byID[ss.id] = ss
	return ss
}

func (s *sessions) expired(ss *session, now time.Time) bool {
	return now.Sub(ss.lastSeen) >= s.cfg.SessionIdle || now.Sub(ss.created) >= s.cfg.SessionMax
}

func (s *sessions) expireLocked(now time.Time) {
	for id, ss := range s.byID {
		if s.expired(ss, now) {
			delete(s.byID, id)
		}
	}
}

// get returns the live session with that id and marks it used; an expired
// one is ended.
func (s *sessions) get(id string) (session, bool) {
	if id == "" {
		return session{}, false
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	ss, ok := s.byID[id]
	if !ok {
		return session{}, false
	}
	if s.expired(ss, now) {
		delete(s.byID, id)
		return session{}, false
	}
	ss.lastSeen = now
	return *ss, true
}

// end removes the session: its cookie no longer signs anyone in.
func (s *sessions) end(id string) {
	s.mu.Lock()
	delete(s.byID, id)
	s.mu.Unlock()
}

func (s *sessions) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byID)
}

// portalCode is an unexchanged portal link.
type portalCode struct {
	customer string
	expires  time.Time
}

// codes holds the portal links' one-time codes.
type codes struct {
	mu    sync.Mutex
	byVal map[string]portalCode
	max   int
	now   func() time.Time
}

// errTooManyCodes: the store of unexchanged codes is full.
type errTooManyCodes struct{}

func (errTooManyCodes) Error() string {
	return "too many unexchanged portal links; try again when some have expired"
}

func (c *codes) issue(customer string, ttl time.Duration) (string, time.Time, error) {
	now := c.now()
	code := randomID()
	exp := now.Add(ttl)
	c.mu.Lock()
	defer c.mu.Unlock()
	for v, pc := range c.byVal {
		if !now.Before(pc.expires) {
			delete(c.byVal, v)
		}
	}
	if len(c.byVal) >= c.max {
		return "", time.Time{}, errTooManyCodes{}
	}
	c.byVal[code] = portalCode{customer: customer, expires: exp}
	return code, exp, nil
}

// exchange consumes code: it answers the customer once, and never again.
func (c *codes) exchange(code string) (string, bool) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	pc, ok := c.byVal[code]
	if !ok {
		return "", false
	}
	delete(c.byVal, code)
	if !now.Before(pc.expires) {
		return "", false
	}
	return pc.customer, true
}

// limiter counts attempts per client IP in fixed one-minute windows.
type limiter struct {
	mu     sync.Mutex
	per    int
	window time.Time
	counts map[string]int
	now    func() time.Time
}

// allow counts one attempt of ip and reports whether it is within the limit.
func (l *limiter) allow(ip string) bool {
	now := l.now().Truncate(time.Minute)
	l.mu.Lock()
	defer l.mu.Unlock()
	if !now.Equal(l.window) || len(l.counts) > 100_000 {
		l.window, l.counts = now, map[string]int{}
	}
	l.counts[ip]++
	return l.counts[ip] <= l.per
}

func equalSecret(a, b string) bool {
	return a != "" && len(a) == len(b) && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}
