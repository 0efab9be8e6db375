package httpmeter

import (
	"context"
	"errors"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/meterline/meterline/schemas"
)

func posterEvents(n int) []schemas.Event {
	evs := make([]schemas.Event, n)
	for i := range evs {
		evs[i] = schemas.Event{ID: "p-" + strings.Repeat("x", i%5) + string(rune('a'+i%26)) + string(rune('a'+i/26)), Time: time.Now().UTC(), APIKeyID: "key_p", Status: 200, Units: 1}
	}
	return evs
}

// TestPosterRetriesRefusesAndSplits uses the stand-in collector for the
// answers the real one cannot give on demand: a 503 with Retry-After is
// retried no sooner, a 413 splits the post, a 401 is ErrRefused, and an
// event that cannot be encoded or that the decoder rejects is counted.
func TestPosterRetriesRefusesAndSplits(t *testing.T) {
	s := newStandIn(t)
	s.answer = func(post int) (int, http.Header) {
		switch post {
		case 1:
			return http.StatusServiceUnavailable, http.Header{"Retry-After": {"1"}}
		case 2:
			return http.StatusRequestEntityTooLarge, nil
		}
		return 0, nil
	}
	p, err := NewPoster(Config{Endpoint: s.srv.URL, MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	evs := posterEvents(10)
	evs[3].APIKeyID = strings.Repeat("k", 200) // rejected by the decoder
	evs[4].Units = math.Inf(1)                 // cannot be encoded
	begin := time.Now()
	res, err := p.Post(context.Background(), evs)
	if err != nil || res.Accepted != 8 || res.Rejected != 2 {
		t.Fatalf("Post: %+v %v", res, err)
	}
	if d := time.Since(begin); d < time.Second {
		t.Errorf("retried after %s, sooner than Retry-After: 1", d)
	}
	if n := len(s.stored()); n != 8 || s.postCount() != 4 {
		t.Errorf("%d stored in %d posts, want 8 in 4 (503, 413, two halves)", n, s.postCount())
	}
	if st := p.Stats(); st.Sent != 8 || st.Retries != 1 {
		t.Errorf("stats %+v", st)
	}

	s.answer = func(int) (int, http.Header) { return http.StatusUnauthorized, nil }
	if _, err := p.Post(context.Background(), posterEvents(3)); !errors.Is(err, ErrRefused) {
		t.Errorf("401: %v, want ErrRefused", err)
	}
	s.answer = func(int) (int, http.Header) { return http.StatusBadGateway, nil }
	p2, _ := NewPoster(Config{Endpoint: s.srv.URL, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, MaxRetryTime: 50 * time.Millisecond})
	if _, err := p2.Post(context.Background(), posterEvents(3)); !errors.Is(err, ErrRetriesExhausted) {
		t.Errorf("502 for ever: %v, want ErrRetriesExhausted", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p2.Post(ctx, posterEvents(3)); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	if _, err := NewPoster(Config{Endpoint: "ftp://x"}); err == nil {
		t.Error("NewPoster accepted an ftp endpoint")
	}
}
