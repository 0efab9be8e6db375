package limits

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meterline/meterline/internal/retry"
	"github.com/meterline/meterline/store"
)

// AlertTypeThresholdCrossed is the type of every usage alert so far.
const AlertTypeThresholdCrossed = "usage.threshold_crossed"

// AlertEvent is the JSON body of a usage alert webhook.
type AlertEvent struct {
	// Type is AlertTypeThresholdCrossed.
	Type string `json:"type"`
	// CustomerID is the customer alerted and PlanID its plan.
	CustomerID string `json:"customer_id"`
	PlanID     string `json:"plan_id"`
	// PeriodStart is the start of the billing period (a calendar month,
	// UTC) in which the threshold was crossed.
	PeriodStart time.Time `json:"period_start"`
	// Threshold is the crossed fraction of Included (0.8 = 80 %).
	Threshold float64 `json:"threshold"`
	// Used are the units counted when the crossing was seen; the same on
	// every attempt of one delivery.
	Used float64 `json:"used"`
	// Included are the plan's included units per period.
	Included float64 `json:"included"`
	// DeliveryID is also the Meterline-Delivery header: the same on every
	// attempt and after a restart, so a receiver drops a repeat.
	DeliveryID string `json:"delivery_id"`
}

// AlertDeliveriesTable records every delivery attempt (migration 0003).
const AlertDeliveriesTable = "alert_deliveries"

var alertColumns = []string{
	"delivery_id", "customer_id", "plan_id", "period_start", "threshold",
	"attempt", "attempted_at", "status_code", "outcome", "error",
	"lease_generation", "sender", // migration 0008
}

// Outcomes of a delivery attempt, as recorded and counted.
const (
	outcomeDelivered = "delivered" // a 2xx answer
	outcomeRetrying  = "retrying"  // failed; another attempt follows
	outcomeFailed    = "failed"    // failed; no further attempt this period
	// Fencing rows (migration 0008), not attempts: a claim recorded before
	// each attempt, and the conclusion of a claim given up unsent.
	outcomeSending   = "sending"
	outcomeWithdrawn = "withdrawn"
)

const (
	// maxConcurrentPosts bounds the webhook requests in flight at once, so
	// a burst of crossings cannot open thousands of connections. Waiting
	// between retries does not hold a slot.
	maxConcurrentPosts = 64
	// maxRetryAfter caps a receiver's Retry-After: a longer wait is cut
	// short rather than parking the alert for days.
	maxRetryAfter = time.Hour
	// maxErrorBytes keeps recorded error texts (which may quote the
	// receiver's answer) short.
	maxErrorBytes = 512
	// recordTimeout bounds recording one attempt, also at shutdown.
	recordTimeout = 10 * time.Second
)

// DeliveryID returns the id of the alert for (customer, period, threshold):
// hex(SHA-256(customerID + "|" + periodStart in RFC 3339 UTC + "|" +
// threshold in shortest decimal form)), first 32 hex digits. It depends
// only on the crossing, so every attempt and every process agrees on it.
// The last two fields contain no "|", so distinct crossings never share
// an input.
func DeliveryID(customerID string, periodStart time.Time, threshold float64) string {
	s := customerID + "|" + periodStart.UTC().Format(time.RFC3339) + "|" + strconv.FormatFloat(threshold, 'g', -1, 64)
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])[:32]
}

// alertState is what this process knows of one alert in the current period.
type alertState struct {
	kind int    // stateInFlight, stateDelivered or stateFailed
	url  string // for stateFailed: the webhook that refused it
}

const (
	stateInFlight = iota + 1
	stateDelivered
	stateFailed
)

// alert is one delivery to make: the body is fixed at the crossing, so
// every attempt sends the same bytes (only the signature's time changes).
type alert struct {
	event        AlertEvent
	url          string
	body         []byte
	firstAttempt int // attempts recorded by earlier processes + 1
}

// alerter evaluates thresholds after each refresh and delivers alerts in
// the background: one worker per customer, so a customer's alerts arrive
// in threshold order while customers never wait for each other.
type alerter struct {
	v      *View
	client *http.Client
	ctx    context.Context // ends at close; every delivery runs under it
	cancel context.CancelFunc
	group  onceGroup
	posts  chan struct{} // semaphore of maxConcurrentPosts
	sender string        // random id of this alerter, on every row it records
	// pending counts the alerts queued or being delivered
	// (meterline_alerts_pending).
	pending atomic.Int64

	evalMu sync.Mutex // one evaluation at a time

	mu     sync.Mutex
	period time.Time
	state  map[string]alertState // delivery id -> state, current period only
	queues map[string][]*alert   // customer -> pending alerts of its running worker
}

