package web

import (
	"errors"
	"net/http"
	"net/netip"
	"strings"
)

// maxForwardedHops bounds how many X-Forwarded-For entries are walked.
const maxForwardedHops = 32

// parseProxy reads one ui.trusted_proxies entry: a prefix or an address.
func parseProxy(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if a.Zone() != "" {
		return netip.Prefix{}, errors.New("an address with a zone")
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func parseProxies(list []string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range list {
		if p, err := parseProxy(s); err == nil { // Validate reported the others
			out = append(out, p)
		}
	}
	return out
}

func (s *Server) trusted(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range s.proxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// client is the address the sign-in limit counts: the connection's, or,
// when the connection comes from a trusted proxy, the rightmost
// X-Forwarded-For entry that is not a trusted proxy. Entries left of it
// were written by the client and are never believed. An entry that does
// not parse ends the walk at the last trusted hop (its writer was not a
// proxy of ours), which counts against that proxy rather than anyone named.
func (s *Server) client(r *http.Request) string {
	peer := clientIP(r)
	if len(s.proxies) == 0 {
		return peer
	}
	last, err := netip.ParseAddr(peer)
	if err != nil || !s.trusted(last) {
		return peer
	}
	var hops []string
	for _, h := range r.Header.Values("X-Forwarded-For") {
		hops = append(hops, strings.Split(h, ",")...)
	}
	for i, n := len(hops)-1, 0; i >= 0 && n < maxForwardedHops; i, n = i-1, n+1 {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil || a.Zone() != "" {
			break
		}
		a = a.Unmap()
		if !s.trusted(a) {
			return a.String()
		}
		last = a
	}
	return last.Unmap().String()
}
