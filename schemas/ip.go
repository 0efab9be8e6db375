package schemas

import (
	"errors"
	"fmt"
	"net/netip"
)

// Default prefix lengths kept by AnonymizeIP, as the design states: the last
// octet of an IPv4 address and the last 80 bits of an IPv6 address are
// zeroed. An IPv6 /48 is typically one site, about as identifying as an IPv4
// /24, while still good enough for country- or network-level analytics.
const (
	DefaultIPv4PrefixBits = 24
	DefaultIPv6PrefixBits = 48
)

// AnonymizeIP keeps the first v4PrefixBits bits of an IPv4 address (or the
// first v6PrefixBits of an IPv6 one), zeroes the rest and returns the
// canonical text form. An IPv6 address that embeds an IPv4 one (IPv4-mapped
// ::ffff:1.2.3.4, 6to4, Teredo, NAT64 and the others of EmbeddedIPv4) is
// treated, and returned, as that IPv4 address: anonymising it with the IPv6
// prefix would keep all or most of it.
func AnonymizeIP(ip string, v4PrefixBits, v6PrefixBits int) (string, error) {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return "", fmt.Errorf("anonymize IP: %w", err)
	}
	if a.Zone() != "" {
		return "", errors.New("anonymize IP: address has a zone")
	}
	if v4, ok := EmbeddedIPv4(a); ok {
		a = v4
	}
	bits := v6PrefixBits
	if a.Is4() {
		bits = v4PrefixBits
	}
	p, err := a.Prefix(bits)
	if err != nil {
		return "", fmt.Errorf("anonymize IP: %w", err)
	}
	return p.Addr().String(), nil
}
