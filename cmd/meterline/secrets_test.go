package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterline/meterline/auth"
	"github.com/meterline/meterline/internal/httpx"
	"github.com/meterline/meterline/internal/testenv"
)

// knownSecrets are the secrets the configuration had when structural
// redaction was introduced; the tag may not silently disappear from any.
var knownSecrets = []string{
	"kafka.sasl.password", "clickhouse.password", "privacy.ip_hash_secret",
	"limits.webhook_secret", "billing.stripe_api_key", "billing.webhook_secret",
}

// secretLike matches YAML names that hold a secret by their name.
var secretLike = regexp.MustCompile(`(^|_)(secret|password|passwd|api_key|private_key|credentials?)($|_)`)

// TestEverySecretIsTagged walks every field of Config: a string setting
// whose name says it is a secret must carry the secret tag, so that a new
// secret is redacted and readable from a file without anyone remembering
// to add it to a list.
func TestEverySecretIsTagged(t *testing.T) {
	var tagged []string
	for _, s := range secretFields() {
		tagged = append(tagged, s.name())
	}
	for _, want := range knownSecrets {
		if !slices.Contains(tagged, want) {
			t.Errorf("%s is not tagged secret", want)
		}
	}
	var walk func(reflect.Type, string)
	walk = func(rt reflect.Type, prefix string) {
		for i := 0; i < rt.NumField(); i++ {
			f := rt.Field(i)
			tag, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			name := strings.TrimPrefix(prefix+"."+tag, ".")
			if tag == "" && opts == "inline" {
				walk(f.Type, prefix)
				continue
			}
			if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeOf(time.Time{}) {
				walk(f.Type, name)
				continue
			}
			if f.Type.Kind() == reflect.String && secretLike.MatchString(tag) && f.Tag.Get(secretTag) != "true" {
				t.Errorf("%s looks like a secret but has no `secret:\"true\"` tag", name)
			}
		}
	}
	walk(reflect.TypeOf(Config{}), "")
}

// secretYAML writes a configuration that sets the secret at path (given as
// YAML keys) to the scalar value under key (the secret's name or its
// _file companion). Alerts and hash mode need secrets of 16 bytes or more.
func secretYAML(path []string, key, value string) string {
	var b strings.Builder
	for i, k := range path[:len(path)-1] {
		fmt.Fprintf(&b, "%s%s:\n", strings.Repeat("  ", i), k)
	}
	fmt.Fprintf(&b, "%s%s: %q\n", strings.Repeat("  ", len(path)-1), key, value)
	return b.String()
}

// TestConfigRedactsEverySecret: `meterline config` prints no secret's
// value, whichever is set, and shows that it is set.
func TestConfigRedactsEverySecret(t *testing.T) {
	for _, s := range secretFields() {
		t.Run(s.name(), func(t *testing.T) {
			value := "s3cret-value-of-" + strings.ReplaceAll(s.name(), ".", "-")
			p := writeFile(t, secretYAML(s.path, s.path[len(s.path)-1], value))
			var stdout, stderr bytes.Buffer
			if code := run([]string{"config", "--config", p}, &stdout, &stderr); code != 0 {
				t.Fatalf("exit %d: %s", code, stderr.String())
			}
			out := stdout.String()
			leaf := s.path[len(s.path)-1]
			if strings.Contains(out, value) || !strings.Contains(out, leaf+": <redacted>") {
				t.Fatalf("%s not redacted:\n%s", s.name(), out)
			}
		})
	}
}

