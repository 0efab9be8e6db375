package limits

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meterline/meterline/internal/testenv"
)

// rawReceiver records every request with its signature header and answers
// 200, leaving verification to the test, which checks each delivery
// against several secrets.
type rawReceiver struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []signedDelivery
}

type signedDelivery struct {
	header string
	body   []byte
}

func newRawReceiver(t *testing.T) *rawReceiver {
	rc := &rawReceiver{}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		rc.got = append(rc.got, signedDelivery{header: r.Header.Get(HeaderSignature), body: body})
		rc.mu.Unlock()
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *rawReceiver) wait(t *testing.T, n int) []signedDelivery {
	t.Helper()
	testenv.Eventually(t, 20*time.Second, func() error {
		rc.mu.Lock()
		defer rc.mu.Unlock()
		if len(rc.got) < n {
			return fmt.Errorf("%d of %d deliveries", len(rc.got), n)
		}
		return nil
	})
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]signedDelivery(nil), rc.got...)
}

func writeSecrets(t *testing.T, path string, secrets ...string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte("# signing secrets\n"+strings.Join(secrets, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func verifies(secret string, d signedDelivery) bool {
	return VerifySignature(secret, d.header, d.body, 0) == nil
}

// TestAlertsSignedPerCustomerWithRotation: each customer's alerts are
// signed with its own secret, so customer A's receiver rejects what B's
// secret signs, and neither verifies under the shared secret; while A's
// secret is rotated its alerts carry both signatures, and after the old
// secret is removed only the new one verifies.
func TestAlertsSignedPerCustomerWithRotation(t *testing.T) {
	db := requireDB(t)
	dir := t.TempDir()
	const (
		aOld = "customer-a-old-secret-0001"
		aNew = "customer-a-new-secret-0002"
		bKey = "customer-b-own-secret-0003"
	)
	aFile, bFile := filepath.Join(dir, "a.secrets"), filepath.Join(dir, "b.secrets")
	writeSecrets(t, aFile, aOld)
	writeSecrets(t, bFile, bKey)
	ra, rb := newRawReceiver(t), newRawReceiver(t)
	a, b := testenv.Unique("sig_a"), testenv.Unique("sig_b")
	cat := mustParse(t, fmt.Sprintf(`plans:
  - id: pro
    included_units: 1000
    alert_thresholds: [0.8, 1.0]
customers:
  - id: %s
    plan: pro
    alert_webhook: %s
    alert_webhook_secrets_file: %s
    keys: [%s_key]
  - id: %s
    plan: pro
    alert_webhook: %s
    alert_webhook_secrets_file: %s
    keys: [%s_key]
`, a, ra.srv.URL, aFile, a, b, rb.srv.URL, bFile, b))
	src := &settableSource{}
	now := time.Now().UTC()
	v := newTestView(t, alertConfig(), NewRegistry(cat), src, db)
	v.now = func() time.Time { return now }

	src.set(a, 800)
	src.set(b, 800)
	refresh(t, v)
	da, db0 := ra.wait(t, 1)[0], rb.wait(t, 1)[0]
	if !verifies(aOld, da) || !verifies(bKey, db0) {
		t.Fatalf("own secrets do not verify: A %q, B %q", da.header, db0.header)
	}
	// A's receiver rejects what B's secret signs, whatever the body.
	forged := Sign(bKey, time.Now(), da.body)
	if err := VerifySignature(aOld, forged, da.body, 0); !errors.Is(err, ErrSignatureInvalid) {
		t.Fatalf("A's receiver accepted a payload signed with B's secret: %v", err)
	}
	if verifies(aOld, db0) || verifies(bKey, da) {
		t.Fatal("one customer's delivery verifies under the other's secret")
	}
	if verifies(testSecret, da) || verifies(testSecret, db0) {
		t.Fatal("a customer with its own secrets is still signed with the shared secret")
	}
	if n := strings.Count(da.header, "v1="); n != 1 {
		t.Fatalf("%d signatures before the rotation: %q", n, da.header)
	}

	// Rotation: old and new side by side; the next alert carries both.
	writeSecrets(t, aFile, aOld, aNew)
	src.set(a, 1000)
	refresh(t, v)
	rot := ra.wait(t, 2)[1]
	if n := strings.Count(rot.header, "v1="); n != 2 || !verifies(aOld, rot) || !verifies(aNew, rot) {
		t.Fatalf("during the rotation: %d signatures %q, old verifies %v, new verifies %v", n, rot.header, verifies(aOld, rot), verifies(aNew, rot))
	}
	v.Close()

	// After: only the new secret; the next period's alert verifies only
	// under it.
	writeSecrets(t, aFile, aNew)
	next := now.AddDate(0, 1, 0)
	v2 := newTestView(t, alertConfig(), NewRegistry(cat), src, db)
	v2.now = func() time.Time { return next }
	refresh(t, v2)
	for _, after := range ra.wait(t, 4)[2:] { // both thresholds of the next period
		if !verifies(aNew, after) || verifies(aOld, after) || strings.Count(after.header, "v1=") != 1 {
			t.Fatalf("after the rotation: %q (new %v, old %v)", after.header, verifies(aNew, after), verifies(aOld, after))
		}
	}
}

// TestCatalogueRejectsBadSecretsFiles: a secrets file that is missing,
// empty, short, repeated or too long makes the catalogue invalid, and the
// error names the customer and the line, never the secret.
func TestCatalogueRejectsBadSecretsFiles(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	long := "0123456789abcdef-"
	cases := map[string]struct{ path, want string }{
		"missing":   {filepath.Join(dir, "absent"), "no such file"},
		"empty":     {file("empty", "\n# only a comment\n\n"), "no secret in the file"},
		"short":     {file("short", "tooshort\n"), "line 1: a secret must be at least 16 bytes"},
		"twice":     {file("twice", long+"1\n"+long+"1\n"), "line 2: the same secret twice"},
		"spaces":    {file("spaces", long+"1 "+long+"2\n"), "line 1: a secret must not contain spaces"},
		"too many":  {file("many", long+"1\n"+long+"2\n"+long+"3\n"+long+"4\n"), "4 secrets; at most 3"},
		"too large": {file("large", strings.Repeat("x", 20<<10)), "larger than"},
	}
	for name, c := range cases {
		_, err := ParseCatalogue([]byte(fmt.Sprintf("plans:\n  - id: p\ncustomers:\n  - id: acme\n    plan: p\n    alert_webhook: https://hooks.example/a\n    alert_webhook_secrets_file: %s\n", c.path)))
		if err == nil || !strings.Contains(err.Error(), `customer "acme": alert_webhook_secrets_file: `) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error containing %q", name, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), long) {
			t.Errorf("%s: the error shows the secret: %v", name, err)
		}
	}
	ok := file("ok", "# rotation in progress\n"+long+"old\n\n"+long+"new\n")
	if got, err := ReadWebhookSecrets(ok); err != nil || len(got) != 2 || got[0] != long+"old" || got[1] != long+"new" {
		t.Fatalf("valid file: %q %v", got, err)
	}
}

// TestSignAllVerifiesUnderEachSecret: a header signed with several secrets
// verifies under each of them and under no other.
func TestSignAllVerifiesUnderEachSecret(t *testing.T) {
	body := []byte(`{"type":"threshold_crossed"}`)
	now := time.Now()
	h := SignAll([]string{"first-secret-0123456789", "second-secret-012345678"}, now, body)
	for _, s := range []string{"first-secret-0123456789", "second-secret-012345678"} {
		if err := VerifySignature(s, h, body, 0); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
	if err := VerifySignature("third-secret-0123456789", h, body, 0); !errors.Is(err, ErrSignatureInvalid) {
		t.Errorf("another secret: %v", err)
	}
	if h != Sign("first-secret-0123456789", now, body)+strings.TrimPrefix(SignAll([]string{"second-secret-012345678"}, now, body), "t="+fmt.Sprint(now.Unix())) {
		t.Errorf("SignAll is not Sign with more v1 pairs: %q", h)
	}
}
