package ingest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"

	"github.com/meterline/meterline/internal/tlsutil"
)

// KafkaConfig is how Meterline reaches Kafka. The defaults suit the local
// single-broker stack that `make run` starts.
type KafkaConfig struct {
	// dial, when set, opens the connections of Dialer's dialers instead of
	// the network (tests put a proxy there).
	dial func(ctx context.Context, network, address string) (net.Conn, error)

	// Brokers are the bootstrap addresses. Default ["127.0.0.1:9092"].
	Brokers []string `yaml:"brokers"`
	// Topic carries one v1 request event per message, keyed by api_key_id.
	// It is a public contract: gateways may produce to it directly. Default "requests".
	Topic string `yaml:"topic"`
	// DeadLetterTopic receives messages that can never be stored, with the
	// reason in the "meterline-error" header. Default "requests.dlq".
	DeadLetterTopic string `yaml:"dead_letter_topic"`
	// Partitions is used when Meterline creates the topics. Default 6.
	Partitions int `yaml:"partitions"`
	// ReplicationFactor is used when Meterline creates the topics. Default 1.
	ReplicationFactor int `yaml:"replication_factor"`
	// CreateTopics makes Meterline create missing topics at start-up. Default true.
	CreateTopics *bool `yaml:"create_topics"`
	// ClientID names this process to the brokers. Default "meterline".
	ClientID string `yaml:"client_id"`
	// MaxMessageBytes is the topics' max.message.bytes (set when Meterline
	// creates them, checked against existing ones) and bounds every
	// writer's batch (see BatchBytes). Default 1048576 (1 MiB).
	MaxMessageBytes int `yaml:"max_message_bytes"`
	// TLS for the broker connections.
	TLS tlsutil.Client `yaml:"tls"`
	// SASL authentication.
	SASL SASLConfig `yaml:"sasl"`
	// DeadLetterRetention, when set, is the retention.ms the dead-letter
	// topic gets at creation and is brought to at every start (when
	// CreateTopics is on): serve sets DeadLetterRetention(retention.raw_months),
	// so dead letters are not kept longer than raw events. Zero leaves the
	// topic's retention alone.
	DeadLetterRetention time.Duration `yaml:"-"`
}

// SASLConfig selects SASL authentication to the brokers.
type SASLConfig struct {
	// Mechanism is "", "plain", "scram-sha-256" or "scram-sha-512". Default "" (none).
	Mechanism string `yaml:"mechanism"`
	Username  string `yaml:"username"`
	Password  string `yaml:"password" secret:"true"`
}

// WithDefaults fills unset fields with their defaults.
func (c KafkaConfig) WithDefaults() KafkaConfig {
	if len(c.Brokers) == 0 {
		c.Brokers = []string{"127.0.0.1:9092"}
	}
	if c.Topic == "" {
		c.Topic = "requests"
	}
	if c.DeadLetterTopic == "" {
		c.DeadLetterTopic = c.Topic + ".dlq"
	}
	if c.Partitions == 0 {
		c.Partitions = 6
	}
	if c.ReplicationFactor == 0 {
		c.ReplicationFactor = 1
	}
	if c.CreateTopics == nil {
		t := true
		c.CreateTopics = &t
	}
	if c.ClientID == "" {
		c.ClientID = "meterline"
	}
	if c.MaxMessageBytes == 0 {
		c.MaxMessageBytes = DefaultMaxMessageBytes
	}
	return c
}

// Validate reports every invalid setting.
func (c KafkaConfig) Validate() error {
	var errs []error
	for _, b := range c.Brokers {
		if _, _, err := net.SplitHostPort(b); err != nil {
			errs = append(errs, fmt.Errorf("kafka.brokers: %q is not host:port", b))
		}
	}
	if c.Topic == c.DeadLetterTopic {
		errs = append(errs, errors.New("kafka.dead_letter_topic must differ from kafka.topic"))
	}
	for _, t := range []string{c.Topic, c.DeadLetterTopic} {
		if !validTopic(t) {
			errs = append(errs, fmt.Errorf("kafka topic %q: use 1-249 characters of [a-zA-Z0-9._-]", t))
		}
	}
	if c.Partitions < 1 || c.Partitions > 10000 {
		errs = append(errs, fmt.Errorf("kafka.partitions: %d is out of range 1-10000", c.Partitions))
	}
	if c.ReplicationFactor < 1 || c.ReplicationFactor > 32 {
		errs = append(errs, fmt.Errorf("kafka.replication_factor: %d is out of range 1-32", c.ReplicationFactor))
	}
	if err := validMaxMessageBytes(c.MaxMessageBytes); c.MaxMessageBytes != 0 && err != nil {
		errs = append(errs, err)
	}
	switch strings.ToLower(c.SASL.Mechanism) {
	case "":
	case "plain", "scram-sha-256", "scram-sha-512":
		if c.SASL.Username == "" {
			errs = append(errs, errors.New("kafka.sasl.username is required with a SASL mechanism"))
		}
	default:
		errs = append(errs, fmt.Errorf("kafka.sasl.mechanism: unknown %q (want plain, scram-sha-256 or scram-sha-512)", c.SASL.Mechanism))
	}
	if _, err := c.TLS.Config(); err != nil {
		errs = append(errs, fmt.Errorf("kafka.%w", err))
	}
	return errors.Join(errs...)
}