// TestSecretsFromFiles: every secret may be read from <name>_file in YAML
// and METERLINE_<NAME>_FILE in the environment; one trailing newline is
// trimmed; both forms at once, an empty and a missing file are errors
// naming the setting.
func TestSecretsFromFiles(t *testing.T) {
	dir := t.TempDir()
	for _, s := range secretFields() {
		t.Run(s.name(), func(t *testing.T) {
			value := "from-file-" + strings.ReplaceAll(s.name(), ".", "-") + " with: yaml chars #"
			secretPath := filepath.Join(dir, s.name()+".txt")
			if err := os.WriteFile(secretPath, []byte(value+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			leaf := s.path[len(s.path)-1]
			get := func(c *Config) string {
				v := reflect.ValueOf(c).Elem()
				var got string
				walkSecrets(reflect.TypeOf(*c), nil, func(path []string, index []int) {
					if strings.Join(path, ".") == s.name() {
						got = v.FieldByIndex(index).String()
					}
				})
				return got
			}

			c, err := loadConfig(writeFile(t, secretYAML(s.path, leaf+"_file", secretPath)), nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := get(c); got != value {
				t.Fatalf("from YAML %s_file: %q, want %q", leaf, got, value)
			}
			c, err = loadConfig("", []string{s.env() + "_FILE=" + secretPath})
			if err != nil {
				t.Fatal(err)
			}
			if got := get(c); got != value {
				t.Fatalf("from %s_FILE: %q, want %q", s.env(), got, value)
			}

			both := secretYAML(s.path, leaf, "inline-value-1234567890") + strings.Repeat("  ", len(s.path)-1) + leaf + "_file: " + secretPath + "\n"
			if _, err := loadConfig(writeFile(t, both), nil); err == nil || !strings.Contains(err.Error(), s.name()+" and "+s.name()+"_file are both set") {
				t.Fatalf("both in YAML: %v", err)
			}
			if _, err := loadConfig("", []string{s.env() + "=x", s.env() + "_FILE=" + secretPath}); err == nil || !strings.Contains(err.Error(), s.env()+" and "+s.env()+"_FILE are both set") {
				t.Fatalf("both in the environment: %v", err)
			}
			empty := filepath.Join(dir, s.name()+".empty")
			if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := loadConfig(writeFile(t, secretYAML(s.path, leaf+"_file", empty)), nil); err == nil || !strings.Contains(err.Error(), s.name()+"_file: "+empty+" is empty") {
				t.Fatalf("empty file: %v", err)
			}
			missing := filepath.Join(dir, "absent")
			if _, err := loadConfig("", []string{s.env() + "_FILE=" + missing}); err == nil || !strings.Contains(err.Error(), s.env()+"_FILE") || !strings.Contains(err.Error(), "no such file") {
				t.Fatalf("missing file: %v", err)
			}
		})
	}
	// A _file that is not a path, and other errors beside a _file.
	if _, err := loadConfig(writeFile(t, "billing:\n  stripe_api_key_file: [a, b]\n"), nil); err == nil || !strings.Contains(err.Error(), "billing.stripe_api_key_file: want the path of a file") {
		t.Fatalf("list as a path: %v", err)
	}
	key := filepath.Join(dir, "key")
	if err := os.WriteFile(key, []byte("sk_test_from_file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadConfig(writeFile(t, "billing:\n  stripe_api_key_file: "+key+"\n  intervall: 1m\n"), nil); err == nil || !strings.Contains(err.Error(), "field intervall not found") || strings.Contains(err.Error(), "sk_test_from_file") {
		t.Fatalf("unknown key beside a _file: %v", err)
	}
	// A _file key of something that is not a secret stays unknown.
	if _, err := loadConfig(writeFile(t, "http:\n  addr_file: /etc/hosts\n"), nil); err == nil || !strings.Contains(err.Error(), "addr_file") {
		t.Fatalf("non-secret _file key: %v", err)
	}
}

// TestStripeAPIURLMustBeTLSUnlessLoopback: plain http to Stripe would send
// the secret key in clear text; only a loopback stripe-mock may use it.
func TestStripeAPIURLMustBeTLSUnlessLoopback(t *testing.T) {
	for url, ok := range map[string]bool{
		"https://api.stripe.com":   true,
		"http://127.0.0.1:12111":   true,
		"http://[::1]:12111":       true,
		"http://localhost:12111":   true,
		"http://api.stripe.com":    false,
		"http://10.0.0.5:12111":    false,
		"http://stripe-mock:12111": false,
	} {
		_, err := loadConfig(writeFile(t, "billing:\n  stripe_api_url: "+url+"\n"), nil)
		if err == nil {
			c, _ := loadConfig(writeFile(t, "billing:\n  stripe_api_url: "+url+"\n"), nil)
			err = c.Validate()
		}
		if ok && err != nil {
			t.Errorf("%s refused: %v", url, err)
		}
		if !ok && (err == nil || !strings.Contains(err.Error(), "billing.stripe_api_url") || !strings.Contains(err.Error(), "use https")) {
			t.Errorf("%s: %v, want a refusal naming billing.stripe_api_url", url, err)
		}
	}
}

// TestPlainHTTPListenerWarning: listening without TLS where other hosts
// can connect is logged as a warning; loopback or TLS is not.
func TestPlainHTTPListenerWarning(t *testing.T) {
	for _, c := range []struct {
		addr string
		tls  bool
		warn bool
	}{
		{"0.0.0.0:8080", false, true},
		{":8080", false, true},
		{"[::]:8080", false, true},
		{"192.0.2.10:8080", false, true},
		{"0.0.0.0:8443", true, false},
		{"127.0.0.1:8080", false, false},
		{"[::1]:8080", false, false},
		{"localhost:8080", false, false},
	} {
		var buf bytes.Buffer
		warnPlainHTTP(slog.New(slog.NewTextHandler(&buf, nil)), c.addr, c.tls)
		got := strings.Contains(buf.String(), "level=WARN") && strings.Contains(buf.String(), "without TLS")
		if got != c.warn {
			t.Errorf("%s tls=%v: warned %v, want %v (%q)", c.addr, c.tls, got, c.warn, buf.String())
		}
	}
}

// TestTokensFileInConfig: auth.tokens_file is validated with the inline
// tokens at load (a duplicate across both is refused), and a valid one is
// accepted.
func TestTokensFileInConfig(t *testing.T) {
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens.yaml")
	entry := func(name, tok string) string {
		return fmt.Sprintf("  - name: %s\n    sha256: %s\n    scopes: [ingest]\n", name, auth.Hash(tok))
	}
	cfg := writeFile(t, "auth:\n  tokens_file: "+tokens+"\n  tokens:\n"+entry("inline", "a"))
	if err := os.WriteFile(tokens, []byte("tokens:\n"+entry("edge", "b")), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"config", "--config", cfg}, &stdout, &stderr); code != 0 {
		t.Fatalf("valid tokens file: exit %d: %s", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), "reload_every: 10s") {
		t.Errorf("auth.reload_every default not shown:\n%s", stdout.String())
	}
	if err := os.WriteFile(tokens, []byte("tokens:\n"+entry("inline", "c")), 0o600); err != nil {
		t.Fatal(err)
	}
	stdout.Reset()
	stderr.Reset()
	if code := run([]string{"config", "--config", cfg}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "auth.tokens_file[0] (inline): duplicate name (also auth.tokens[0])") {
		t.Fatalf("duplicate across file and config: exit %d: %s", code, stderr.String())
	}
	if err := os.WriteFile(tokens, []byte("tokens: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	stderr.Reset()
	if code := run([]string{"config", "--config", cfg}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "auth.tokens_file "+tokens) {
		t.Fatalf("malformed tokens file: exit %d: %s", code, stderr.String())
	}
}

// TestTokenCommand: `token new` prints the token, its hash and an entry
// that loads as a tokens file, with an optional expiry; `token help`
// explains rotation; bad expiries are refused.
func TestTokenCommand(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"token", "new", "--name", "edge-2", "--scopes", "ingest", "--expires", "720h"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	out := stdout.String()
	tok := regexp.MustCompile(`ml_[A-Za-z0-9_-]{40,}`).FindString(out)
	if tok == "" || !strings.Contains(out, "sha256: "+auth.Hash(tok)) {
		t.Fatalf("token and hash not printed:\n%s", out)
	}
	_, entry, _ := strings.Cut(out, "(or to auth.tokens in the configuration file):\n")
	tk, err := auth.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tk.LoadFile([]byte("tokens:\n" + entry)); err != nil {
		t.Fatalf("printed entry is not a valid tokens file entry: %v\n%s", err, entry)
	}
	if p, ok := tk.Lookup(tok); !ok || p.Name != "edge-2" {
		t.Fatalf("printed token not accepted by its entry: %v", p)
	}
	if !strings.Contains(entry, "expires: ") {
		t.Fatalf("no expiry in the entry:\n%s", entry)
	}
	stdout.Reset()
	if code := run([]string{"token", "help"}, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), "Rotating a token") {
		t.Fatalf("token help: %d %s", code, stdout.String())
	}
	for _, bad := range []string{"-1h", "yesterday", "2001-01-01T00:00:00Z"} {
		stderr.Reset()
		if code := run([]string{"token", "new", "--name", "x", "--expires", bad}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "--expires") {
			t.Errorf("--expires %s: exit %d: %s", bad, code, stderr.String())
		}
	}
}

// TestServeTokensReloadAndExpiry: the tokens serve builds (openTokens)
// follow auth.tokens_file while running, count reloads in
// meterline_auth_tokens_reloads_total, and an expired token gets 401
// naming its expiry through the HTTP layer.
func TestServeTokensReloadAndExpiry(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tokens.yaml")
	write := func(content string) {
		t.Helper()
		if err := os.WriteFile(path+".tmp", []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
	}
	entry := func(name, tok, expires string) string {
		s := fmt.Sprintf("  - name: %s\n    sha256: %s\n    scopes: [admin]\n", name, auth.Hash(tok))
		if expires != "" {
			s += "    expires: " + expires + "\n"
		}
		return s
	}
	write("tokens:\n" + entry("old", "tok-old", "2001-01-01T00:00:00Z"))
	cfg, err := loadConfig(writeFile(t, "auth:\n  tokens_file: "+path+"\n  reload_every: 100ms\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	goRun := func(_ string, run func(context.Context) error) {
		wg.Add(1)
		go func() { defer wg.Done(); _ = run(ctx) }()
	}
	tokens, err := openTokens(cfg, reg, slog.New(slog.DiscardHandler), goRun)
	if err != nil {
		t.Fatal(err)
	}
	call := func(tok string) (int, string) {
		r := httptest.NewRequest("GET", "/v1/usage", nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		w := httptest.NewRecorder()
		if _, ok := httpx.Authenticate(w, r, tokens, auth.ScopeAdmin); ok {
			return 200, ""
		}
		return w.Code, w.Body.String()
	}
	if code, body := call("tok-old"); code != 401 || !strings.Contains(body, `token \"old\" expired at 2001-01-01T00:00:00Z`) {
		t.Fatalf("expired token: %d %s", code, body)
	}
	write("tokens:\n" + entry("old", "tok-old", "2001-01-01T00:00:00Z") + entry("new", "tok-new", ""))
	testenv.Eventually(t, 10*time.Second, func() error {
		if code, body := call("tok-new"); code != 200 {
			return fmt.Errorf("new token: %d %s", code, body)
		}
		return nil
	})
	reloads := 0.0
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "meterline_auth_tokens_reloads_total" {
			for _, m := range mf.GetMetric() {
				if m.GetLabel()[0].GetValue() == "success" {
					reloads = m.GetCounter().GetValue()
				}
			}
		}
	}
	if reloads != 1 {
		t.Fatalf("meterline_auth_tokens_reloads_total{result=success} = %v, want 1", reloads)
	}
}
