package limits

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestSignatureVerification(t *testing.T) {
	body := []byte(`{"type":"usage.threshold_crossed","customer_id":"acme"}`)
	now := time.Now()
	header := Sign(testSecret, now, body)
	if !strings.HasPrefix(header, "t="+strconv.FormatInt(now.Unix(), 10)+",v1=") {
		t.Fatalf("header %q", header)
	}
	if err := VerifySignature(testSecret, header, body, 0); err != nil {
		t.Fatalf("a good signature failed: %v", err)
	}

	tampered := []byte(strings.Replace(string(body), "acme", "acmf", 1))
	old := Sign(testSecret, now.Add(-10*time.Minute), body)
	future := Sign(testSecret, now.Add(10*time.Minute), body)
	otherSig := Sign("another-secret-0123456789", now, body)
	for name, c := range map[string]struct {
		secret, header string
		body           []byte
		want           error
	}{
		"wrong secret":       {"wrong-secret-0123456789", header, body, ErrSignatureInvalid},
		"tampered body":      {testSecret, header, tampered, ErrSignatureInvalid},
		"old timestamp":      {testSecret, old, body, ErrSignatureExpired},
		"future timestamp":   {testSecret, future, body, ErrSignatureExpired},
		"timestamp replaced": {testSecret, "t=" + strconv.FormatInt(now.Unix()+1, 10) + header[strings.Index(header, ","):], body, ErrSignatureInvalid},
		"no header":          {testSecret, "", body, ErrSignatureInvalid},
		"no v1":              {testSecret, "t=" + strconv.FormatInt(now.Unix(), 10), body, ErrSignatureInvalid},
		"no timestamp":       {testSecret, header[strings.Index(header, ",")+1:], body, ErrSignatureInvalid},
		"garbage":            {testSecret, "t=1,v1=zz", body, ErrSignatureInvalid},
		"two timestamps":     {testSecret, header + ",t=1", body, ErrSignatureInvalid},
	} {
		if err := VerifySignature(c.secret, c.header, c.body, 0); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", name, err, c.want)
		}
	}

	// A wider tolerance accepts the old one; several v1 values (a secret
	// being rotated) pass when one matches; unknown schemes are ignored.
	if err := VerifySignature(testSecret, old, body, time.Hour); err != nil {
		t.Errorf("old signature within a 1h tolerance: %v", err)
	}
	rotated := otherSig + ",v1=" + header[strings.Index(header, "v1=")+3:] + ",v2=whatever"
	if err := VerifySignature(testSecret, rotated, body, 0); err != nil {
		t.Errorf("rotated header: %v", err)
	}
}

func FuzzVerifySignature(f *testing.F) {
	f.Add("t=1,v1=00", []byte("{}"))
	f.Add(Sign(testSecret, time.Now(), []byte("{}")), []byte("{}"))
	f.Fuzz(func(t *testing.T, header string, body []byte) {
		_ = VerifySignature(testSecret, header, body, 0) // must not panic
	})
}
