package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestShipCLIErrors: bad command lines and configuration files get a clear
// message and a non-zero exit, before anything is read or sent.
func TestShipCLIErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("endpoint: localhost\nfile: /x\nlisten: :1\nroutes: [\"/v1/{id\"]\nbatch_size: 99999\nsurprise: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	invalid := filepath.Join(dir, "invalid.yaml")
	if err := os.WriteFile(invalid, []byte("endpoint: localhost\nfile: /x\nlisten: :1\nroutes: [\"/v1/{id\"]\nbatch_size: 99999\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		code int
		want []string
	}{
		{[]string{"ship"}, 2, []string{"Usage: meterline ship caddy"}},
		{[]string{"ship", "nginx"}, 2, []string{`unknown ship source "nginx"`}},
		{[]string{"ship", "caddy"}, 2, []string{"--config is required"}},
		{[]string{"ship", "caddy", "--config", bad}, 1, []string{"surprise", "not found"}},
		{[]string{"ship", "caddy", "--config", invalid}, 1, []string{"endpoint:", "file and listen", "key_header: required", "routes[0]", "batch_size"}},
		{[]string{"ship", "caddy", "--config", filepath.Join(dir, "missing.yaml")}, 1, []string{"missing.yaml", "no such file"}},
		{[]string{"ship", "caddy", "--config", invalid, "--log-level", "loud"}, 2, []string{"--log-level"}},
		{[]string{"ship", "caddy", "--config", invalid, "extra"}, 2, []string{`unexpected argument "extra"`}},
	} {
		_, stderr, code := runCLI(t, c.args...)
		if code != c.code {
			t.Errorf("%v: exit %d, want %d\n%s", c.args, code, c.code, stderr)
		}
		for _, w := range c.want {
			if !strings.Contains(stderr, w) {
				t.Errorf("%v: stderr does not say %q:\n%s", c.args, w, stderr)
			}
		}
	}
	if _, stderr, code := runCLI(t, "ship", "caddy", "-h"); code != 0 || !strings.Contains(stderr, "-metrics-addr") {
		t.Errorf("ship caddy -h: exit %d\n%s", code, stderr)
	}
}
