package limits

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meterline/meterline/internal/testenv"
)

const validCatalogue = `
plans:
  - id: pro
    included_units: 100000        # per billing period
    hard_limit: 150000
    alert_thresholds: [1.0, 0.8]
  - id: free
    included_units: 1000
customers:
  - id: acme
    plan: pro
    alert_webhook: https://hooks.acme.example/meterline
    keys: [key_live_1, key_live_2]
  - id: globex
    plan: free
    alert_webhook: http://127.0.0.1:9999/hook
    keys: [key_g]
  - id: initech
    plan: free
`

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func mustParse(t testing.TB, s string) *Catalogue {
	t.Helper()
	c, err := ParseCatalogue([]byte(s))
	if err != nil {
		t.Fatalf("parse catalogue: %v", err)
	}
	return c
}

func TestLoadRegistryValid(t *testing.T) {
	path := writeFile(t, t.TempDir(), "catalogue.yaml", validCatalogue)
	c, err := LoadRegistry(path)
	if err != nil {
		t.Fatal(err)
	}
	r := NewRegistry(c)
	for key, want := range map[string]string{"key_live_1": "acme", "key_live_2": "acme", "key_g": "globex"} {
		if got, ok := r.CustomerOfKey(key); !ok || got != want {
			t.Errorf("CustomerOfKey(%q) = %q, %v; want %q", key, got, ok, want)
		}
	}
	if _, ok := r.CustomerOfKey("key_nobody"); ok {
		t.Error("an unlisted key resolved")
	}
	cu, ok := r.Customer("acme")
	if !ok || cu.Plan != "pro" || cu.AlertWebhook != "https://hooks.acme.example/meterline" || len(cu.Keys) != 2 {
		t.Fatalf("Customer(acme) = %+v, %v", cu, ok)
	}
	cu.Keys[0] = "changed" // a copy: the registry must not see it
	if got, _ := r.CustomerOfKey("key_live_1"); got != "acme" {
		t.Error("changing a returned customer changed the registry")
	}
	if again, _ := r.Customer("acme"); again.Keys[0] != "key_live_1" {
		t.Error("Customer returned the shared Keys slice")
	}
	p, ok := r.Plan("pro")
	if !ok || p.IncludedUnits != 100000 || p.HardLimit != 150000 || len(p.AlertThresholds) != 2 {
		t.Fatalf("Plan(pro) = %+v, %v", p, ok)
	}
	if _, ok := r.Plan("gold"); ok {
		t.Error("an undefined plan was found")
	}
	if got := r.Customers(); len(got) != 3 || got[0].ID != "acme" || got[2].ID != "initech" {
		t.Errorf("Customers() = %+v", got)
	}
	if NewRegistry(nil).Customers() == nil {
		// An empty slice, not nil, so it marshals as [].
		t.Error("empty registry: Customers() is nil")
	}
}

func TestCatalogueReportsEveryErrorAtOnce(t *testing.T) {
	bad := `
plans:
  - id: pro
    included_units: 100
    hard_limit: 50
    alert_thresholds: [0, 0.5, 0.5, 11]
  - id: pro
    included_units: -1
  - id: ""
    included_units: 1
  - id: noinc
    alert_thresholds: [0.8]
  - id: nan
    included_units: .nan
customers:
  - id: acme
    plan: gold
    alert_webhook: http://hooks.acme.example/x
    keys: [k1, k1, ""]
  - id: acme
    plan: pro
    keys: [k2]
  - id: globex
    alert_webhook: ftp://example.com/
    keys: [k2]
  - id: "tab\there"
    plan: pro
    alert_webhook: https://user:pw@example.com/
  - id: ` + strings.Repeat("x", 129) + `
    plan: pro
`
	_, err := ParseCatalogue([]byte(bad))
	if err == nil {
		t.Fatal("an invalid catalogue was accepted")
	}
	msg := err.Error()
	for _, want := range []string{
		`plan "pro": hard_limit 50 is below included_units 100`,
		`plan "pro": alert threshold 0 is not in (0, 10]`,
		`plan "pro": alert threshold 0.5 listed twice`,
		`plan "pro": alert threshold 11 is not in (0, 10]`,
		`plan "pro": defined twice`,
		`plan "pro": included_units -1 must be a number`,
		`plans[2]: id is empty`,
		`plan "noinc": alert_thresholds need included_units > 0`,
		`plan "nan": included_units NaN must be a number`,
		`customer "acme": unknown plan "gold"`,
		`customer "acme": alert_webhook: http is allowed for localhost only`,
		`customer "acme": key "k1" listed twice`,
		`customer "acme": keys[2] is empty`,
		`customer "acme": defined twice`,
		`customer "globex": plan is missing`,
		`customer "globex": alert_webhook: scheme "ftp" is not https`,
		`key "k2" belongs to two customers: "acme" and "globex"`,
		`customers[3]: id contains control characters`,
		`alert_webhook: must not carry credentials`,
		`customers[4]: id is longer than 128 bytes`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("error was:\n%s", msg)
	}
}

