// Package billingtest holds StripeStandIn, a recording stand-in for
// Stripe's API that the billing tests (in package billing and in the
// end-to-end tests of the meterline command) point the worker at. It is
// a test helper: nothing in Meterline's binary uses it.
//
// Unlike stripe-mock, which validates requests but keeps no state, the
// stand-in behaves like Stripe where billing correctness depends on it:
// an idempotency key replays the stored answer of its first request
// (without applying it again) and refuses other parameters under the same
// key; meter events with an identifier already seen are dropped, not
// summed; usage records with action=set replace the quantity at their
// timestamp. It can inject faults: 429 (with or without
// Stripe-Should-Retry and Retry-After), 409, 500 (before or after applying
// the request), timeouts and dropped responses (applied, then the
// connection is closed without an answer).
package billingtest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Fault is what the stand-in does to one request instead of answering it
// normally.
type Fault string

// Faults the stand-in can inject.
const (
	None               Fault = ""
	RateLimited        Fault = "429"               // 429 rate_limit, no Stripe-Should-Retry
	RateLimitedRetry   Fault = "429-retry-after"   // 429 with Stripe-Should-Retry: true and Retry-After: 1
	RateLimitedNoRetry Fault = "429-no-retry"      // 429 with Stripe-Should-Retry: false
	Conflict           Fault = "409"               // 409 lock conflict, not stored under the key
	ServerError        Fault = "500"               // 500 before applying; stored under the key, as Stripe does
	ServerErrorApplied Fault = "500-after-applied" // applied, then 500 stored under the key
	Timeout            Fault = "timeout"           // applied and stored, answered only after Delay
	Dropped            Fault = "dropped"           // applied and stored, connection closed without an answer
	Refused            Fault = "400"               // 400 invalid_request_error, not applied
)

// Request is one request the stand-in received.
type Request struct {
	Path           string
	IdempotencyKey string
	Identifier     string // meter events
	Customer       string // meter events: payload[stripe_customer_id]
	Value          string // meter events: payload[value]; usage records: quantity
	Timestamp      int64
	Fault          Fault
	Status         int  // status answered (0 for dropped)
	Replayed       bool // answered from the idempotency store
}

// MeterEvent is a meter event Stripe keeps.
type MeterEvent struct {
	EventName, Identifier, Customer, Value string
	Timestamp                              int64
}

// StripeStandIn is the recording stand-in. Create it with New.
type StripeStandIn struct {
	URL string
	// Delay is how long a Timeout fault holds its answer; set it above the
	// client's request timeout.
	Delay time.Duration

	srv *httptest.Server

	mu          sync.Mutex
	faults      func(n int, r *Request) Fault
	n           int
	requests    []Request
	stored      map[string]stored
	events      map[string]MeterEvent // by identifier
	dupDropped  int
	usage       map[string]map[int64]int64 // item -> timestamp -> quantity
	subs        map[string]string          // stripe customer -> subscription list JSON
	reqSeq      int
	idempotency int // refusals for a key reused with other parameters
}

type stored struct {
	params string
	status int
	body   []byte
}

// New starts a stand-in; Close it at the end.
func New() *StripeStandIn {
	s := &StripeStandIn{Delay: 2 * time.Second, stored: map[string]stored{}, events: map[string]MeterEvent{},
		usage: map[string]map[int64]int64{}, subs: map[string]string{}}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	s.URL = s.srv.URL
	return s
}

// Close stops the server.
func (s *StripeStandIn) Close() { s.srv.CloseClientConnections(); s.srv.Close() }

// SetFaults installs the fault plan: f is called for every request (n
// counts requests from 1) and returns the fault to inject.
func (s *StripeStandIn) SetFaults(f func(n int, r *Request) Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = f
}

// SetSubscriptions sets the JSON list answered to GET /v1/subscriptions
// for a customer.
func (s *StripeStandIn) SetSubscriptions(customer, listJSON string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.subs[customer] = listJSON
}

