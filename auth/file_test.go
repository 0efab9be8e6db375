package auth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meterline/meterline/internal/testenv"
)

func authHeader(tok string) *http.Request {
	r, _ := http.NewRequest("GET", "/", nil)
	r.Header.Set("Authorization", "Bearer "+tok)
	return r
}

func tokensYAML(entries ...string) string {
	return "tokens:\n" + strings.Join(entries, "")
}

func tokenEntry(name, tok, scope string, expires string) string {
	s := fmt.Sprintf("  - name: %s\n    sha256: %s\n    scopes: [%s]\n", name, Hash(tok), scope)
	if expires != "" {
		s += "    expires: " + expires + "\n"
	}
	return s
}

// syncBuffer is a log sink read while the watcher writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// replaceFile writes content next to path and renames it over path, as the
// documentation asks of operators.
func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestTokensFileRotationWithoutRestart: a token is rotated by adding the
// new one to the file (both valid), then removing the old one; the inline
// tokens of the configuration stay valid throughout; an invalid edit keeps
// the tokens in force and is logged.
func TestTokensFileRotationWithoutRestart(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tokens.yaml")
	replaceFile(t, path, tokensYAML(tokenEntry("edge-1", "old-secret", "ingest", "")))
	tk, err := New([]TokenConfig{{Name: "inline-admin", SHA256: Hash("inline"), Scopes: []string{"admin"}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := tk.LoadFilePath(path); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	var mu sync.Mutex
	results := map[string]int{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		tk.WatchFile(ctx, path, 5*time.Millisecond, slog.New(slog.NewTextHandler(&logs, nil)), func(r string) {
			mu.Lock()
			results[r]++
			mu.Unlock()
		})
		close(done)
	}()
	defer func() { cancel(); <-done }()
	count := func(r string) int { mu.Lock(); defer mu.Unlock(); return results[r] }
	name := func(tok string) string {
		p, err := tk.Authenticate(authHeader(tok))
		if err != nil {
			return err.Error()
		}
		return p.Name
	}

	if got := name("old-secret"); got != "edge-1" {
		t.Fatalf("old token before rotation: %s", got)
	}
	// Rotation, step 1: the new token is added; both are valid.
	replaceFile(t, path, tokensYAML(tokenEntry("edge-1", "old-secret", "ingest", ""), tokenEntry("edge-1-next", "new-secret", "ingest", "")))
	testenv.Eventually(t, 10*time.Second, func() error {
		if got := name("new-secret"); got != "edge-1-next" {
			return fmt.Errorf("new token not loaded yet: %s", got)
		}
		return nil
	})
	if got := name("old-secret"); got != "edge-1" {
		t.Fatalf("old token during rotation: %s", got)
	}
	// An invalid edit (the same name twice) changes nothing and is logged.
	replaceFile(t, path, tokensYAML(tokenEntry("edge-1", "old-secret", "ingest", ""), tokenEntry("edge-1", "third", "ingest", "")))
	testenv.Eventually(t, 10*time.Second, func() error {
		if count("error") < 1 {
			return errors.New("invalid file not seen yet")
		}
		return nil
	})
	if got := name("new-secret"); got != "edge-1-next" {
		t.Fatalf("an invalid file dropped a token in force: %s", got)
	}
	if got := name("third"); got != ErrInvalidToken.Error() {
		t.Fatalf("a token of an invalid file is valid: %s", got)
	}
	if l := logs.String(); !strings.Contains(l, "tokens file rejected; keeping the previous tokens") || !strings.Contains(l, "duplicate name") {
		t.Fatalf("log does not explain the rejection:\n%s", l)
	}
	// Rotation, step 2: the old token is removed.
	replaceFile(t, path, tokensYAML(tokenEntry("edge-1-next", "new-secret", "ingest", "")))
	testenv.Eventually(t, 10*time.Second, func() error {
		if got := name("old-secret"); got != ErrInvalidToken.Error() {
			return fmt.Errorf("old token still valid: %s", got)
		}
		return nil
	})
	if got := name("new-secret"); got != "edge-1-next" {
		t.Fatalf("new token after rotation: %s", got)
	}
	if got := name("inline"); got != "inline-admin" {
		t.Fatalf("inline token lost by reloads: %s", got)
	}
	if count("success") != 2 || count("error") != 1 {
		t.Fatalf("reloads: %v, want 2 successes and 1 error", results)
	}
}

// TestTokenExpiry: an expired token gets a clear error naming the expiry,
// a token before its expiry works.
func TestTokenExpiry(t *testing.T) {
	exp := time.Date(2026, 1, 31, 0, 0, 0, 0, time.UTC)
	tk, err := New(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tk.LoadFile([]byte(tokensYAML(tokenEntry("old", "tok-old", "ingest", exp.Format(time.RFC3339)), tokenEntry("new", "tok-new", "ingest", "")))); err != nil {
		t.Fatal(err)
	}
	now := exp.Add(-time.Second)
	tk.now = func() time.Time { return now }
	if p, err := tk.Authenticate(authHeader("tok-old")); err != nil || p.Name != "old" {
		t.Fatalf("before expiry: %v %v", p, err)
	}
	now = exp
	_, err = tk.Authenticate(authHeader("tok-old"))
	if !errors.Is(err, ErrExpiredToken) || !strings.Contains(err.Error(), `"old" expired at 2026-01-31T00:00:00Z`) {
		t.Fatalf("at expiry: %v", err)
	}
	if _, ok := tk.Lookup("tok-old"); ok {
		t.Fatal("Lookup finds an expired token")
	}
	if p, err := tk.Authenticate(authHeader("tok-new")); err != nil || p.Name != "new" {
		t.Fatalf("token without expiry: %v %v", p, err)
	}
}

// TestTokensRefuseDuplicates: the same name or the same hash twice, within
// the file or across the file and the inline tokens, is refused naming
// both entries, and nothing of the file is loaded.
func TestTokensRefuseDuplicates(t *testing.T) {
	if _, err := New([]TokenConfig{
		{Name: "a", SHA256: Hash("same"), Scopes: []string{"ingest"}},
		{Name: "b", SHA256: strings.ToUpper(Hash("same")), Scopes: []string{"admin"}},
	}); err == nil || !strings.Contains(err.Error(), "auth.tokens[1] (b): duplicate sha256 (the same token as auth.tokens[0] (a))") {
		t.Fatalf("inline duplicate hash: %v", err)
	}
	tk, err := New([]TokenConfig{{Name: "inline", SHA256: Hash("i"), Scopes: []string{"admin"}}})
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct{ file, want string }{
		"name in file":     {tokensYAML(tokenEntry("x", "1", "ingest", ""), tokenEntry("x", "2", "ingest", "")), "auth.tokens_file[1] (x): duplicate name (also auth.tokens_file[0])"},
		"hash in file":     {tokensYAML(tokenEntry("x", "1", "ingest", ""), tokenEntry("y", "1", "ingest", "")), "auth.tokens_file[1] (y): duplicate sha256"},
		"name with inline": {tokensYAML(tokenEntry("inline", "2", "ingest", "")), "auth.tokens_file[0] (inline): duplicate name (also auth.tokens[0])"},
		"hash with inline": {tokensYAML(tokenEntry("z", "i", "ingest", "")), "auth.tokens_file[0] (z): duplicate sha256 (the same token as auth.tokens[0] (inline))"},
		"empty":            {"", "the document is empty"},
		"unknown field":    {"tokens:\n  - name: x\n    hash: abc\n", "field hash not found"},
		"not a list":       {"tokens: edge\n", "cannot unmarshal"},
		"bad expiry":       {"tokens:\n  - name: x\n    sha256: " + Hash("1") + "\n    scopes: [ingest]\n    expires: tomorrow\n", "expires: parsing time \"tomorrow\""},
		"two documents":    {"tokens: []\n---\ntokens: []\n", "more than one YAML document"},
		"bad scope":        {tokensYAML(tokenEntry("x", "1", "root", "")), `unknown scope "root"`},
		"too large":        {strings.Repeat("#", MaxTokensFileBytes+1), "larger than"},
	}
	for name, c := range cases {
		if _, err := tk.LoadFile([]byte(c.file)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error containing %q", name, err, c.want)
		}
	}
	if tk.Len() != 1 {
		t.Fatalf("a refused file changed the tokens: %d in force", tk.Len())
	}
	if n, err := tk.LoadFile([]byte("tokens: []\n")); err != nil || n != 0 || tk.Len() != 1 {
		t.Fatalf("empty list: %d, %v", n, err)
	}
}
