package ingest

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/internal/tlsutil"
)

// TestExplainKafkaErrors checks which connection errors are reported as
// TLS/SASL configuration errors (not retried) and the settings they name.
// The real errors are produced against a broker in
// cmd/meterline's TestKafkaOverSASLSSL.
func TestExplainKafkaErrors(t *testing.T) {
	scram := KafkaConfig{TLS: tlsutil.Client{Enabled: true}, SASL: SASLConfig{Mechanism: "scram-sha-512", Username: "u"}}
	for _, tc := range []struct {
		name     string
		c        KafkaConfig
		err      error
		security bool
		want     string
	}{
		{"sasl auth", scram, fmt.Errorf("kafka.(*Client).Metadata: %w", kafka.SASLAuthenticationFailed), true, `SASL authentication failed for user "u" with mechanism SCRAM-SHA-512`},
		{"sasl mechanism", scram, kafka.UnsupportedSASLMechanism, true, "check kafka.sasl.mechanism"},
		{"unknown CA", scram, fmt.Errorf("x: %w", x509.UnknownAuthorityError{}), true, "kafka.tls.ca_file"},
		{"expects TLS", KafkaConfig{}, fmt.Errorf("%w: broker appears to be expecting TLS", io.ErrUnexpectedEOF), true, "set kafka.tls.enabled"},
		{"closed, no SASL", KafkaConfig{TLS: tlsutil.Client{Enabled: true}}, io.ErrUnexpectedEOF, false, "may require SASL"},
		{"closed, TLS", scram, io.EOF, false, "may not speak TLS"},
		{"refused", scram, errors.New("dial tcp 127.0.0.1:1: connect: connection refused"), false, "connection refused"},
	} {
		err := tc.c.explain(tc.err)
		if IsSecurityError(err) != tc.security || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, tc.err) {
			t.Errorf("%s: %v (security %v), want %q, security %v", tc.name, err, IsSecurityError(err), tc.want, tc.security)
		}
	}
}
