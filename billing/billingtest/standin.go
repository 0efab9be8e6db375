// Package billingtest holds StripeStandIn, a recording stand-in for
// Stripe's API that the billing tests (in package billing and in the
// end-to-end tests of the meterline command) point the worker at. It is
// a test helper: nothing in Meterline's binary uses it.
//
// Unlike stripe-mock, which validates requests but keeps no state, the
// stand-in behaves as Stripe documents where billing correctness depends
// on it: an idempotency key replays the stored answer of its first
// request (without applying it again) and refuses other parameters under
// the same key with 400 idempotency_error; a meter event whose identifier
// it already holds is refused with 400 "An event already exists with
// identifier ..." and Stripe-Should-Retry: false (not applied); usage
// records with action=set replace the quantity at their timestamp and
// action=increment adds to it. It serves what it applied back as Stripe
// does: the meters (GET /v1/billing/meters), the meter event summaries per
// customer (GET /v1/billing/meters/{id}/event_summaries) and the usage
// record summaries per calendar month (GET
// /v1/subscription_items/{id}/usage_record_summaries, as for a price with
// aggregate_usage=last_during_period on a subscription billed by calendar
// month). It can inject faults before the request is applied (429 with or
// without Stripe-Should-Retry and Retry-After, 409, 400, 500, a timeout, a
// dropped connection) and after it was applied (500, a timeout, a dropped
// connection): an answer lost after the request was applied is the case
// where a client cannot know whether it was billed.
package billingtest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
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

// Faults the stand-in can inject. Those named "applied" (and Timeout and
// Dropped) happen after the request was applied and its answer stored
// under its idempotency key; the others before anything was applied.
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
	TimeoutBefore      Fault = "timeout-before"    // not applied, answered 500 only after Delay
	DroppedBefore      Fault = "dropped-before"    // not applied, connection closed without an answer
	Refused            Fault = "400"               // 400 invalid_request_error, not applied
)

// Request is one request the stand-in received.
type Request struct {
	Path           string
	IdempotencyKey string
	Identifier     string // meter events
	Customer       string // meter events: payload[stripe_customer_id]
	Value          string // meter events: payload[value]; usage records: quantity
	Action         string // usage records: set or increment
	Timestamp      int64
	Fault          Fault
	Status         int  // status answered (0 for dropped)
	Replayed       bool // answered from the idempotency store
	Duplicate      bool // a meter event refused for an identifier already held
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
	meters      map[string]string     // event name -> meter id
	dupRefused  int
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
		meters: map[string]string{}, usage: map[string]map[int64]int64{}, subs: map[string]string{}}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	s.URL = s.srv.URL
	return s
}

// Close stops the server.
func (s *StripeStandIn) Close() { s.srv.CloseClientConnections(); s.srv.Close() }

// SetFaults installs the fault plan: f is called for every POST (n counts
// them from 1) and returns the fault to inject.
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

// AddMeter declares an active meter (sum of the payload's value, customer
// in stripe_customer_id) for an event name and returns its id. A meter
// event for an unknown event name declares its meter too (Stripe would
// report it asynchronously as an error; the stand-in is lenient).
func (s *StripeStandIn) AddMeter(eventName string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.meterLocked(eventName)
}

func (s *StripeStandIn) meterLocked(eventName string) string {
	id, ok := s.meters[eventName]
	if !ok {
		id = "mtr_standin" + hash(eventName)[:16]
		s.meters[eventName] = id
	}
	return id
}

// AddMeterEvent makes Stripe hold a meter event that no request of the
// worker sent (one created by hand in the Dashboard, or by another
// installation): the reconciliation must show it as unexplained.
func (s *StripeStandIn) AddMeterEvent(e MeterEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.meterLocked(e.EventName)
	s.events[e.Identifier] = e
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

// DuplicatesRefused counts meter events refused because Stripe already
// held their identifier.
func (s *StripeStandIn) DuplicatesRefused() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dupRefused
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
	return s.usageTotalLocked(item, from.Unix(), to.Unix())
}

func (s *StripeStandIn) usageTotalLocked(item string, from, to int64) (int64, bool) {
	var best int64 = -1
	var q int64
	for ts, v := range s.usage[item] {
		if ts >= from && ts < to && ts > best {
			best, q = ts, v
		}
	}
	return q, best >= 0
}

