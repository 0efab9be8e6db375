package httpmeter

import (
	"context"
	"errors"
	"net/http"
	"sync"

	"github.com/meterline/meterline/schemas"
)

// Errors of Poster.Post (and of the batches a Meter drops).
var (
	// ErrRefused: the collector refused a batch as a whole with a 4xx other
	// than 429 and 413 (a bad token, a token without the ingest scope).
	// Retrying the same batch would not help.
	ErrRefused = errors.New("httpmeter: the collector refused the batch")
	// ErrRetriesExhausted: the collector could not be reached, or kept
	// answering 429 or 5xx, for Config.MaxRetryTime.
	ErrRetriesExhausted = errors.New("httpmeter: the collector was not reached within MaxRetryTime")
)

// Poster posts events that a program built itself (a log shipper, a batch
// job) to the collector and waits for the answer, with a Meter's encoding
// (gzip NDJSON in posts of at most MaxBatchBytes) and retries (network
// errors, 429 and 5xx with backoff and jitter, never sooner than
// Retry-After, for up to MaxRetryTime; 413 splits the post in halves).
// Unlike a Meter it holds no queue: Post returns when every event was
// answered, so the caller knows what it may forget.
//
// Of Config it uses Endpoint, Token, MaxBatchBytes, RequestTimeout,
// MinBackoff, MaxBackoff, MaxRetryTime, Client and Logger. Its methods are
// safe for concurrent use; posts are made one at a time.
type Poster struct {
	mu sync.Mutex
	m  *Meter
}

// NewPoster returns a Poster that sends to cfg.Endpoint, reporting every
// invalid setting at once.
func NewPoster(cfg Config) (*Poster, error) {
	cfg.KeyFunc = func(*http.Request) (string, string) { return "", "" } // not used
	cfg.Registerer = nil
	m, err := newMeter(cfg)
	if err != nil {
		return nil, err
	}
	return &Poster{m: m}, nil
}

// PostResult counts what the collector answered for the events of a Post.
type PostResult struct {
	// Accepted counts the events the collector took (acknowledged by Kafka).
	Accepted int
	// Rejected counts the events it refused one by one for an invalid
	// field; each is logged with the collector's reason.
	Rejected int
}

// Post sends events and returns once the collector answered for all of
// them, or one of their posts failed for good: the error is then
// ErrRefused, ErrRetriesExhausted or ctx's error, and the result counts the
// events of the posts answered before. Events that cannot be encoded
// faithfully (invalid UTF-8, units that are not finite) are counted as
// rejected without being sent.
func (p *Poster) Post(ctx context.Context, events []schemas.Event) (PostResult, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.m
	var res PostResult
	var raw []byte
	var ids []string
	var line []byte
	flush := func() error {
		if len(ids) == 0 {
			return nil
		}
		a, r, err := m.post(ctx, raw, ids)
		res.Accepted += a
		res.Rejected += r
		raw, ids = raw[:0], ids[:0]
		return err
	}
	for i := range events {
		ev := &events[i]
		if err := encodable(ev); err != nil {
			res.Rejected++
			m.cfg.Logger.Warn("meterline event not sent: it cannot be encoded", "id", ev.ID, "err", err)
			continue
		}
		line = ev.AppendJSON(line[:0])
		line = append(line, '\n')
		if len(raw) > 0 && len(raw)+len(line) > m.cfg.MaxBatchBytes {
			if err := flush(); err != nil {
				return res, err
			}
		}
		raw = append(raw, line...)
		ids = append(ids, ev.ID)
	}
	return res, flush()
}

// encodable says whether ev can be written as JSON without changing it.
func encodable(ev *schemas.Event) error {
	r := record{units: ev.Units, hasUnits: true, apiKeyID: ev.APIKeyID, customerID: ev.CustomerID, route: ev.Route}
	if _, err := r.event("", ev.ID); err != nil {
		return err
	}
	return nil
}

// Stats returns the Poster's counts since NewPoster (Sent, Rejected,
// Retries and the Dropped counts of failed posts).
func (p *Poster) Stats() Stats { return p.m.Stats() }