func TestCatalogueRejectsHostileInput(t *testing.T) {
	dir := t.TempDir()
	var bomb bytes.Buffer
	bomb.WriteString("customers:\n  - id: a\n    plan: p\n    keys:\n      - &a0 [k,k,k,k,k,k,k,k,k,k]\n")
	for i := 1; i < 12; i++ {
		fmt.Fprintf(&bomb, "      - &a%d [", i)
		for j := range 10 {
			if j > 0 {
				bomb.WriteString(",")
			}
			fmt.Fprintf(&bomb, "*a%d", i-1)
		}
		bomb.WriteString("]\n")
	}

	for name, c := range map[string]struct{ content, want string }{
		"alias bomb":        {bomb.String(), "a key is an id or a mapping"}, // typed fields stop the expansion at the first level
		"repeated alias":    {"plans: [{id: p}]\ncustomers:\n  - &c {id: a, plan: p, keys: [k]}\n" + strings.Repeat("  - *c\n", 20000), "more"},
		"deep nesting":      {"plans: " + strings.Repeat("[", 50000) + strings.Repeat("]", 50000), "exceeded max depth"},
		"deep mappings":     {strings.Repeat("{a: ", 50000) + strings.Repeat("}", 50000), "exceeded max depth"},
		"unknown field":     {"plans: []\ncustomers: []\nowner: me\n", "field owner not found"},
		"unknown nested":    {"plans:\n  - id: p\n    price: 10\n", "field price not found"},
		"two documents":     {"plans: []\n---\nplans: []\n", "more than one YAML document"},
		"empty":             {"", "empty"},
		"comments only":     {"# nothing here\n", "empty"},
		"not yaml":          {"\x00\x01\x02\xff\xfe", "control characters"},
		"wrong type":        {"plans: {id: pro}\n", "cannot unmarshal"},
		"infinite units":    {"plans:\n  - id: p\n    included_units: .inf\n", "+Inf must be a number"},
		"duplicate mapping": {"plans: []\nplans: []\n", "already defined"},
	} {
		t.Run(name, func(t *testing.T) {
			p := writeFile(t, dir, strings.ReplaceAll(name, " ", "_")+".yaml", c.content)
			cat, err := LoadRegistry(p)
			switch {
			case err == nil:
				t.Fatalf("accepted: %+v", cat)
			case !strings.Contains(err.Error(), c.want):
				t.Fatalf("error %q lacks %q", err, c.want)
			case len(err.Error()) > 4000:
				t.Errorf("error of %d bytes; a hostile file must not flood the log", len(err.Error()))
			}
		})
	}

	t.Run("over the size cap", func(t *testing.T) {
		p := filepath.Join(dir, "huge.yaml")
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		line := []byte("# " + strings.Repeat("x", 1021) + "\n")
		for range MaxCatalogueBytes/len(line) + 2 {
			if _, err := f.Write(line); err != nil {
				t.Fatal(err)
			}
		}
		f.Close()
		_, err = LoadRegistry(p)
		if err == nil || !strings.Contains(err.Error(), "larger than") {
			t.Fatalf("got %v, want a size error", err)
		}
	})
	t.Run("missing file", func(t *testing.T) {
		if _, err := LoadRegistry(filepath.Join(dir, "absent.yaml")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("got %v, want a not-exist error", err)
		}
	})
	t.Run("empty lists are an empty catalogue", func(t *testing.T) {
		c := mustParse(t, "plans: []\ncustomers: []\n")
		if len(c.Plans)+len(c.Customers) != 0 {
			t.Fatal(c)
		}
	})
}

