package ship

import (
	"fmt"
	"strings"
)

// Routes names the endpoint template of a request path, since Caddy logs
// only the path. Each rule is a template of segments: a literal segment
// matches itself, {name} matches any one non-empty segment, and a last
// segment {name...} matches one or more segments. Rules are tried in order
// and the first that matches names the route.
type Routes struct {
	rules []route
}

type route struct {
	template string
	segs     []string
	rest     bool // the last segment is {name...}
}

// ParseRoutes checks the templates and returns their matcher.
func ParseRoutes(templates []string) (*Routes, error) {
	r := &Routes{}
	var errs []string
	for i, t := range templates {
		rt, err := parseRoute(t)
		if err != nil {
			errs = append(errs, fmt.Sprintf("routes[%d] %q: %v", i, t, err))
			continue
		}
		r.rules = append(r.rules, rt)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s", strings.Join(errs, "\n"))
	}
	return r, nil
}

func parseRoute(t string) (route, error) {
	if !strings.HasPrefix(t, "/") {
		return route{}, fmt.Errorf("must start with /")
	}
	if len(t) > 1024 {
		return route{}, fmt.Errorf("longer than 1024 bytes")
	}
	for _, c := range []byte(t) {
		if c < 0x20 || c >= 0x7f {
			return route{}, fmt.Errorf("must be printable ASCII")
		}
	}
	rt := route{template: t, segs: strings.Split(t[1:], "/")}
	for i, s := range rt.segs {
		if !strings.ContainsAny(s, "{}") {
			continue
		}
		if !strings.HasPrefix(s, "{") || !strings.HasSuffix(s, "}") || len(s) < 3 || strings.ContainsAny(s[1:len(s)-1], "{}") {
			return route{}, fmt.Errorf("segment %q: a wildcard is a whole segment, {name} or {name...}", s)
		}
		if strings.HasSuffix(s, "...}") {
			if i != len(rt.segs)-1 {
				return route{}, fmt.Errorf("segment %q: {name...} must be the last segment", s)
			}
			rt.rest = true
		}
	}
	return rt, nil
}

// Match returns the template of the first rule that matches path (without
// its query), or "" and false.
func (r *Routes) Match(path string) (string, bool) {
	if r == nil || !strings.HasPrefix(path, "/") {
		return "", false
	}
	segs := strings.Split(path[1:], "/")
	for _, rt := range r.rules {
		if rt.match(segs) {
			return rt.template, true
		}
	}
	return "", false
}

func (rt *route) match(segs []string) bool {
	n := len(rt.segs)
	if rt.rest {
		if len(segs) < n {
			return false
		}
		for _, s := range segs[n-1:] {
			if s == "" && len(segs) == n {
				return false
			}
		}
	} else if len(segs) != n {
		return false
	}
	for i, want := range rt.segs {
		if rt.rest && i == n-1 {
			return true
		}
		if strings.HasPrefix(want, "{") {
			if segs[i] == "" {
				return false
			}
			continue
		}
		if segs[i] != want {
			return false
		}
	}
	return true
}