func validTopic(t string) bool {
	if t == "" || len(t) > 249 || t == "." || t == ".." {
		return false
	}
	for _, r := range t {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

func (c KafkaConfig) mechanism() (sasl.Mechanism, error) {
	switch strings.ToLower(c.SASL.Mechanism) {
	case "":
		return nil, nil
	case "plain":
		return plain.Mechanism{Username: c.SASL.Username, Password: c.SASL.Password}, nil
	case "scram-sha-256":
		return scram.Mechanism(scram.SHA256, c.SASL.Username, c.SASL.Password)
	case "scram-sha-512":
		return scram.Mechanism(scram.SHA512, c.SASL.Username, c.SASL.Password)
	}
	return nil, fmt.Errorf("unknown SASL mechanism %q", c.SASL.Mechanism)
}

// security returns the TLS configuration (nil when off) and SASL mechanism
// (nil when none) shared by transports and dialers.
func (c KafkaConfig) security() (*tls.Config, sasl.Mechanism, error) {
	tlsCfg, err := c.TLS.Config()
	if err != nil {
		return nil, nil, err
	}
	mech, err := c.mechanism()
	return tlsCfg, mech, err
}

// metadataTTL bounds the age of a transport's cached cluster metadata.
const metadataTTL = 2 * time.Second

// Transport builds the transport for writers and admin clients.
func (c KafkaConfig) Transport() (*kafka.Transport, error) {
	tlsCfg, mech, err := c.security()
	if err != nil {
		return nil, err
	}
	return &kafka.Transport{
		DialTimeout: 5 * time.Second,
		IdleTimeout: 30 * time.Second,
		// kafka-go learns that a partition's leader moved only from its
		// periodic metadata refresh (not from a NOT_LEADER answer or a
		// refused connection): until then every write to that partition
		// fails and the collector answers 503. The refresh comes at a
		// random time within this bound; see docs/kafka.md, "Broker loss".
		MetadataTTL: metadataTTL,
		ClientID:    c.ClientID,
		TLS:         tlsCfg,
		SASL:        mech,
	}, nil
}

// Dialer builds the dialer for readers (kafka-go's Reader does not use a Transport).
func (c KafkaConfig) Dialer() (*kafka.Dialer, error) {
	tlsCfg, mech, err := c.security()
	if err != nil {
		return nil, err
	}
	return &kafka.Dialer{
		ClientID:      c.ClientID,
		Timeout:       5 * time.Second,
		DualStack:     true,
		TLS:           tlsCfg,
		SASLMechanism: mech,
		DialFunc:      c.dial,
	}, nil
}

// EnsureTopics creates the events and dead-letter topics when they are
// missing, and checks that they exist.
func EnsureTopics(ctx context.Context, c KafkaConfig) error {
	tr, err := c.Transport()
	if err != nil {
		return err
	}
	defer tr.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(c.Brokers...), Transport: tr, Timeout: 10 * time.Second}
	// Connect with a metadata request first: when the connection fails
	// (TLS, SASL), kafka-go answers requests routed to a broker, such as
	// CreateTopics, with a bare "Broker Not Available" and only metadata
	// requests return the real cause.
	if _, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{c.Topic, c.DeadLetterTopic}}); err != nil {
		return fmt.Errorf("connecting to Kafka at %s: %w", strings.Join(c.Brokers, ","), c.explain(err))
	}
	if c.CreateTopics == nil || *c.CreateTopics {
		req := &kafka.CreateTopicsRequest{}
		for _, t := range []string{c.Topic, c.DeadLetterTopic} {
			req.Topics = append(req.Topics, kafka.TopicConfig{
				Topic:             t,
				NumPartitions:     c.Partitions,
				ReplicationFactor: c.ReplicationFactor,
				ConfigEntries: []kafka.ConfigEntry{
					// The broker must not accept a write that is not on every in-sync replica.
					{ConfigName: "min.insync.replicas", ConfigValue: fmt.Sprint(min(2, c.ReplicationFactor))},
					// The writers' batches are sized to this (see BatchBytes).
					{ConfigName: "max.message.bytes", ConfigValue: fmt.Sprint(c.maxMessageBytes())},
				},
			})
		}
		c.withDeadLetterRetention(req)
		res, err := client.CreateTopics(ctx, req)
		if err != nil {
			return fmt.Errorf("creating Kafka topics at %v: %w", c.Brokers, err)
		}
		for topic, terr := range res.Errors {
			if terr != nil && !errors.Is(terr, kafka.TopicAlreadyExists) {
				return fmt.Errorf("creating Kafka topic %q: %w", topic, terr)
			}
		}
		if err := c.alignDeadLetterRetention(ctx, client); err != nil {
			return err
		}
	}
	// A new topic's partitions get leaders a moment after creation; writes
	// before that fail, so wait for them.
	for {
		err := topicsLed(ctx, client, c.Topic, c.DeadLetterTopic)
		if err == nil {
			return checkMessageLimits(ctx, client, c)
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// topicsLed returns nil when every partition of the topics has a leader.
func topicsLed(ctx context.Context, client *kafka.Client, topics ...string) error {
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: topics})
	if err != nil {
		return fmt.Errorf("reading Kafka metadata: %w", err)
	}
	if len(md.Topics) != len(topics) {
		return fmt.Errorf("kafka metadata lists %d of the topics %v", len(md.Topics), topics)
	}
	for _, t := range md.Topics {
		if t.Error != nil {
			return fmt.Errorf("kafka topic %q: %w", t.Name, t.Error)
		}
		if len(t.Partitions) == 0 {
			return fmt.Errorf("kafka topic %q has no partitions yet", t.Name)
		}
		for _, p := range t.Partitions {
			if p.Error != nil || p.Leader.Host == "" {
				return fmt.Errorf("kafka topic %q partition %d has no leader yet", t.Name, p.ID)
			}
		}
	}
	// Metadata can name a leader a moment before that broker serves the
	// partition (it answers NOT_LEADER_OR_FOLLOWER meanwhile); ask each
	// partition for its end offset to be sure it is served.
	req := &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{}}
	for _, t := range md.Topics {
		for _, p := range t.Partitions {
			req.Topics[t.Name] = append(req.Topics[t.Name], kafka.LastOffsetOf(p.ID))
		}
	}
	res, err := client.ListOffsets(ctx, req)
	if err != nil {
		return fmt.Errorf("reading Kafka offsets: %w", err)
	}
	for topic, parts := range res.Topics {
		for _, p := range parts {
			if p.Error != nil {
				return fmt.Errorf("kafka topic %q partition %d: %w", topic, p.Partition, p.Error)
			}
		}
	}
	return nil
}

