package ingest

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/meterline/meterline/schemas"
)

// embeddedForms are the IPv6 forms that carry 203.0.113.77, as a client's
// address may reach a gateway.
var embeddedForms = []struct{ name, ip string }{
	{"6to4", "2002:cb00:714d::1"},
	{"6to4 with subnet and host", "2002:cb00:714d:1234:5678:9abc:def0:1"},
	{"Teredo (server 65.54.227.120)", "2001:0:4136:e378:8000:63bf:34ff:8eb2"},
	{"IPv4-mapped dotted", "::ffff:203.0.113.77"},
	{"IPv4-mapped hex", "::FFFF:CB00:714D"},
	{"IPv4-translated", "::ffff:0:cb00:714d"},
	{"IPv4-compatible", "::203.0.113.77"},
	{"NAT64 well-known", "64:ff9b::203.0.113.77"},
	{"NAT64 well-known hex", "64:ff9b::cb00:714d"},
	{"NAT64 local-use", "64:ff9b:1::cb00:714d"},
	{"ISATAP", "2001:db8:1:2:0:5efe:cb00:714d"},
	{"ISATAP universal", "fe80::200:5efe:203.0.113.77"},
}

// TestAnonymizerEmbeddedIPv4 anonymises every IPv6 form that embeds an IPv4
// address as that IPv4 address, under each ip_mode: truncate gives the
// IPv4's /24, hash the pseudonym of the IPv4 itself, drop nothing.
func TestAnonymizerEmbeddedIPv4(t *testing.T) {
	at := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	hash := Anonymizer{IPMode: IPHash, IPHashSecret: "0123456789abcdef-secret"}.WithDefaults()
	direct := schemas.Event{ClientIP: "203.0.113.77", Time: at}
	if err := hash.Apply(&direct); err != nil {
		t.Fatal(err)
	}
	modes := []struct {
		name string
		a    Anonymizer
		want string
	}{
		{"truncate", Anonymizer{}.WithDefaults(), "203.0.113.0"},
		// A wide IPv6 prefix must not bring the IPv4 back either.
		{"truncate ipv6_prefix_bits 128", Anonymizer{IPv6PrefixBits: 128}.WithDefaults(), "203.0.113.0"},
		{"hash", hash, direct.ClientIP},
		{"drop", Anonymizer{IPMode: IPDrop}.WithDefaults(), ""},
	}
	for _, m := range modes {
		for _, f := range embeddedForms {
			t.Run(m.name+"/"+f.name, func(t *testing.T) {
				e := schemas.Event{ClientIP: f.ip, Time: at}
				if err := m.a.Apply(&e); err != nil {
					t.Fatal(err)
				}
				if e.ClientIP != m.want {
					t.Fatalf("%s stored as %q, want %q", f.ip, e.ClientIP, m.want)
				}
				again := e
				if err := m.a.Apply(&again); err != nil || again.ClientIP != e.ClientIP {
					t.Fatalf("applying twice changed %q to %q (%v)", e.ClientIP, again.ClientIP, err)
				}
			})
		}
	}
	// Addresses that embed no IPv4 stay IPv6.
	for ip, want := range map[string]string{"2001:db8:1:2::1": "2001:db8:1::", "::1": "::", "::": "::",
		"2003:cb00:714d::1": "2003:cb00:714d::", "2001:1::1": "2001:1::"} {
		e := schemas.Event{ClientIP: ip, Time: at}
		if err := (Anonymizer{}).WithDefaults().Apply(&e); err != nil || e.ClientIP != want {
			t.Errorf("%s stored as %q (%v), want %q", ip, e.ClientIP, err, want)
		}
	}
}

// embedForm builds an IPv6 address carrying v4 in the given form (the
// test's own encoding of each RFC, independent of schemas.EmbeddedIPv4);
// extra fills the bits the form leaves free.
func embedForm(form int, v4 uint32, extra uint64) (string, bool) {
	var b [16]byte
	binary.BigEndian.PutUint64(b[8:], extra)
	put := func(off int, v uint32) { binary.BigEndian.PutUint32(b[off:], v) }
	switch form {
	case 0: // 6to4
		b[0], b[1] = 0x20, 0x02
		put(2, v4)
		b[6], b[7] = byte(extra>>56), byte(extra>>48)
	case 1: // Teredo
		b[0], b[1] = 0x20, 0x01
		b[2], b[3] = 0, 0
		put(4, uint32(extra>>32)) // server
		put(12, ^v4)
	case 2: // mapped
		b = [16]byte{10: 0xff, 11: 0xff}
		put(12, v4)
	case 3: // translated
		b = [16]byte{8: 0xff, 9: 0xff}
		put(12, v4)
	case 4: // compatible
		if v4 <= 1 {
			return "", false
		}
		b = [16]byte{}
		put(12, v4)
	case 5: // NAT64 well-known
		b = [16]byte{0: 0x00, 1: 0x64, 2: 0xff, 3: 0x9b}
		put(12, v4)
	case 6: // NAT64 local-use, /96 embedding
		b = [16]byte{1: 0x64, 2: 0xff, 3: 0x9b, 5: 0x01}
		binary.BigEndian.PutUint16(b[6:], uint16(extra))
		put(12, v4)
	case 7: // ISATAP
		binary.BigEndian.PutUint64(b[:8], extra)
		put(8, 0x00005efe|uint32(extra&1)<<25)
		put(12, v4)
	default:
		return "", false
	}
	a := netip.AddrFrom16(b)
	s := a.String()
	switch extra % 3 {
	case 1:
		s = a.StringExpanded()
	case 2:
		s = strings.ToUpper(s)
	}
	return s, true
}

