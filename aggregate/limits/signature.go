package limits

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Webhook headers.
const (
	// HeaderSignature carries "t=<unix seconds>,v1=<hex HMAC-SHA256>".
	HeaderSignature = "Meterline-Signature"
	// HeaderDelivery carries the delivery id, the same on every attempt of
	// one alert: receivers drop a delivery id they have already handled.
	HeaderDelivery = "Meterline-Delivery"
)

// DefaultSignatureTolerance is the signature age VerifySignature accepts
// when given a tolerance <= 0.
const DefaultSignatureTolerance = 5 * time.Minute

// Signature verification errors, wrapped by VerifySignature's error.
var (
	// ErrSignatureInvalid: the header is malformed or no v1 signature
	// matches the body under the secret.
	ErrSignatureInvalid = errors.New("webhook signature invalid")
	// ErrSignatureExpired: the signature matches but its timestamp is
	// further from now than the tolerance (a replay, or a skewed clock).
	ErrSignatureExpired = errors.New("webhook signature timestamp outside the tolerance")
)

// Sign returns the Meterline-Signature header value for body sent at t:
// "t=<unix>,v1=<hex(HMAC-SHA256(secret, "<unix>.<body>"))>". The timestamp
// is inside the signed text, so a captured delivery cannot be replayed
// later with a fresh timestamp.
func Sign(secret string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// VerifySignature checks a webhook as its receiver should:
//
//  1. Take the raw request body, as received, before any JSON decoding.
//  2. Split the Meterline-Signature header at commas into key=value
//     pairs; t is the signing time in Unix seconds, each v1 a signature
//     (several v1 pairs may appear, e.g. while a secret is rotated).
//  3. Compute hex(HMAC-SHA256(secret, t + "." + body)) and compare it with
//     each v1 in constant time; one must match.
//  4. Reject a t further than the tolerance from the receiver's clock
//     (default 5 minutes), so a captured delivery cannot be replayed.
//  5. Drop a Meterline-Delivery id already handled: an alert can arrive
//     more than once (see the package documentation).
//
// It returns nil, or an error wrapping ErrSignatureInvalid or
// ErrSignatureExpired. A tolerance <= 0 means DefaultSignatureTolerance.
func VerifySignature(secret, header string, body []byte, tolerance time.Duration) error {
	return verifyAt(secret, header, body, tolerance, time.Now())
}

func verifyAt(secret, header string, body []byte, tolerance time.Duration, now time.Time) error {
	if tolerance <= 0 {
		tolerance = DefaultSignatureTolerance
	}
	var ts string
	var sigs [][]byte
	for part := range strings.SplitSeq(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return wrapSig(ErrSignatureInvalid, "malformed header")
		}
		switch k {
		case "t":
			if ts != "" {
				return wrapSig(ErrSignatureInvalid, "two timestamps")
			}
			ts = v
		case "v1":
			sig, err := hex.DecodeString(v)
			if err != nil || len(sig) != sha256.Size {
				return wrapSig(ErrSignatureInvalid, "malformed v1 signature")
			}
			sigs = append(sigs, sig)
		}
		// Other schemes are ignored, so a future v2 does not break
		// receivers that only know v1.
	}
	unix, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return wrapSig(ErrSignatureInvalid, "missing or malformed timestamp")
	}
	if len(sigs) == 0 {
		return wrapSig(ErrSignatureInvalid, "no v1 signature")
	}
	want := mac(secret, ts, body)
	matched := false
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			matched = true
		}
	}
	if !matched {
		return wrapSig(ErrSignatureInvalid, "no signature matches the body")
	}
	// Checked after the MAC, so only an authentic but old message is told
	// it is expired.
	if age := now.Sub(time.Unix(unix, 0)); age > tolerance || age < -tolerance {
		return ErrSignatureExpired
	}
	return nil
}

func wrapSig(err error, why string) error {
	return fmt.Errorf("%w: %s", err, why)
}

// Per-customer signing secrets.
//
// A customer's catalogue entry may name a file of signing secrets
// (alert_webhook_secrets_file), one per line; blank lines and lines
// starting with # are ignored. Its alerts are then signed with every
// secret listed, one v1 signature each, and never with
// limits.webhook_secret, so a customer who knows its own secret cannot
// forge another customer's alerts. The file is read at every delivery
// attempt: a rotation takes effect without touching the catalogue.
//
// Rotation with overlap: add the new secret as a second line (alerts
// carry two v1 signatures, and a receiver holding either secret accepts
// them), move the receiver to the new secret, then remove the old line.

// Limits of a secrets file.
const (
	// MinWebhookSecretBytes is the shortest secret accepted.
	MinWebhookSecretBytes = 16
	// MaxWebhookSecrets bounds the secrets (and signatures) of one customer:
	// two during a rotation, with room for a third.
	MaxWebhookSecrets  = 3
	maxSecretsFileSize = 16 << 10
)

// ReadWebhookSecrets reads and checks a customer's secrets file.
func ReadWebhookSecrets(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, maxSecretsFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxSecretsFileSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxSecretsFileSize)
	}
	return ParseWebhookSecrets(data)
}

// ParseWebhookSecrets parses the content of a secrets file: at least one
// and at most MaxWebhookSecrets distinct secrets of MinWebhookSecretBytes
// or more, without spaces. Errors name the line, never the secret.
func ParseWebhookSecrets(data []byte) ([]string, error) {
	var out []string
	var errs []error
	for i, line := range strings.Split(string(data), "\n") {
		s := strings.TrimSpace(line)
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		switch {
		case len(s) < MinWebhookSecretBytes:
			errs = append(errs, fmt.Errorf("line %d: a secret must be at least %d bytes", i+1, MinWebhookSecretBytes))
		case strings.ContainsAny(s, " \t"):
			errs = append(errs, fmt.Errorf("line %d: a secret must not contain spaces (one secret per line)", i+1))
		case slices.Contains(out, s):
			errs = append(errs, fmt.Errorf("line %d: the same secret twice", i+1))
		default:
			out = append(out, s)
		}
	}
	if len(out) > MaxWebhookSecrets {
		errs = append(errs, fmt.Errorf("%d secrets; at most %d (the current one and those being rotated)", len(out), MaxWebhookSecrets))
	}
	if len(out) == 0 && len(errs) == 0 {
		errs = append(errs, errors.New("no secret in the file"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// SignAll returns the Meterline-Signature header value for body sent at t
// with one v1 signature per secret: "t=<unix>,v1=<hex>,v1=<hex>".
func SignAll(secrets []string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	var b strings.Builder
	b.WriteString("t=" + ts)
	for _, s := range secrets {
		b.WriteString(",v1=" + hex.EncodeToString(mac(s, ts, body)))
	}
	return b.String()
}

// signAlert returns the signature header of a customer's alert: signed
// with the customer's own secrets when its catalogue entry names a secrets
// file, else with limits.webhook_secret. An unreadable or invalid secrets
// file is an error (the attempt is retried later), never a fallback to
// the shared secret.
func (v *View) signAlert(customerID string, t time.Time, body []byte) (string, error) {
	c, ok := v.reg.Customer(customerID)
	if !ok || c.AlertWebhookSecretsFile == "" {
		return Sign(v.cfg.WebhookSecret, t, body), nil
	}
	secrets, err := ReadWebhookSecrets(c.AlertWebhookSecretsFile)
	if err != nil {
		return "", fmt.Errorf("alert_webhook_secrets_file of customer %q: %w", customerID, err)
	}
	return SignAll(secrets, t, body), nil
}
