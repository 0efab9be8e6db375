package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meterline/meterline/aggregate/limits"
)

// TestKeysRotate: the command prints a change that, pasted into the
// catalogue, is valid and rotates the key; bad requests are refused with
// the reason and change nothing.
func TestKeysRotate(t *testing.T) {
	dir := t.TempDir()
	const head = "plans: [{id: p, included_units: 10}]\ncustomers:\n"
	const acme = "  - id: acme\n    plan: p\n    keys: [key_a, key_b]\n"
	path := filepath.Join(dir, "catalogue.yaml")
	orig := head + acme + "  - {id: globex, plan: p, keys: [key_g]}\n"
	if err := os.WriteFile(path, []byte(orig), 0o600); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code := runCLI(t, "keys", "rotate", "--catalogue", path, "--customer", "acme", "--old", "key_a", "--new", "key_a2",
		"--overlap", "36h", "--at", "2026-12-07T17:00:00Z")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"+ key_a2  added", "~ key_a  expires_at 2026-12-09T05:00:00Z (overlap 36h)", "expires_at: 2026-12-09T05:00:00Z", "- key_a2", "is valid"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
	// Paste the printed customer into the file in place of the old one.
	i := strings.Index(stdout, "  - id: acme\n")
	j := strings.Index(stdout, "\nThe catalogue with this change")
	if i < 0 || j < i {
		t.Fatalf("no customer snippet in:\n%s", stdout)
	}
	snippet := strings.ReplaceAll(stdout[i:j+1], "\n  ", "\n")[2:]
	edited := strings.Replace(orig, acme, "  "+strings.ReplaceAll(strings.TrimSuffix(snippet, "\n"), "\n", "\n  ")+"\n    plan: p\n", 1)
	cat, err := limits.ParseCatalogue([]byte(edited))
	if err != nil {
		t.Fatalf("the printed change does not make a valid catalogue: %v\n%s", err, edited)
	}
	r := limits.NewRegistry(cat)
	if c, _, ok := r.KeyStateAt("key_a2", mustTime(t, "2026-12-08T00:00:00Z")); !ok || c != "acme" {
		t.Errorf("key_a2 is not acme's: %s %v\n%s", c, ok, edited)
	}
	if _, st, _ := r.KeyStateAt("key_a", mustTime(t, "2026-12-09T05:00:00Z")); st.StatusAt(mustTime(t, "2026-12-09T05:00:00Z")) != limits.KeyExpired {
		t.Errorf("key_a does not expire: %+v\n%s", st, edited)
	}

	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--customer", "acme", "--old", "key_a", "--new", "key_g"}, 1, `new key "key_g" is already customer "globex"'s`},
		{[]string{"--customer", "acme", "--old", "key_zz", "--new", "n"}, 1, `does not hold key "key_zz"`},
		{[]string{"--customer", "acme", "--old", "key_a", "--new", "n", "--overlap", "5000h"}, 1, "overlap 5000h0m0s is out of range"},
		{[]string{"--customer", "acme", "--old", "key_a", "--new", "n", "--at", "tomorrow"}, 1, `--at "tomorrow": not an RFC 3339 time`},
		{[]string{"--customer", "acme"}, 2, "missing --new, --old"},
		{[]string{"--customer", "acme", "--old", "key_a", "--new", "n", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"--customer", "acme", "--old", "key_a", "--new", "n", "--overlap", "soon"}, 2, "invalid value"},
	} {
		args := append([]string{"keys", "rotate", "--catalogue", path}, c.args...)
		_, stderr, code := runCLI(t, args...)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, %q; want %d and %q", c.args, code, stderr, c.code, c.want)
		}
	}
	// A catalogue that is invalid already is reported, not rotated.
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte(head+"  - {id: acme, plan: nope, keys: [key_a]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := runCLI(t, "keys", "rotate", "--catalogue", bad, "--customer", "acme", "--old", "key_a", "--new", "n"); code != 1 || !strings.Contains(stderr, `unknown plan "nope"`) {
		t.Errorf("invalid catalogue: exit %d %s", code, stderr)
	}
	if _, stderr, code := runCLI(t, "keys"); code != 2 || !strings.Contains(stderr, "Usage: meterline keys rotate") {
		t.Errorf("keys without a subcommand: exit %d %s", code, stderr)
	}
	if b, _ := os.ReadFile(path); string(b) != orig {
		t.Error("the catalogue file was written")
	}
}

func mustTime(t *testing.T, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
