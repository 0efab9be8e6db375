package web

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// TestPublicURLMakesCookiesSecure: behind a TLS-terminating proxy
// (ui.public_url https://, plain HTTP here) cookies are Secure and HSTS is
// sent; an http:// public URL changes neither.
func TestPublicURLMakesCookiesSecure(t *testing.T) {
	for _, c := range []struct {
		url    string
		secure bool
	}{
		{"https://meter.example.com", true},
		{"HTTPS://meter.example.com/", true},
		{"http://meter.example.com", false},
	} {
		t.Run(c.url, func(t *testing.T) {
			f := newFixture(t, opts{cfg: Config{PublicURL: c.url}})
			b := f.browser()
			form := b.get(t, "/ui/signin")
			if pre := form.set[preCSRFCookie]; pre == nil || pre.Secure != c.secure {
				t.Fatalf("pre-session cookie %+v, want Secure=%v", pre, c.secure)
			}
			a := b.signIn(t, tokAdmin)
			ss := a.set[sessionCookie]
			if ss == nil || ss.Secure != c.secure || !ss.HttpOnly {
				t.Fatalf("session cookie %+v, want Secure=%v", ss, c.secure)
			}
			if hsts := a.header.Get("Strict-Transport-Security"); (hsts != "") != c.secure {
				t.Fatalf("Strict-Transport-Security %q, want it set=%v", hsts, c.secure)
			}
		})
	}
}

// signInFrom posts a (wrong) sign-in as a client behind a proxy that wrote
// xff, and returns the status.
func signInFrom(t *testing.T, f *fixture, xff ...string) int {
	t.Helper()
	b := f.browser()
	form := b.get(t, "/ui/signin")
	var hdr []string
	for _, x := range xff {
		hdr = append(hdr, "X-Forwarded-For", x)
	}
	return b.do(t, http.MethodPost, "/ui/signin", url.Values{"token": {"wrong"}, "csrf": {csrfOf(t, form.body)}}, hdr...).code
}

// TestTrustedProxies: with the test's loopback peer trusted, the sign-in
// limit counts the client named by X-Forwarded-For (its rightmost
// untrusted entry), so one client's attempts do not lock out another, and
// entries a client prepends do not help it; from an untrusted peer the
// header is ignored and every attempt counts against the peer.
func TestTrustedProxies(t *testing.T) {
	t.Run("trusted peer", func(t *testing.T) {
		f := newFixture(t, opts{cfg: Config{SignInPerMinute: 2, TrustedProxies: []string{"127.0.0.0/8", "::1", "10.1.0.0/16"}}})
		f.clock.t = f.clock.t.Truncate(time.Minute)
		for i := range 2 {
			if code := signInFrom(t, f, "198.51.100.7"); code != http.StatusUnauthorized {
				t.Fatalf("attempt %d of 198.51.100.7: %d, want 401", i+1, code)
			}
		}
		for _, spoof := range [][]string{
			{"198.51.100.7"},
			{"203.0.113.99, 198.51.100.7"},             // a client-written entry left of the real one
			{"203.0.113.99", "198.51.100.7, 10.1.2.3"}, // two header lines, a trusted hop of ours last
			{"198.51.100.7, 10.1.2.3, 127.0.0.9"},      // several trusted hops
			{"::ffff:198.51.100.7"},                    // the same address IPv4-mapped
			{"not-an-address, 198.51.100.7"},           // garbage from the client, left of the real one
		} {
			if code := signInFrom(t, f, spoof...); code != http.StatusTooManyRequests {
				t.Errorf("198.51.100.7 behind X-Forwarded-For %q: %d, want 429", spoof, code)
			}
		}
		if code := signInFrom(t, f, "198.51.100.8"); code != http.StatusUnauthorized {
			t.Fatalf("another client behind the same proxy: %d, want 401 (its own count)", code)
		}
		// Without the header the proxy itself is the client.
		if code := signInFrom(t, f); code != http.StatusUnauthorized {
			t.Fatalf("no X-Forwarded-For: %d, want 401", code)
		}
	})
	t.Run("untrusted peer", func(t *testing.T) {
		f := newFixture(t, opts{cfg: Config{SignInPerMinute: 2, TrustedProxies: []string{"10.0.0.0/8"}}})
		f.clock.t = f.clock.t.Truncate(time.Minute)
		for i, xff := range []string{"198.51.100.1", "198.51.100.2"} {
			if code := signInFrom(t, f, xff); code != http.StatusUnauthorized {
				t.Fatalf("attempt %d: %d, want 401", i+1, code)
			}
		}
		if code := signInFrom(t, f, "198.51.100.3"); code != http.StatusTooManyRequests {
			t.Fatalf("a fresh X-Forwarded-For from an untrusted peer: %d, want 429 (the header is ignored)", code)
		}
	})
}

func TestClientAddress(t *testing.T) {
	s := New(Config{TrustedProxies: []string{"10.0.0.0/8", "2001:db8::/32"}}, Deps{})
	for _, c := range []struct {
		peer string
		xff  []string
		want string
	}{
		{"192.0.2.1:5000", []string{"198.51.100.7"}, "192.0.2.1"}, // untrusted peer: header ignored
		{"10.0.0.1:5000", nil, "10.0.0.1"},                        // trusted, no header
		{"10.0.0.1:5000", []string{"198.51.100.7"}, "198.51.100.7"},
		{"10.0.0.1:5000", []string{"1.1.1.1,198.51.100.7 , 10.9.9.9"}, "198.51.100.7"},
		{"10.0.0.1:5000", []string{"10.2.2.2, 10.3.3.3"}, "10.2.2.2"}, // all trusted: the leftmost proxy
		{"10.0.0.1:5000", []string{"198.51.100.7, bogus"}, "10.0.0.1"},
		{"10.0.0.1:5000", []string{"fe80::1%eth0"}, "10.0.0.1"},
		{"[2001:db8::5]:443", []string{"2001:db9::7"}, "2001:db9::7"},
		{"[2001:db8::5]:443", []string{"198.51.100.7" + strings.Repeat(", 10.0.0.2", 100)}, "10.0.0.2"}, // walks at most 32 hops,
	} {
		r := httptest.NewRequest(http.MethodPost, "/ui/signin", nil)
		r.RemoteAddr = c.peer
		for _, x := range c.xff {
			r.Header.Add("X-Forwarded-For", x)
		}
		if got := s.client(r); got != c.want {
			t.Errorf("peer %s, X-Forwarded-For %q: %s, want %s", c.peer, c.xff, got, c.want)
		}
	}
}

func TestTrustedProxiesConfig(t *testing.T) {
	for _, bad := range []string{"10.0.0.0/33", "nope", "", "10.0.0.0/8; drop", "fe80::1%eth0"} {
		cfg := Config{TrustedProxies: []string{"10.0.0.0/8", bad}}.WithDefaults()
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "ui.trusted_proxies[1]") {
			t.Errorf("trusted_proxies %q: %v, want an error naming ui.trusted_proxies[1]", bad, err)
		}
	}
	if err := (Config{TrustedProxies: []string{"10.0.0.0/8", "192.0.2.7", "2001:db8::/32"}}).WithDefaults().Validate(); err != nil {
		t.Fatalf("valid trusted_proxies: %v", err)
	}
}