// containsBits reports whether the 32 bits of v (or their complement) occur
// at any bit offset of the 128-bit address a.
func containsBits(a netip.Addr, v uint32) bool {
	b := a.As16()
	hi, lo := binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
	for off := 0; off <= 96; off++ {
		var w uint64
		switch {
		case off == 0:
			w = hi >> 32
		case off < 64:
			w = hi<<off | lo>>(64-off)
			w >>= 32
		default:
			w = lo << (off - 64) >> 32
		}
		if uint32(w) == v || uint32(w) == ^v {
			return true
		}
	}
	return false
}

// FuzzAnonymizerHidesEmbeddedIPv4: whatever the form an IPv6 address
// carries an IPv4 in, its text spelling, the mode and the prefix lengths
// kept, no output of the anonymiser holds that full IPv4 address: neither
// as an IPv4, nor its 32 bits (or their complement) anywhere in an IPv6,
// nor its dotted form in the text.
func FuzzAnonymizerHidesEmbeddedIPv4(f *testing.F) {
	f.Add(uint32(0xcb00714d), uint8(0), uint64(1), uint8(0), uint8(24), uint8(48))
	for form := uint8(0); form < 8; form++ {
		f.Add(uint32(0xc0000201), form, uint64(0xdeadbeef00000001), uint8(form%3), uint8(31), uint8(128))
	}
	f.Fuzz(func(t *testing.T, v4 uint32, form uint8, extra uint64, mode uint8, v4bits, v6bits uint8) {
		keep := int(v4bits) % 32 // keeping all 32 bits is asking for the full address
		// The bits the prefix drops must not all be zero, or the truncated
		// address is the original one by construction.
		v4 |= 1 << (31 - keep)
		ip, ok := embedForm(int(form%8), v4, extra)
		if !ok {
			t.Skip()
		}
		a := Anonymizer{IPMode: []string{IPTruncate, IPHash, IPDrop}[mode%3], IPHashSecret: "fuzz-secret-0123456789",
			IPv4PrefixBits: keep, IPv6PrefixBits: int(v6bits) % 129}.WithDefaults()
		if keep == 0 {
			a.IPv4PrefixBits = 0 // WithDefaults turned 0 into 24; 0 keeps nothing
		}
		e := schemas.Event{ClientIP: ip, Time: time.Unix(int64(extra%(1<<40)), 0)}
		if err := a.Apply(&e); err != nil {
			t.Fatalf("%s: %v", ip, err)
		}
		if e.ClientIP == "" {
			return
		}
		var raw [4]byte
		binary.BigEndian.PutUint32(raw[:], v4)
		orig := netip.AddrFrom4(raw)
		out, err := netip.ParseAddr(e.ClientIP)
		if err != nil {
			t.Fatalf("%s anonymised to %q, not an address: %v", ip, e.ClientIP, err)
		}
		if a.IPMode == IPHash {
			// A pseudonym is an HMAC: its bits are checked to be those of
			// the IPv4 itself, not of the IPv6 around it.
			if want := a.pseudonym(orig, e.Time); e.ClientIP != want {
				t.Fatalf("%s (carrying %s) pseudonymised to %q, not the IPv4's pseudonym %q", ip, orig, e.ClientIP, want)
			}
			return
		}
		if strings.Contains(e.ClientIP, orig.String()) || out.Unmap() == orig || (out.Is6() && containsBits(out, v4)) {
			t.Fatalf("%s (carrying %s) anonymised to %q (mode %s, /%d, /%d): the IPv4 is still there",
				ip, orig, e.ClientIP, a.IPMode, a.IPv4PrefixBits, a.IPv6PrefixBits)
		}
	})
}

func ExampleAnonymizer_embedded() {
	e := schemas.Event{ClientIP: "2002:cb00:714d::1"}
	_ = Anonymizer{}.WithDefaults().Apply(&e)
	fmt.Println(e.ClientIP)
	// Output: 203.0.113.0
}
