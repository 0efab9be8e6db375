package auth

import (
	"strings"
	"testing"
)

// TestIngestBindings: a token's gateway and customers reach its
// principal; bindings on a token without the ingest scope, an over-long
// gateway and empty or repeated customers are refused, naming the entry.
func TestIngestBindings(t *testing.T) {
	tk, err := New([]TokenConfig{{Name: "edge", SHA256: Hash("t1"), Scopes: []string{"ingest"}, Gateway: "edge-eu-1", Customers: []string{"acme", "globex"}}})
	if err != nil {
		t.Fatal(err)
	}
	p, ok := tk.Lookup("t1")
	if !ok || p.Gateway != "edge-eu-1" || strings.Join(p.IngestCustomers, ",") != "acme,globex" {
		t.Fatalf("principal %+v", p)
	}
	_, err = New([]TokenConfig{
		{Name: "reader", SHA256: Hash("t2"), Scopes: []string{"admin"}, Gateway: "gw"},
		{Name: "long", SHA256: Hash("t3"), Scopes: []string{"ingest"}, Gateway: strings.Repeat("g", 129)},
		{Name: "dup", SHA256: Hash("t4"), Scopes: []string{"ingest"}, Customers: []string{"acme", "acme", ""}},
	})
	for _, want := range []string{
		`auth.tokens[0] (reader): gateway and customers bind an ingest token`,
		`auth.tokens[1] (long): gateway must be at most 128 bytes`,
		`auth.tokens[2] (dup): customers: "acme" listed twice`,
		`auth.tokens[2] (dup): customers: "" must be 1-128 bytes`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want one containing %q", err, want)
		}
	}
}
