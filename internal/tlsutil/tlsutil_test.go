package tlsutil

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestClientConfig(t *testing.T) {
	if c, err := (Client{}).Config(); c != nil || err != nil {
		t.Fatalf("disabled: %v %v", c, err)
	}
	if _, err := (Client{CAFile: "x"}).Config(); err == nil || !strings.Contains(err.Error(), "enabled is false") {
		t.Fatalf("files without enabled: %v", err)
	}
	if _, err := (Client{Enabled: true, CAFile: "/does/not/exist"}).Config(); err == nil || !strings.Contains(err.Error(), "ca_file") {
		t.Fatalf("missing CA: %v", err)
	}
	junk := filepath.Join(t.TempDir(), "ca.pem")
	_ = os.WriteFile(junk, []byte("not a certificate"), 0o600)
	if _, err := (Client{Enabled: true, CAFile: junk}).Config(); err == nil || !strings.Contains(err.Error(), "no PEM") {
		t.Fatalf("junk CA: %v", err)
	}
	if _, err := (Client{Enabled: true, CertFile: "a"}).Config(); err == nil || !strings.Contains(err.Error(), "together") {
		t.Fatalf("cert without key: %v", err)
	}
	c, err := (Client{Enabled: true, ServerName: "kafka.internal"}).Config()
	if err != nil || c.ServerName != "kafka.internal" || c.MinVersion == 0 {
		t.Fatalf("enabled: %+v %v", c, err)
	}
}

func TestServerConfig(t *testing.T) {
	if (Server{}).Enabled() {
		t.Fatal("empty server config enabled")
	}
	if _, err := (Server{CertFile: "a"}).Config(); err == nil || !strings.Contains(err.Error(), "together") {
		t.Fatalf("cert without key: %v", err)
	}
	if _, err := (Server{CertFile: "/nope.pem", KeyFile: "/nope.key"}).Config(); err == nil {
		t.Fatal("missing files accepted")
	}
}