// Ping reads the events topic's metadata: it tells whether the brokers
// answer and the topic exists.
func Ping(ctx context.Context, c KafkaConfig) error {
	tr, err := c.Transport()
	if err != nil {
		return err
	}
	defer tr.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(c.Brokers...), Transport: tr, Timeout: 3 * time.Second}
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{c.Topic}})
	if err != nil {
		return c.explain(err)
	}
	for _, t := range md.Topics {
		if t.Error != nil {
			return fmt.Errorf("topic %q: %w", t.Name, t.Error)
		}
	}
	return nil
}

// SecurityError is a failure to connect that is due to the TLS or SASL
// settings (or the broker's listener): retrying does not help.
type SecurityError struct {
	// Hint says what to check, in the configuration's terms.
	Hint string
	Err  error
}

func (e *SecurityError) Error() string { return e.Hint + ": " + e.Err.Error() }
func (e *SecurityError) Unwrap() error { return e.Err }

// IsSecurityError reports whether err is a TLS or SASL failure.
func IsSecurityError(err error) bool {
	var se *SecurityError
	return errors.As(err, &se)
}

// explain wraps a connection error that is certainly due to the TLS or SASL
// settings in a SecurityError that names the settings to check, adds a hint
// to the ambiguous ones (a closed connection), and passes the others as they are.
func (c KafkaConfig) explain(err error) error {
	if err == nil || IsSecurityError(err) {
		return err
	}
	mech := strings.ToUpper(c.SASL.Mechanism)
	var (
		verify   *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		recHdr   tls.RecordHeaderError
	)
	var hint string
	switch {
	case errors.Is(err, kafka.SASLAuthenticationFailed):
		hint = fmt.Sprintf("SASL authentication failed for user %q with mechanism %s (check kafka.sasl.username and kafka.sasl.password)", c.SASL.Username, mech)
	case errors.Is(err, kafka.UnsupportedSASLMechanism):
		hint = fmt.Sprintf("the broker does not accept SASL mechanism %s on this listener (check kafka.sasl.mechanism)", mech)
	case errors.Is(err, kafka.IllegalSASLState):
		hint = "SASL handshake failed (check kafka.sasl)"
	case errors.As(err, &verify), errors.As(err, &unknown), errors.As(err, &hostname), errors.As(err, &invalid):
		hint = "TLS: the broker's certificate is not trusted (check kafka.tls.ca_file and kafka.tls.server_name)"
	case errors.As(err, &recHdr):
		hint = "TLS: the broker does not speak TLS on this port (kafka.tls.enabled is true; check the port or the listener)"
	case errors.Is(err, io.ErrUnexpectedEOF) && !c.TLS.Enabled && strings.Contains(err.Error(), "expecting TLS"):
		hint = "the broker expects TLS on this port (set kafka.tls.enabled)"
	case errors.Is(err, io.ErrUnexpectedEOF) && c.SASL.Mechanism == "":
		// Also what a broker going down looks like: a hint, not a SecurityError.
		return fmt.Errorf("the broker closed the connection; if it persists, its listener may require SASL (check kafka.sasl): %w", err)
	case errors.Is(err, io.EOF) && c.TLS.Enabled:
		return fmt.Errorf("the broker closed the connection; if it persists, it may not speak TLS on this port (check kafka.tls and the port): %w", err)
	default:
		return err
	}
	return &SecurityError{Hint: hint, Err: err}
}