func newAlerter(v *View) *alerter {
	ctx, cancel := context.WithCancel(context.Background())
	return &alerter{
		v:      v,
		client: newHTTPClient(v.cfg.WebhookTimeout),
		ctx:    ctx,
		cancel: cancel,
		posts:  make(chan struct{}, maxConcurrentPosts),
		sender: newSenderID(),
		state:  map[string]alertState{},
		queues: map[string][]*alert{},
	}
}

func (a *alerter) close() {
	a.cancel()
	a.group.closeAndWait()
}

// evaluate finds the thresholds crossed in s that this process has not
// handled, drops those that ClickHouse records as delivered (by this or an
// earlier process), and queues the rest. If the recorded state cannot be
// read, nothing is sent: sending blind could repeat a delivered alert.
func (a *alerter) evaluate(ctx context.Context, s *snapshot) error {
	a.evalMu.Lock()
	defer a.evalMu.Unlock()
	ix := a.v.reg.cur.Load()

	a.mu.Lock()
	if !a.period.Equal(s.periodStart) {
		// A new period: the previous one's states can never match again.
		a.period = s.periodStart
		a.state = map[string]alertState{}
	}
	var todo []*alert
	for i := range ix.cat.Customers {
		c := &ix.cat.Customers[i]
		if c.AlertWebhook == "" || ix.customers[c.ID] != c {
			continue
		}
		p := ix.plans[c.Plan]
		if p == nil || !(p.IncludedUnits > 0) {
			continue
		}
		used := s.used[c.ID]
		// used/included is compared rather than used with t*included: the
		// quotient of an exact crossing (70 of 100) rounds to the same
		// double as the threshold (0.7), while 0.7*100 rounds above 70.
		frac := used / p.IncludedUnits
		for _, t := range p.AlertThresholds { // ascending
			if frac < t {
				break
			}
			id := DeliveryID(c.ID, s.periodStart, t)
			st := a.state[id]
			if st.kind == stateInFlight || st.kind == stateDelivered ||
				(st.kind == stateFailed && st.url == c.AlertWebhook) {
				// A failed alert is tried again only when the webhook
				// changes: the old one refused it for good.
				continue
			}
			todo = append(todo, &alert{
				url: c.AlertWebhook,
				event: AlertEvent{
					Type:        AlertTypeThresholdCrossed,
					CustomerID:  c.ID,
					PlanID:      p.ID,
					PeriodStart: s.periodStart,
					Threshold:   t,
					Used:        used,
					Included:    p.IncludedUnits,
					DeliveryID:  id,
				},
			})
		}
	}
	a.mu.Unlock()
	if len(todo) == 0 {
		return nil
	}

	recorded, err := a.recorded(ctx, s.periodStart, todo)
	if err != nil {
		return err
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	for _, al := range todo {
		id := al.event.DeliveryID
		if r, ok := recorded[id]; ok {
			if r.delivered {
				a.state[id] = alertState{kind: stateDelivered}
				continue
			}
			al.firstAttempt = r.attempts + 1
		} else {
			al.firstAttempt = 1
		}
		body, err := json.Marshal(al.event)
		if err != nil {
			return fmt.Errorf("encode alert: %w", err)
		}
		al.body = body
		a.state[id] = alertState{kind: stateInFlight}
		cust := al.event.CustomerID
		q, running := a.queues[cust]
		a.queues[cust] = append(q, al)
		a.pending.Add(1)
		if !running {
			if !a.group.Go(func() { a.work(cust) }) {
				delete(a.queues, cust)
				delete(a.state, id)
				a.pending.Add(-1)
			}
		}
	}
	return nil
}

// recordedAlert summarises an alert's rows in alert_deliveries.
type recordedAlert struct {
	attempts  int
	delivered bool
}

// recorded reads what alert_deliveries holds for the candidate alerts.
func (a *alerter) recorded(ctx context.Context, period time.Time, todo []*alert) (map[string]recordedAlert, error) {
	ids := make([]string, 0, len(todo))
	var custs []string
	for _, al := range todo {
		ids = append(ids, al.event.DeliveryID)
		if !slices.Contains(custs, al.event.CustomerID) {
			custs = append(custs, al.event.CustomerID)
		}
	}
	// customer_id and period_start lead the sort key, so the read touches
	// only these customers' granules.
	rows, err := a.v.db.Query(ctx, `SELECT delivery_id, max(attempt), max(outcome = 'delivered')
FROM alert_deliveries
WHERE customer_id IN {customers:Array(String)}
  AND period_start = {period:DateTime}
  AND delivery_id IN {ids:Array(String)}
GROUP BY delivery_id`,
		store.P("customers", custs), store.P("period", period), store.P("ids", ids))
	if err != nil {
		return nil, fmt.Errorf("read alert deliveries: %w", err)
	}
	defer func() { _ = rows.Close() }()
	out := make(map[string]recordedAlert, len(ids))
	for rows.Next() {
		var id string
		var attempts, delivered int64
		if err := rows.Scan(&id, &attempts, &delivered); err != nil {
			return nil, fmt.Errorf("read alert deliveries: %w", err)
		}
		out[id] = recordedAlert{attempts: int(attempts), delivered: delivered != 0}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read alert deliveries: %w", err)
	}
	return out, nil
}

// work delivers the customer's queued alerts one after the other until
// the queue is empty.
func (a *alerter) work(cust string) {
	for {
		a.mu.Lock()
		q := a.queues[cust]
		if len(q) == 0 || a.ctx.Err() != nil {
			for _, al := range q {
				// Never attempted: forget them, a later evaluation (or
				// process) picks them up again.
				a.forget(al)
			}
			a.pending.Add(-int64(len(q)))
			delete(a.queues, cust)
			a.mu.Unlock()
			return
		}
		al := q[0]
		a.queues[cust] = q[1:]
		a.mu.Unlock()

		final := a.deliver(al)
		a.pending.Add(-1)

		a.mu.Lock()
		if a.period.Equal(al.event.PeriodStart) {
			switch final {
			case outcomeDelivered:
				a.state[al.event.DeliveryID] = alertState{kind: stateDelivered}
			case outcomeFailed:
				a.state[al.event.DeliveryID] = alertState{kind: stateFailed, url: al.url}
			default: // stopped before a final outcome
				a.forget(al)
			}
		}
		a.mu.Unlock()
	}
}

// forget drops an in-flight mark; a.mu must be held.
func (a *alerter) forget(al *alert) {
	if a.state[al.event.DeliveryID].kind == stateInFlight {
		delete(a.state, al.event.DeliveryID)
	}
}

// deliver attempts one alert until it is delivered, refused for good, out
// of attempts, or the alerter closes. It returns the final outcome, or ""
// when stopped.
func (a *alerter) deliver(al *alert) string {
	cfg := a.v.cfg
	bo := retry.NewBackoff(cfg.RetryMin, cfg.RetryMax)
	for n := 0; n < cfg.MaxAttempts; n++ {
		select {
		case a.posts <- struct{}{}:
		case <-a.ctx.Done():
			return ""
		}
		tok, held := a.v.token()
		if !held {
			// Another process sends alerts now; it finds this one
			// undelivered in alert_deliveries and carries on.
			<-a.posts
			a.v.log.Info("usage alert handed over: this process no longer holds the alert lease",
				"customer_id", al.event.CustomerID, "delivery_id", al.event.DeliveryID)
			return ""
		}
		start := time.Now()
		if verdict := a.claim(al, al.firstAttempt+n, start, tok); verdict != fenceClear {
			<-a.posts
			a.v.log.Info("usage alert not sent: "+string(verdict),
				"customer_id", al.event.CustomerID, "delivery_id", al.event.DeliveryID, "lease_generation", tok)
			if verdict == fenceDelivered {
				return outcomeDelivered
			}
			return "" // a later evaluation looks again
		}
		res := a.post(al)
		<-a.posts

		outcome := outcomeRetrying
		switch {
		case res.err == nil && res.status >= 200 && res.status < 300:
			outcome = outcomeDelivered
		case a.ctx.Err() != nil:
			// Cut short by shutdown: the receiver may or may not have it.
			// Recorded as retrying; the next process tries again.
			res.errText = "stopped by shutdown: " + res.errText
		case res.permanent || n == cfg.MaxAttempts-1:
			outcome = outcomeFailed
		}
		a.record(al, al.firstAttempt+n, start, res, outcome, tok)
		a.v.m.deliveries.WithLabelValues(outcome).Inc()
		log := a.v.log.With("customer_id", al.event.CustomerID, "delivery_id", al.event.DeliveryID,
			"threshold", al.event.Threshold, "attempt", al.firstAttempt+n, "status", res.status)
		switch {
		case outcome == outcomeDelivered:
			log.Info("usage alert delivered")
			return outcome
		case outcome == outcomeFailed:
			log.Error("usage alert failed; not retried this period unless the webhook changes", "err", res.errText)
			return outcome
		case a.ctx.Err() != nil:
			return ""
		}
		wait := bo.Next()
		if res.retryAfter > wait {
			wait = min(res.retryAfter, maxRetryAfter)
		}
		log.Warn("usage alert attempt failed; retrying", "err", res.errText, "retry_in", wait)
		if !sleepCtx(a.ctx, wait) {
			return ""
		}
	}
	return outcomeFailed // unreachable: the last attempt is final
}

// postResult is the outcome of one HTTP attempt.
type postResult struct {
	status     int    // 0 when no response arrived
	err        error  // transport failure
	errText    string // what to record; empty on success
	permanent  bool   // retrying cannot help
	retryAfter time.Duration
}

// post sends one signed attempt.
func (a *alerter) post(al *alert) postResult {
	req, err := http.NewRequestWithContext(a.ctx, http.MethodPost, al.url, bytes.NewReader(al.body))
	if err != nil {
		return postResult{err: err, errText: "bad webhook URL", permanent: true}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "Meterline-Webhooks/1")
	sig, err := a.v.signAlert(al.event.CustomerID, time.Now(), al.body)
	if err != nil {
		return postResult{err: err, errText: cleanText(err.Error())}
	}
	req.Header.Set(HeaderSignature, sig)
	req.Header.Set(HeaderDelivery, al.event.DeliveryID)
	resp, err := a.client.Do(req)
	if err != nil {
		return postResult{err: err, errText: transportError(err)}
	}
	defer func() {
		// Drain a little so the connection can be reused.
		_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
		_ = resp.Body.Close()
	}()
	r := postResult{status: resp.StatusCode}
	if r.status >= 200 && r.status < 300 {
		return r
	}
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBytes))
	r.errText = cleanText("HTTP " + strconv.Itoa(r.status) + ": " + string(snippet))
	switch {
	case r.status == http.StatusTooManyRequests, r.status >= 500:
		r.retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	default:
		// 3xx (redirects are not followed) and 4xx other than 429: the
		// receiver rejects this request as such; the same bytes will be
		// rejected again.
		r.permanent = true
	}
	return r
}

