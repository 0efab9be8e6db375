package httpmeter

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/meterline/meterline/schemas"
)

// standInCollector is a hand-written stand-in for the collector, for the
// answers the real one cannot be made to give on demand (429, a 400 for the
// whole batch, a collector that hangs). It decodes every body with the
// collector's own decoder (schemas.DecodeBatch), so what the meter writes is
// held to the published contract, and answers what answer says (202 with
// the decoder's per-event rejections by default).
type standInCollector struct {
	t   *testing.T
	srv *httptest.Server

	mu       sync.Mutex
	posts    int
	events   []schemas.Event
	headers  []http.Header
	answer   func(post int) (code int, header http.Header) // nil or 0: 202
	arrived  chan struct{}                                 // one send per post, if not nil
	released chan struct{}                                 // if not nil, each post waits for it
}

func newStandIn(t *testing.T) *standInCollector {
	s := &standInCollector{t: t}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *standInCollector) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/events" {
		http.Error(w, "not the collector's path", http.StatusNotFound)
		return
	}
	s.mu.Lock()
	s.posts++
	post := s.posts
	answer, arrived, released := s.answer, s.arrived, s.released
	s.headers = append(s.headers, r.Header.Clone())
	s.mu.Unlock()
	// The body is read first, so that the server notices when the meter
	// gives up on the request (its context ends).
	posted, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(posted))
	if arrived != nil {
		arrived <- struct{}{}
	}
	if released != nil {
		select {
		case <-released:
		case <-r.Context().Done():
			return
		}
	}
	if answer != nil {
		if code, h := answer(post); code != 0 && code != http.StatusAccepted {
			for k, v := range h {
				w.Header()[k] = v
			}
			http.Error(w, `{"error":"stand-in says no"}`, code)
			return
		}
	}
	if r.Header.Get("Content-Encoding") != "gzip" {
		s.t.Errorf("post without gzip: %v", r.Header)
	}
	zr, err := gzip.NewReader(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	body, err := io.ReadAll(zr)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	res, err := schemas.Options{}.DecodeBatch(r.Header.Get("Content-Type"), body, time.Now())
	if err != nil {
		s.t.Errorf("the collector's decoder refused the body: %v\n%s", err, body)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	type rejection struct {
		Index int    `json:"index"`
		Error string `json:"error"`
	}
	out := struct {
		Accepted int         `json:"accepted"`
		Rejected []rejection `json:"rejected"`
	}{Rejected: []rejection{}}
	s.mu.Lock()
	for _, rr := range res {
		if rr.Err != nil {
			out.Rejected = append(out.Rejected, rejection{rr.Index, rr.Err.Error()})
			continue
		}
		out.Accepted++
		s.events = append(s.events, rr.Event)
	}
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	_ = json.NewEncoder(w).Encode(out)
}

func (s *standInCollector) stored() []schemas.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]schemas.Event(nil), s.events...)
}

func (s *standInCollector) postCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.posts
}

// gunzipLines counts the NDJSON lines of a gzip body.
func gunzipLines(t *testing.T, body []byte) int {
	zr, err := gzip.NewReader(bytes.NewReader(body))
	if err != nil {
		t.Error(err)
		return 0
	}
	raw, _ := io.ReadAll(zr)
	return bytes.Count(raw, []byte("\n"))
}
