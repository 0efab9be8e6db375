package auth

import (
	"net/http"
	"strings"
	"testing"
)

func TestAuthenticate(t *testing.T) {
	tk, err := New([]TokenConfig{
		{Name: "gw", SHA256: Hash("s3cret"), Scopes: []string{"ingest"}},
		{Name: "acme-dash", SHA256: strings.ToUpper(Hash("dash")), Scopes: []string{"customer:acme", "customer:beta"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		header string
		name   string
		err    error
	}{
		{"Bearer s3cret", "gw", nil},
		{"bearer s3cret", "gw", nil},
		{"Bearer   s3cret  ", "gw", nil},
		{"Bearer dash", "acme-dash", nil},
		{"", "", ErrNoToken},
		{"Basic czNjcmV0", "", ErrNoToken},
		{"Bearer", "", ErrNoToken},
		{"Bearer ", "", ErrNoToken},
		{"Bearer S3CRET", "", ErrInvalidToken},
		{"Bearer s3cret\x00", "", ErrInvalidToken},
		{"Bearer " + Hash("s3cret"), "", ErrInvalidToken}, // the hash itself is not a token
	}
	for _, c := range cases {
		r, _ := http.NewRequest("GET", "/", nil)
		if c.header != "" {
			r.Header.Set("Authorization", c.header)
		}
		p, err := tk.Authenticate(r)
		if err != c.err || p.Name != c.name {
			t.Errorf("%q: got %q, %v; want %q, %v", c.header, p.Name, err, c.name, c.err)
		}
	}
	p, _ := tk.Lookup("dash")
	if p.Has(ScopeIngest) || strings.Join(p.Customers(), ",") != "acme,beta" {
		t.Errorf("scopes of acme-dash: %+v", p)
	}
	if p, _ := tk.Lookup("s3cret"); !p.Has(ScopeIngest) || p.Has(ScopeAdmin) || len(p.Customers()) != 0 {
		t.Errorf("scopes of gw: %+v", p)
	}
}

func TestNewRejectsBadEntries(t *testing.T) {
	_, err := New([]TokenConfig{
		{Name: "", SHA256: Hash("a"), Scopes: []string{"ingest"}},
		{Name: "x", SHA256: "abc", Scopes: []string{"ingest"}},
		{Name: "x", SHA256: Hash("b"), Scopes: nil},
		{Name: "y", SHA256: Hash("c"), Scopes: []string{"root", "customer:"}},
	})
	if err == nil {
		t.Fatal("bad token entries accepted")
	}
	for _, want := range []string{"auth.tokens[0]: name is required", "auth.tokens[1] (x): sha256", "auth.tokens[2] (x): duplicate name", "at least one scope", `unknown scope "root"`, `unknown scope "customer:"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
}

func TestNewToken(t *testing.T) {
	a, err := NewToken()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := NewToken()
	if a == b || !strings.HasPrefix(a, "ml_") || len(a) < 40 {
		t.Fatalf("tokens %q %q", a, b)
	}
}