// Requests returns every request received so far.
func (s *StripeStandIn) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// MeterEvents returns the meter events kept (one per identifier), sorted
// by identifier.
func (s *StripeStandIn) MeterEvents() []MeterEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]MeterEvent, 0, len(s.events))
	for _, e := range s.events {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Identifier < out[j].Identifier })
	return out
}

// DuplicatesDropped counts meter events dropped for a repeated identifier.
func (s *StripeStandIn) DuplicatesDropped() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dupDropped
}

// IdempotencyMismatches counts keys reused with other parameters (a bug).
func (s *StripeStandIn) IdempotencyMismatches() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.idempotency
}

// UsageTotal returns what Stripe bills for a usage-record item with
// aggregate_usage=last_during_period in [from, to): the quantity at the
// latest timestamp in the range, and whether there is one.
func (s *StripeStandIn) UsageTotal(item string, from, to time.Time) (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var best int64 = -1
	var q int64
	for ts, v := range s.usage[item] {
		if ts >= from.Unix() && ts < to.Unix() && ts > best {
			best, q = ts, v
		}
	}
	return q, best >= 0
}

var usagePath = regexp.MustCompile(`^/v1/subscription_items/([^/]+)/usage_records$`)

func (s *StripeStandIn) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && r.URL.Path == "/v1/subscriptions" {
		s.mu.Lock()
		body, ok := s.subs[r.URL.Query().Get("customer")]
		s.mu.Unlock()
		if !ok {
			body = `{"object":"list","url":"/v1/subscriptions","has_more":false,"data":[]}`
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(body))
		return
	}
	if err := r.ParseForm(); err != nil || r.Method != http.MethodPost {
		writeErr(w, 400, "invalid_request_error", "", "bad request")
		return
	}
	req := Request{Path: r.URL.Path, IdempotencyKey: r.Header.Get("Idempotency-Key"), Timestamp: atoi(r.PostForm.Get("timestamp"))}
	var item string
	switch {
	case r.URL.Path == "/v1/billing/meter_events":
		req.Identifier = r.PostForm.Get("identifier")
		req.Customer = r.PostForm.Get("payload[stripe_customer_id]")
		req.Value = r.PostForm.Get("payload[value]")
	case usagePath.MatchString(r.URL.Path):
		item = usagePath.FindStringSubmatch(r.URL.Path)[1]
		req.Value = r.PostForm.Get("quantity")
		if r.PostForm.Get("action") != "set" {
			writeErr(w, 400, "invalid_request_error", "", "the stand-in only takes action=set")
			return
		}
	default:
		writeErr(w, 404, "invalid_request_error", "resource_missing", "unknown path "+r.URL.Path)
		return
	}
	params := hash(r.URL.Path + "?" + canonical(r.PostForm))

	s.mu.Lock()
	s.n++
	if s.faults != nil {
		req.Fault = s.faults(s.n, &req)
	}
	if st, ok := s.stored[req.IdempotencyKey]; ok && req.IdempotencyKey != "" && req.Fault != Dropped && req.Fault != Timeout {
		if st.params != params {
			s.idempotency++
			req.Status = 400
			s.requests = append(s.requests, req)
			s.mu.Unlock()
			writeErr(w, 400, "idempotency_error", "", "Keys for idempotent requests can only be used with the same parameters they were first used with.")
			return
		}
		req.Status, req.Replayed = st.status, true
		s.requests = append(s.requests, req)
		s.mu.Unlock()
		w.Header().Set("Idempotent-Replayed", "true")
		writeRaw(w, st.status, st.body, "")
		return
	}
	reqID := s.nextID()
	switch req.Fault {
	case RateLimited, RateLimitedRetry, RateLimitedNoRetry, Conflict, Refused:
		status := map[Fault]int{RateLimited: 429, RateLimitedRetry: 429, RateLimitedNoRetry: 429, Conflict: 409, Refused: 400}[req.Fault]
		req.Status = status
		s.requests = append(s.requests, req)
		s.mu.Unlock()
		switch req.Fault {
		case RateLimitedRetry:
			w.Header().Set("Stripe-Should-Retry", "true")
			w.Header().Set("Retry-After", "1")
		case RateLimitedNoRetry:
			w.Header().Set("Stripe-Should-Retry", "false")
		}
		w.Header().Set("Request-Id", reqID)
		switch status {
		case 429:
			writeErr(w, 429, "invalid_request_error", "rate_limit", "Request rate limit exceeded.")
		case 409:
			writeErr(w, 409, "invalid_request_error", "lock_timeout", "This object cannot be accessed right now because another API request or Stripe process is currently accessing it.")
		default:
			writeErr(w, 400, "invalid_request_error", "parameter_invalid", "refused by the stand-in")
		}
		return
	case ServerError:
		body := errBody("api_error", "", "An unknown error occurred")
		s.stored[req.IdempotencyKey] = stored{params: params, status: 500, body: body}
		req.Status = 500
		s.requests = append(s.requests, req)
		s.mu.Unlock()
		writeRaw(w, 500, body, reqID)
		return
	}
	// Apply.
	var body []byte
	if item == "" {
		if _, dup := s.events[req.Identifier]; dup {
			s.dupDropped++
		} else {
			s.events[req.Identifier] = MeterEvent{EventName: r.PostForm.Get("event_name"), Identifier: req.Identifier,
				Customer: req.Customer, Value: req.Value, Timestamp: req.Timestamp}
		}
		body, _ = json.Marshal(map[string]any{"object": "billing.meter_event", "created": time.Now().Unix(),
			"event_name": r.PostForm.Get("event_name"), "identifier": req.Identifier, "livemode": false,
			"payload": map[string]string{"stripe_customer_id": req.Customer, "value": req.Value}, "timestamp": req.Timestamp})
	} else {
		if s.usage[item] == nil {
			s.usage[item] = map[int64]int64{}
		}
		s.usage[item][req.Timestamp] = atoi(req.Value)
		body, _ = json.Marshal(map[string]any{"id": "mbur_" + strings.TrimPrefix(reqID, "req_"), "object": "usage_record",
			"livemode": false, "quantity": atoi(req.Value), "subscription_item": item, "timestamp": req.Timestamp})
	}
	status := 200
	if req.Fault == ServerErrorApplied {
		status, body = 500, errBody("api_error", "", "An unknown error occurred")
	}
	s.stored[req.IdempotencyKey] = stored{params: params, status: status, body: body}
	req.Status = status
	if req.Fault == Dropped {
		req.Status = 0
	}
	s.requests = append(s.requests, req)
	delay := s.Delay
	s.mu.Unlock()
	switch req.Fault {
	case Dropped:
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				_ = conn.Close()
				return
			}
		}
		panic(http.ErrAbortHandler)
	case Timeout:
		select {
		case <-r.Context().Done():
			return
		case <-time.After(delay):
		}
	}
	writeRaw(w, status, body, reqID)
}

func (s *StripeStandIn) nextID() string {
	s.reqSeq++
	return fmt.Sprintf("req_standin%06d", s.reqSeq)
}

func writeRaw(w http.ResponseWriter, status int, body []byte, reqID string) {
	w.Header().Set("Content-Type", "application/json")
	if reqID != "" && w.Header().Get("Request-Id") == "" {
		w.Header().Set("Request-Id", reqID)
	}
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func errBody(typ, code, msg string) []byte {
	e := map[string]string{"type": typ, "message": msg}
	if code != "" {
		e["code"] = code
	}
	b, _ := json.Marshal(map[string]any{"error": e})
	return b
}

func writeErr(w http.ResponseWriter, status int, typ, code, msg string) {
	writeRaw(w, status, errBody(typ, code, msg), "")
}

func canonical(v url.Values) string {
	keys := make([]string, 0, len(v))
	for k := range v {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k + "=" + strings.Join(v[k], ",") + "&")
	}
	return b.String()
}

func hash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

func atoi(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}
