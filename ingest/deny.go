package ingest

import "strings"

// denied tells whether a property key matches one of a.DenyProperties.
func (a Anonymizer) denied(key string) bool {
	if len(a.DenyProperties) == 0 {
		return false
	}
	k := strings.ToLower(key) // no allocation when already lower case
	for _, p := range a.DenyProperties {
		if DenyProperty(strings.ToLower(p), k) {
			return true
		}
	}
	return false
}

// DenyProperty reports whether key matches pattern, where * stands for any
// run of characters (empty included) and every other character for itself.
// A pattern without * matches the key exactly. The comparison is case
// sensitive: the Anonymizer lowers both sides first.
func DenyProperty(pattern, key string) bool {
	first, rest, wild := strings.Cut(pattern, "*")
	if !wild {
		return pattern == key
	}
	if !strings.HasPrefix(key, first) {
		return false
	}
	key = key[len(first):]
	for {
		mid, more, ok := strings.Cut(rest, "*")
		if !ok {
			// rest is the last part: it must end the key.
			return len(key) >= len(rest) && strings.HasSuffix(key, rest)
		}
		i := strings.Index(key, mid)
		if i < 0 {
			return false
		}
		key, rest = key[i+len(mid):], more
	}
}
