package limits

import (
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/store"
)

// fenceGate is a stand-in for ingest.Lease (an AlertFence a test sets by
// hand), so that two Views can be made to hold "the lease" at once in
// different generations, the overlap the fence exists for.
type fenceGate struct {
	gen  int64
	held atomic.Bool
}

func (g *fenceGate) Held() bool { return g.held.Load() }
func (g *fenceGate) Token() (int64, bool) {
	return g.gen, g.held.Load()
}

func heldGate(gen int64) *fenceGate {
	g := &fenceGate{gen: gen}
	g.held.Store(true)
	return g
}

// fenceRows counts a customer's rows of alert_deliveries with an outcome,
// written under lease generation gen.
func fenceRows(t *testing.T, db store.Conn, cust, outcome string, gen int64) uint64 {
	t.Helper()
	return testenv.Count(t, db, `SELECT count() FROM alert_deliveries
WHERE customer_id = {c:String} AND outcome = {o:String} AND lease_generation = {g:Int64}`,
		store.P("c", cust), store.P("o", outcome), store.P("g", gen))
}

// TestAlertFenceNoSecondSendWhileAnAttemptIsInFlight: two senders hold the
// lease at once (generations 1 and 2). While the first one's attempt is in
// flight (the receiver has it and has not answered), the second finds the
// open claim and does not send; once the first has recorded the delivery,
// the second sees it delivered. One request in all.
func TestAlertFenceNoSecondSendWhileAnAttemptIsInFlight(t *testing.T) {
	db := requireDB(t)
	answer := make(chan struct{})
	rc := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) int {
		if n == 0 {
			<-answer
		}
		return http.StatusOK
	})
	t.Cleanup(func() {
		select {
		case <-answer:
		default:
			close(answer)
		}
	})
	cust := testenv.Unique("fenced")
	reg := NewRegistry(alertCatalogue(t, map[string]string{cust: rc.srv.URL}))
	// A long webhook timeout (and so fence window): a's attempt stays in
	// flight however slowly the machine runs the test.
	cfg := alertConfig()
	cfg.WebhookTimeout = time.Minute
	a := newTestView(t, cfg, reg, fixedSource{cust: 850}, db)
	a.SetAlertGate(heldGate(1))
	b := newTestView(t, cfg, reg, fixedSource{cust: 850}, db)
	b.SetAlertGate(heldGate(2))

	refresh(t, a)
	rc.waitRequests(1) // a's attempt is in flight
	refresh(t, b)
	// b's delivery either withdraws its claim (fenced) or sends.
	testenv.Eventually(t, 30*time.Second, func() error {
		if len(rc.requests()) > 1 || fenceRows(t, db, cust, outcomeWithdrawn, 2) > 0 {
			return nil
		}
		return fmt.Errorf("the second sender neither sent nor withdrew")
	})
	if n := len(rc.requests()); n != 1 {
		t.Fatalf("%d webhook requests while the first attempt was in flight, want 1", n)
	}
	close(answer)
	testenv.Eventually(t, 30*time.Second, func() error {
		if fenceRows(t, db, cust, outcomeDelivered, 1) != 1 {
			return fmt.Errorf("the first sender has not recorded the delivery yet")
		}
		return nil
	})
	refresh(t, b) // reads the delivered row: nothing to send
	b.Close()
	a.Close()
	if n := len(rc.requests()); n != 1 {
		t.Fatalf("%d webhook requests, want 1", n)
	}
	if fenceRows(t, db, cust, outcomeSending, 1) != 1 || fenceRows(t, db, cust, outcomeSending, 2) != 1 {
		t.Fatal("each sender's claim was not recorded with its lease generation")
	}
}

// TestAlertFenceNewerGenerationSupersedes: a sender under generation 2
// attempted a delivery (refused with 503, retry pending); a sender that
// still believes it holds the lease under generation 1 finds the newer
// generation's row and does not send.
func TestAlertFenceNewerGenerationSupersedes(t *testing.T) {
	db := requireDB(t)
	rc := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) int {
		return http.StatusServiceUnavailable
	})
	cust := testenv.Unique("superseded")
	reg := NewRegistry(alertCatalogue(t, map[string]string{cust: rc.srv.URL}))
	cfg := alertConfig()
	cfg.RetryMin, cfg.RetryMax = time.Hour, time.Hour // b's retry stays pending
	cfg.WebhookTimeout = time.Minute                  // b's row stays within the fence window
	b := newTestView(t, cfg, reg, fixedSource{cust: 850}, db)
	b.SetAlertGate(heldGate(2))
	a := newTestView(t, cfg, reg, fixedSource{cust: 850}, db)
	a.SetAlertGate(heldGate(1))

	refresh(t, b)
	rc.waitRequests(1)
	testenv.Eventually(t, 30*time.Second, func() error {
		if len(deliveryRows(t, db, cust)) != 1 {
			return fmt.Errorf("the newer sender's attempt is not recorded yet")
		}
		return nil
	})
	refresh(t, a)
	testenv.Eventually(t, 30*time.Second, func() error {
		if len(rc.requests()) > 1 || fenceRows(t, db, cust, outcomeWithdrawn, 1) > 0 {
			return nil
		}
		return fmt.Errorf("the older sender neither sent nor withdrew")
	})
	a.Close()
	b.Close()
	if n := len(rc.requests()); n != 1 {
		t.Fatalf("%d webhook requests, want only the newer generation's", n)
	}
	if fenceRows(t, db, cust, outcomeRetrying, 2) != 1 {
		t.Fatal("the newer sender's attempt was not recorded with its lease generation")
	}
}
