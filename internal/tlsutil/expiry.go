package tlsutil

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// NotAfter returns the expiry of the first certificate (the leaf) in a PEM
// file.
func NotAfter(certFile string) (time.Time, error) {
	data, err := os.ReadFile(certFile)
	if err != nil {
		return time.Time{}, err
	}
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return time.Time{}, fmt.Errorf("%s: no PEM certificate found", certFile)
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return time.Time{}, fmt.Errorf("%s: %w", certFile, err)
		}
		return cert.NotAfter, nil
	}
}

// RegisterExpiry registers meterline_tls_certificate_expiry_timestamp_seconds
// with one series per certificate file (empty names are skipped, repeats
// counted once), valued at the leaf's NotAfter as Unix seconds. Certificates
// are loaded once at start, so the value is that of the certificate in use.
func RegisterExpiry(reg prometheus.Registerer, certFiles ...string) error {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "meterline_tls_certificate_expiry_timestamp_seconds",
		Help: "Expiry (NotAfter, Unix seconds) of each TLS certificate this process presents, by file.",
	}, []string{"file"})
	n := 0
	for _, f := range certFiles {
		if f == "" {
			continue
		}
		t, err := NotAfter(f)
		if err != nil {
			return fmt.Errorf("tls certificate expiry: %w", err)
		}
		g.WithLabelValues(f).Set(float64(t.Unix()))
		n++
	}
	if n == 0 {
		return nil
	}
	if err := reg.Register(g); err != nil {
		var are prometheus.AlreadyRegisteredError
		if !errors.As(err, &are) {
			return err
		}
	}
	return nil
}
