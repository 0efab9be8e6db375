package ingest

import (
	"slices"
	"testing"

	"github.com/meterline/meterline/schemas"
)

// TestDenyPropertyPatterns: the default deny-list drops every property
// whose name contains email, token, password, secret, authorization or
// cookie, in any case, and keeps the others; a configured list replaces it
// and its patterns match the whole key.
func TestDenyPropertyPatterns(t *testing.T) {
	props := func() map[string]string {
		return map[string]string{
			"email": "a@b.c", "User_Email": "a@b.c", "X-Auth-Token": "t", "refresh_token": "t", "TOKEN": "t",
			"db_password": "p", "Password": "p", "client_secret": "s", "SecretKey": "s", "Authorization": "Bearer x",
			"proxy-authorization": "Basic x", "Cookie": "sid=1", "set_cookie": "sid=1", "phone": "+1555", "card_number": "4242",
			"name": "Ann", "cvv": "123",
			"plan": "pro", "region": "eu", "sdk": "go/1.2", "hostname": "h1", "company": "acme",
		}
	}
	kept := []string{"company", "hostname", "plan", "region", "sdk"}
	e := schemas.Event{Properties: props()}
	if err := (Anonymizer{}).WithDefaults().Apply(&e); err != nil {
		t.Fatal(err)
	}
	var got []string
	for k := range e.Properties {
		got = append(got, k)
	}
	slices.Sort(got)
	if !slices.Equal(got, kept) {
		t.Fatalf("default deny-list kept %v, want %v", got, kept)
	}

	custom := Anonymizer{DenyProperties: []string{"X-*", "*_id", "tenant"}}.WithDefaults()
	if err := custom.Validate(); err != nil {
		t.Fatal(err)
	}
	e = schemas.Event{Properties: map[string]string{"x-request": "1", "X-Forwarded-For": "1", "user_id": "1", "Tenant": "1",
		"tenant_name": "1", "email": "kept: the list replaces the defaults", "idx": "1"}}
	if err := custom.Apply(&e); err != nil {
		t.Fatal(err)
	}
	if len(e.Properties) != 3 || e.Properties["tenant_name"] == "" || e.Properties["email"] == "" || e.Properties["idx"] == "" {
		t.Fatalf("custom deny-list left %v", e.Properties)
	}

	for _, c := range []struct {
		pattern, key string
		want         bool
	}{
		{"email", "email", true}, {"email", "emails", false}, {"*mail", "email", true}, {"*mail", "mailer", false},
		{"mail*", "mailer", true}, {"*a*b*", "xaxb", true}, {"*a*b*", "xbxa", false}, {"a*a", "a", false},
		{"a*a", "aa", true}, {"*tok*en*", "mytokenx", true}, {"**", "", true},
	} {
		if got := DenyProperty(c.pattern, c.key); got != c.want {
			t.Errorf("DenyProperty(%q, %q) = %v", c.pattern, c.key, got)
		}
	}
	for _, bad := range []string{"*", "", "**"} {
		if err := (Anonymizer{DenyProperties: []string{"plan", bad}}).WithDefaults().Validate(); err == nil {
			t.Errorf("deny pattern %q accepted", bad)
		}
	}
}
