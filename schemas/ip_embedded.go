package schemas

import (
	"encoding/binary"
	"net/netip"
)

// Prefixes of the IPv6 forms that carry an IPv4 address (see EmbeddedIPv4).
var (
	prefix6to4        = netip.MustParsePrefix("2002::/16")       // RFC 3056
	prefixTeredo      = netip.MustParsePrefix("2001::/32")       // RFC 4380
	prefixNAT64       = netip.MustParsePrefix("64:ff9b::/96")    // RFC 6052, well-known
	prefixNAT64Local  = netip.MustParsePrefix("64:ff9b:1::/48")  // RFC 8215, local use
	prefixCompatible  = netip.MustParsePrefix("::/96")           // RFC 4291 §2.5.5.1, deprecated
	prefixTranslated  = netip.MustParsePrefix("::ffff:0:0:0/96") // RFC 2765 (SIIT)
	isatapIIDPattern  = uint32(0x00005efe)                       // RFC 5214 interface id 0000:5efe or 0200:5efe
	isatapUniversalOr = uint32(0x02000000)
)

// EmbeddedIPv4 returns the IPv4 address an IPv6 address carries, and true,
// when a is in one of the forms that embed one:
//
//   - IPv4-mapped ::ffff:a.b.c.d (and the IPv4-translated ::ffff:0:a.b.c.d);
//   - IPv4-compatible ::a.b.c.d (deprecated; :: and ::1 are not);
//   - 6to4 2002:AABB:CCDD::/48, the IPv4 in bits 16-47;
//   - Teredo 2001:0::/32: the client's IPv4 is the last 32 bits inverted
//     (the server's IPv4 in bits 32-63 is not the client and is not returned);
//   - NAT64 64:ff9b::/96 and the local-use 64:ff9b:1::/48, the IPv4 in the
//     last 32 bits (the /96 embedding of RFC 6052; for a local-use prefix of
//     another length the result is not the client's address, but nothing
//     else of a is kept either);
//   - ISATAP, an interface id 0000:5efe:a.b.c.d (or 0200:5efe) under any
//     prefix.
//
// An IPv4 address (a.Is4) is returned as it is. Anonymising such an address
// with the IPv6 prefix length would keep the IPv4 whole: 2002:cb00:714d::1
// truncated to 48 bits is 2002:cb00:714d::, which still names 203.0.113.77.
func EmbeddedIPv4(a netip.Addr) (netip.Addr, bool) {
	if a.Is4() {
		return a, true
	}
	if !a.Is6() {
		return netip.Addr{}, false
	}
	a = a.WithZone("")
	b := a.As16()
	last := func() netip.Addr { return netip.AddrFrom4([4]byte(b[12:16])) }
	switch {
	case a.Is4In6():
		return a.Unmap(), true
	case prefixTranslated.Contains(a):
		return last(), true
	case prefixCompatible.Contains(a):
		if binary.BigEndian.Uint32(b[12:]) <= 1 {
			return netip.Addr{}, false // :: and ::1
		}
		return last(), true
	case prefix6to4.Contains(a):
		return netip.AddrFrom4([4]byte(b[2:6])), true
	case prefixTeredo.Contains(a):
		var c [4]byte
		for i := range c {
			c[i] = b[12+i] ^ 0xff
		}
		return netip.AddrFrom4(c), true
	case prefixNAT64.Contains(a), prefixNAT64Local.Contains(a):
		return last(), true
	}
	if iid := binary.BigEndian.Uint32(b[8:12]); iid|isatapUniversalOr == isatapIIDPattern|isatapUniversalOr {
		return last(), true
	}
	return netip.Addr{}, false
}