var (
	usagePath        = regexp.MustCompile(`^/v1/subscription_items/([^/]+)/usage_records$`)
	usageSummaryPath = regexp.MustCompile(`^/v1/subscription_items/([^/]+)/usage_record_summaries$`)
	meterSummaryPath = regexp.MustCompile(`^/v1/billing/meters/([^/]+)/event_summaries$`)
)

func (s *StripeStandIn) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet {
		s.serveGet(w, r)
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
		req.Action = r.PostForm.Get("action")
		if req.Action == "" {
			req.Action = "increment" // Stripe's default
		}
		if req.Action != "set" && req.Action != "increment" {
			writeErr(w, 400, "invalid_request_error", "parameter_invalid", "action must be set or increment")
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
	reqID := s.nextID()
	// Faults at Stripe's edge: nothing applied, nothing stored.
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
	case DroppedBefore, TimeoutBefore:
		req.Status = 0
		s.requests = append(s.requests, req)
		delay := s.Delay
		s.mu.Unlock()
		if req.Fault == TimeoutBefore {
			select {
			case <-r.Context().Done():
				return
			case <-time.After(delay):
			}
			writeRaw(w, 500, errBody("api_error", "", "An unknown error occurred"), reqID)
			return
		}
		drop(w)
		return
	}
	// The idempotency layer: a key seen before replays its stored answer
	// (a fault after this point only spoils the delivery of the replay).
	if st, ok := s.stored[req.IdempotencyKey]; ok && req.IdempotencyKey != "" {
		if st.params != params {
			s.idempotency++
			req.Status = 400
			s.requests = append(s.requests, req)
			s.mu.Unlock()
			writeErr(w, 400, "idempotency_error", "", "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '"+req.IdempotencyKey+"' if you meant to execute a different request.")
			return
		}
		req.Status, req.Replayed = st.status, true
		s.requests = append(s.requests, req)
		delay := s.Delay
		s.mu.Unlock()
		w.Header().Set("Idempotent-Replayed", "true")
		s.deliver(w, r, req.Fault, delay, st.status, st.body, reqID)
		return
	}
	if req.Fault == ServerError {
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
		if _, dup := s.events[req.Identifier]; dup && req.Identifier != "" {
			// Stripe refuses a repeated identifier; a validation error is
			// not stored under the idempotency key.
			s.dupRefused++
			req.Status, req.Duplicate = 400, true
			s.requests = append(s.requests, req)
			delay := s.Delay
			s.mu.Unlock()
			w.Header().Set("Stripe-Should-Retry", "false")
			s.deliver(w, r, req.Fault, delay, 400, errBody("invalid_request_error", "",
				"An event already exists with identifier "+req.Identifier+"."), reqID)
			return
		}
		name := r.PostForm.Get("event_name")
		s.meterLocked(name)
		s.events[req.Identifier] = MeterEvent{EventName: name, Identifier: req.Identifier,
			Customer: req.Customer, Value: req.Value, Timestamp: req.Timestamp}
		body, _ = json.Marshal(map[string]any{"object": "billing.meter_event", "created": time.Now().Unix(),
			"event_name": name, "identifier": req.Identifier, "livemode": false,
			"payload": map[string]string{"stripe_customer_id": req.Customer, "value": req.Value}, "timestamp": req.Timestamp})
	} else {
		if s.usage[item] == nil {
			s.usage[item] = map[int64]int64{}
		}
		q := atoi(req.Value)
		if req.Action == "increment" {
			q += s.usage[item][req.Timestamp]
		}
		s.usage[item][req.Timestamp] = q
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
	s.deliver(w, r, req.Fault, delay, status, body, reqID)
}

// deliver writes an answer, or spoils it with a Timeout or Dropped fault.
func (s *StripeStandIn) deliver(w http.ResponseWriter, r *http.Request, f Fault, delay time.Duration, status int, body []byte, reqID string) {
	switch f {
	case Dropped:
		drop(w)
		return
	case Timeout:
		select {
		case <-r.Context().Done():
			return
		case <-time.After(delay):
		}
	case ServerErrorApplied:
		status, body = 500, errBody("api_error", "", "An unknown error occurred")
	}
	writeRaw(w, status, body, reqID)
}

// drop closes the connection without an answer.
func drop(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			_ = conn.Close()
			return
		}
	}
	panic(http.ErrAbortHandler)
}