func TestWatchFileReloadsAndKeepsTheOldCatalogueOnError(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "catalogue.yaml", validCatalogue)
	c, err := LoadRegistry(path)
	if err != nil {
		t.Fatal(err)
	}
	r := NewRegistry(c)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { WatchFile(ctx, path, r, 10*time.Millisecond, testLog()); close(done) }()
	defer func() { cancel(); <-done }()

	replace := func(content string) {
		t.Helper()
		tmp := writeFile(t, dir, "next.yaml.tmp", content)
		if err := os.Rename(tmp, path); err != nil { // atomic, as documented
			t.Fatal(err)
		}
	}
	success := func() float64 { return testutil.ToFloat64(r.reloads.WithLabelValues("success")) }
	failed := func() float64 { return testutil.ToFloat64(r.reloads.WithLabelValues("error")) }

	// polled waits until the watcher has completed two more polls than
	// now, so at least one poll began after this point.
	polled := func() {
		t.Helper()
		n := r.polls.Load()
		testenv.Eventually(t, 5*time.Second, func() error {
			if r.polls.Load() < n+2 {
				return errors.New("the watcher has not polled yet")
			}
			return nil
		})
	}

	// An unchanged file (same content, even touched) is not a reload.
	polled()
	now := time.Now()
	if err := os.Chtimes(path, now, now); err != nil {
		t.Fatal(err)
	}
	polled()
	if success() != 0 || failed() != 0 {
		t.Fatalf("reloads without a change: success %v, error %v", success(), failed())
	}

	replace(strings.Replace(validCatalogue, "keys: [key_g]", "keys: [key_g, key_new]", 1))
	testenv.Eventually(t, 5*time.Second, func() error {
		if got, ok := r.CustomerOfKey("key_new"); !ok || got != "globex" {
			return errors.New("key_new not loaded yet")
		}
		return nil
	})
	if success() != 1 {
		t.Errorf("success reloads = %v, want 1", success())
	}

	replace(validCatalogue + "  - id: broken\n    plan: nowhere\n")
	testenv.Eventually(t, 5*time.Second, func() error {
		if failed() < 1 {
			return errors.New("bad file not seen yet")
		}
		return nil
	})
	polled() // more polls of the same bad file
	if failed() != 1 {
		t.Errorf("error reloads = %v, want 1 (logged once per content)", failed())
	}
	if got, ok := r.CustomerOfKey("key_new"); !ok || got != "globex" {
		t.Fatal("a bad file replaced the catalogue")
	}
	if _, ok := r.Customer("broken"); ok {
		t.Fatal("a bad file's customer is visible")
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if failed() < 2 {
			return errors.New("missing file not seen yet")
		}
		return nil
	})
	if _, ok := r.CustomerOfKey("key_new"); !ok {
		t.Fatal("a missing file emptied the catalogue")
	}

	replace(strings.Replace(validCatalogue, "id: initech", "id: initech2", 1))
	testenv.Eventually(t, 5*time.Second, func() error {
		if _, ok := r.Customer("initech2"); !ok {
			return errors.New("fixed file not loaded yet")
		}
		return nil
	})
	if _, ok := r.CustomerOfKey("key_new"); ok {
		t.Error("the new catalogue still has the old key")
	}
}

// TestLookupDuringSwap runs lookups and catalogue swaps at once; under
// -race it proves readers and Swap share nothing unsafely, and every
// answer comes from one whole catalogue.
func TestLookupDuringSwap(t *testing.T) {
	a := mustParse(t, validCatalogue)
	b := mustParse(t, strings.NewReplacer("plan: pro", "plan: free", "key_live_1", "key_b_1").Replace(validCatalogue))
	r := NewRegistry(a)
	v := newTestView(t, Config{}, r, fixedSource{"acme": 10}, nil)
	refresh(t, v)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				l, err := v.Lookup("key_live_2", time.Now())
				if err != nil {
					t.Error(err)
					return
				}
				// Plan and included units must come from the same catalogue.
				if (l.PlanID == "pro") != (l.Included == 100000) {
					t.Errorf("torn read: %+v", l)
					return
				}
				_, _ = r.CustomerOfKey("key_live_1")
				_ = r.Customers()
			}
		})
	}
	for i := range 2000 {
		if i%2 == 0 {
			r.Swap(b)
		} else {
			r.Swap(a)
		}
	}
	close(stop)
	wg.Wait()
}
