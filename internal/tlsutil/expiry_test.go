package tlsutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// writeCert writes a self-signed certificate expiring at notAfter, with its
// key first when keyFirst (a combined key+cert file), and returns its path.
func writeCert(t *testing.T, notAfter time.Time, keyFirst bool) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "expiry-test"},
		NotBefore: notAfter.Add(-24 * time.Hour), NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	var out []byte
	if keyFirst {
		out = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	}
	out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	p := filepath.Join(t.TempDir(), "cert.pem")
	if err := os.WriteFile(p, out, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRegisterExpiry(t *testing.T) {
	a := time.Date(2027, 3, 1, 12, 0, 0, 0, time.UTC)
	b := time.Date(2026, 12, 24, 0, 0, 0, 0, time.UTC)
	fa, fb := writeCert(t, a, false), writeCert(t, b, true)
	reg := prometheus.NewPedanticRegistry()
	if err := RegisterExpiry(reg, fa, "", fb, fa); err != nil {
		t.Fatal(err)
	}
	want := `# HELP meterline_tls_certificate_expiry_timestamp_seconds Expiry (NotAfter, Unix seconds) of each TLS certificate this process presents, by file.
# TYPE meterline_tls_certificate_expiry_timestamp_seconds gauge
meterline_tls_certificate_expiry_timestamp_seconds{file="` + fa + `"} 1803902400
meterline_tls_certificate_expiry_timestamp_seconds{file="` + fb + `"} 1798070400
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}

func TestRegisterExpiryNothingOrBad(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	if err := RegisterExpiry(reg, "", ""); err != nil {
		t.Fatal(err)
	}
	if n, _ := testutil.GatherAndCount(reg); n != 0 {
		t.Fatalf("no certificate, yet %d series", n)
	}
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.pem")
	_ = os.WriteFile(junk, []byte("not a certificate"), 0o600)
	keyOnly := filepath.Join(dir, "key.pem")
	_ = os.WriteFile(keyOnly, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte{1, 2, 3}}), 0o600)
	broken := filepath.Join(dir, "broken.pem")
	_ = os.WriteFile(broken, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("garbage")}), 0o600)
	for _, f := range []string{filepath.Join(dir, "missing.pem"), junk, keyOnly, broken} {
		if err := RegisterExpiry(reg, f); err == nil || !strings.Contains(err.Error(), "tls certificate expiry") {
			t.Errorf("%s: %v, want an error", filepath.Base(f), err)
		}
	}
	if n, _ := testutil.GatherAndCount(reg); n != 0 {
		t.Fatalf("bad files left %d series", n)
	}
}
