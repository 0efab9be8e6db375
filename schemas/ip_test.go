package schemas

import "testing"

func TestAnonymizeIP(t *testing.T) {
	tests := []struct {
		ip     string
		v4, v6 int
		want   string
		err    bool
	}{
		{ip: "203.0.113.77", v4: 24, v6: 48, want: "203.0.113.0"},
		{ip: "203.0.113.77", v4: 16, v6: 48, want: "203.0.0.0"},
		{ip: "203.0.113.77", v4: 32, v6: 48, want: "203.0.113.77"},
		{ip: "203.0.113.77", v4: 0, v6: 48, want: "0.0.0.0"},
		{ip: "2001:db8:abcd:12:34:56:78:9a", v4: 24, v6: 48, want: "2001:db8:abcd::"},
		{ip: "2001:DB8:ABCD:FFFF::1", v4: 24, v6: 56, want: "2001:db8:abcd:ff00::"},
		{ip: "::ffff:203.0.113.77", v4: 24, v6: 48, want: "203.0.113.0"},
		{ip: "::1", v4: 24, v6: 128, want: "::1"},
		{ip: "fe80::1%eth0", v4: 24, v6: 48, err: true},
		{ip: "203.0.113", v4: 24, v6: 48, err: true},
		{ip: "", v4: 24, v6: 48, err: true},
		{ip: "203.0.113.77", v4: 33, v6: 48, err: true},
		{ip: "203.0.113.77", v4: -1, v6: 48, err: true},
		{ip: "2001:db8::1", v4: 24, v6: 129, err: true},
	}
	for _, tt := range tests {
		got, err := AnonymizeIP(tt.ip, tt.v4, tt.v6)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("AnonymizeIP(%q, %d, %d) = %q, %v", tt.ip, tt.v4, tt.v6, got, err)
		}
	}
	if got, _ := AnonymizeIP("198.51.100.9", DefaultIPv4PrefixBits, DefaultIPv6PrefixBits); got != "198.51.100.0" {
		t.Errorf("defaults: %s", got)
	}
}
