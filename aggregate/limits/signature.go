package limits

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
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