// transportError describes a failed request without its URL: webhook
// URLs often carry a secret in their path, and the text is recorded.
func transportError(err error) string {
	if ue, ok := errors.AsType[*url.Error](err); ok {
		err = ue.Err
	}
	return cleanText(err.Error())
}

// cleanText makes a text safe to record and log (retry.CleanText).
func cleanText(s string) string { return retry.CleanText(s, maxErrorBytes) }

// parseRetryAfter reads delay-seconds or an HTTP date, capped at
// maxRetryAfter; 0 when absent or unreadable.
func parseRetryAfter(v string, now time.Time) time.Duration {
	return retry.ParseRetryAfter(v, now, maxRetryAfter)
}

// record stores one attempt. It uses a context detached from shutdown so
// the attempt cut short by a stop is still recorded, and retries briefly:
// a delivered row that is lost lets a restarted process send the alert
// again.
func (a *alerter) record(al *alert, attempt int, at time.Time, res postResult, outcome string, tok int64) {
	if err := a.insert(al, attempt, at, res, outcome, tok); err != nil {
		a.v.log.Error("recording a usage alert attempt failed", "customer_id", al.event.CustomerID,
			"delivery_id", al.event.DeliveryID, "outcome", outcome, "err", err)
	}
}

// insert writes one row of alert_deliveries, retrying briefly.
func (a *alerter) insert(al *alert, attempt int, at time.Time, res postResult, outcome string, tok int64) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(a.ctx), recordTimeout)
	defer cancel()
	row := []any{
		al.event.DeliveryID, al.event.CustomerID, al.event.PlanID, al.event.PeriodStart, al.event.Threshold,
		uint16(min(attempt, 65535)), at.UTC(), uint16(min(max(res.status, 0), 65535)), outcome, res.errText,
		tok, a.sender,
	}
	var err error
	for try := range 3 {
		if err = a.v.db.Insert(ctx, AlertDeliveriesTable, alertColumns, [][]any{row}, store.InsertOptions{}); err == nil {
			return nil
		}
		if !sleepCtx(ctx, time.Duration(200<<try)*time.Millisecond) {
			break
		}
	}
	return err
}

// sleepCtx waits d or until ctx ends; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool { return retry.Sleep(ctx, d) }