// serveGet answers the list endpoints from what the stand-in applied.
func (s *StripeStandIn) serveGet(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	s.mu.Lock()
	defer s.mu.Unlock()
	list := func(path string, data []any) {
		if data == nil {
			data = []any{}
		}
		b, _ := json.Marshal(map[string]any{"object": "list", "url": path, "has_more": false, "data": data})
		writeRaw(w, 200, b, s.nextID())
	}
	switch p := r.URL.Path; {
	case p == "/v1/subscriptions":
		body, ok := s.subs[q.Get("customer")]
		if !ok {
			body = `{"object":"list","url":"/v1/subscriptions","has_more":false,"data":[]}`
		}
		writeRaw(w, 200, []byte(body), s.nextID())
	case p == "/v1/billing/meters":
		var data []any
		for _, name := range sortedKeys(s.meters) {
			data = append(data, map[string]any{"id": s.meters[name], "object": "billing.meter", "event_name": name,
				"display_name": name, "status": "active", "livemode": false, "event_time_window": nil,
				"default_aggregation": map[string]string{"formula": "sum"},
				"customer_mapping":    map[string]string{"event_payload_key": "stripe_customer_id", "type": "by_id"},
				"value_settings":      map[string]string{"event_payload_key": "value"},
				"status_transitions":  map[string]any{"deactivated_at": nil},
				"created":             0, "updated": 0})
		}
		list(p, data)
	case meterSummaryPath.MatchString(p):
		meter := meterSummaryPath.FindStringSubmatch(p)[1]
		name := ""
		for n, id := range s.meters {
			if id == meter {
				name = n
			}
		}
		start, end := atoi(q.Get("start_time")), atoi(q.Get("end_time"))
		if name == "" || q.Get("customer") == "" || end <= start {
			writeErr(w, 400, "invalid_request_error", "", "unknown meter, or customer, start_time, end_time missing")
			return
		}
		step := end - start
		switch q.Get("value_grouping_window") {
		case "hour":
			step = 3600
		case "day":
			step = 86400
		case "":
		default:
			writeErr(w, 400, "invalid_request_error", "", "value_grouping_window must be hour or day")
			return
		}
		sums := map[int64]*big.Rat{}
		for _, e := range s.events {
			if e.EventName != name || e.Customer != q.Get("customer") || e.Timestamp < start || e.Timestamp >= end {
				continue
			}
			v, ok := new(big.Rat).SetString(e.Value)
			if !ok {
				continue
			}
			b := start + (e.Timestamp-start)/step*step
			if sums[b] == nil {
				sums[b] = new(big.Rat)
			}
			sums[b].Add(sums[b], v)
		}
		var buckets []int64
		for b := range sums {
			buckets = append(buckets, b)
		}
		sort.Slice(buckets, func(i, j int) bool { return buckets[i] < buckets[j] })
		var data []any
		for _, b := range buckets {
			f, _ := sums[b].Float64()
			data = append(data, map[string]any{"id": fmt.Sprintf("mtrusg_standin%d", b), "object": "billing.meter_event_summary",
				"aggregated_value": f, "start_time": b, "end_time": min(b+step, end), "livemode": false, "meter": meter})
		}
		list(p, data)
	case usageSummaryPath.MatchString(p):
		item := usageSummaryPath.FindStringSubmatch(p)[1]
		months := map[int64]bool{}
		for ts := range s.usage[item] {
			t := time.Unix(ts, 0).UTC()
			months[time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC).Unix()] = true
		}
		var starts []int64
		for m := range months {
			starts = append(starts, m)
		}
		sort.Slice(starts, func(i, j int) bool { return starts[i] > starts[j] }) // newest first, as Stripe
		var data []any
		for _, m := range starts {
			end := time.Unix(m, 0).UTC().AddDate(0, 1, 0).Unix()
			total, _ := s.usageTotalLocked(item, m, end)
			data = append(data, map[string]any{"id": fmt.Sprintf("sis_standin%d", m), "object": "usage_record_summary",
				"invoice": nil, "livemode": false, "period": map[string]int64{"start": m, "end": end},
				"subscription_item": item, "total_usage": total})
		}
		list(p, data)
	default:
		writeErr(w, 404, "invalid_request_error", "resource_missing", "unknown path "+p)
	}
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

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
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
