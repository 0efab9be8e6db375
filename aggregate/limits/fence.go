package limits

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/meterline/meterline/store"
)

// AlertFence is an AlertGate that also names the term it is held in:
// ingest.Lease's Token, the lease group's generation. Deliveries record it
// with every row and a sender refuses to send a delivery that a newer term
// has claimed.
type AlertFence interface {
	Token() (generation int64, held bool)
}

// token is the term alerts are sent under now and whether they may be
// sent: (0, true) without a gate, the gate's generation when it is an
// AlertFence.
func (v *View) token() (int64, bool) {
	if v.gate == nil {
		return 0, true
	}
	if f, ok := v.gate.(AlertFence); ok {
		return f.Token()
	}
	return 0, v.gate.Held()
}

// fenceVerdict is what a claim found (fenceClear: send).
type fenceVerdict string

const (
	fenceClear      fenceVerdict = ""
	fenceDelivered  fenceVerdict = "another sender delivered it"
	fenceSuperseded fenceVerdict = "a sender under a newer lease generation has claimed it"
	fenceBusy       fenceVerdict = "another sender's attempt may still be in flight"
	fenceUnknown    fenceVerdict = "its claim could not be recorded or checked"
)

// fenceWindow is how long another sender's claim counts as in flight or
// as current: its attempt is bounded by the webhook timeout and recording
// it by recordTimeout.
func (a *alerter) fenceWindow() time.Duration { return a.v.cfg.WebhookTimeout + recordTimeout }

// claim records that this sender is about to attempt al under lease
// generation tok, then reads the delivery's rows back. It returns
// fenceClear when al may be sent: nobody has delivered it, no other sender
// recorded a row under a newer generation within the fence window, and no
// other sender's claim within that window is unconcluded. Writing before
// reading means that of two senders claiming at once, at least one sees
// the other's claim, so they never both send. A claim given up is
// concluded with a withdrawn row.
func (a *alerter) claim(al *alert, attempt int, at time.Time, tok int64) fenceVerdict {
	if err := a.insert(al, attempt, at, postResult{}, outcomeSending, tok); err != nil {
		a.v.log.Warn("recording a usage alert claim failed; not sending", "delivery_id", al.event.DeliveryID, "err", err)
		return fenceUnknown
	}
	verdict, err := a.fence(al, tok)
	if err != nil {
		a.v.log.Warn("checking a usage alert's claims failed; not sending", "delivery_id", al.event.DeliveryID, "err", err)
		verdict = fenceUnknown
	}
	if verdict != fenceClear {
		if err := a.insert(al, attempt, time.Now(), postResult{errText: "not sent: " + string(verdict)}, outcomeWithdrawn, tok); err != nil {
			a.v.log.Warn("recording a withdrawn usage alert claim failed", "delivery_id", al.event.DeliveryID, "err", err)
		}
	}
	return verdict
}

// fenceQuery reads every row of one delivery.
const fenceQuery = `SELECT sender, lease_generation, attempt, outcome, attempted_at
FROM alert_deliveries
WHERE customer_id = {customer:String}
  AND period_start = {period:DateTime}
  AND delivery_id = {id:String}`

// fence decides on al's recorded rows (see claim).
func (a *alerter) fence(al *alert, tok int64) (fenceVerdict, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(a.ctx), recordTimeout)
	defer cancel()
	rows, err := a.v.db.Query(ctx, fenceQuery, store.P("customer", al.event.CustomerID),
		store.P("period", al.event.PeriodStart), store.P("id", al.event.DeliveryID))
	if err != nil {
		return fenceUnknown, fmt.Errorf("read alert deliveries: %w", err)
	}
	defer func() { _ = rows.Close() }()
	type key struct {
		sender  string
		attempt int64
	}
	open := map[key]time.Time{} // other senders' claims -> claimed at
	concluded := map[key]bool{}
	recent := time.Now().Add(-a.fenceWindow())
	superseded := false
	for rows.Next() {
		var sender, outcome string
		var gen, attempt int64
		var at time.Time
		if err := rows.Scan(&sender, &gen, &attempt, &outcome, &at); err != nil {
			return fenceUnknown, fmt.Errorf("read alert deliveries: %w", err)
		}
		if outcome == outcomeDelivered {
			return fenceDelivered, nil
		}
		if sender == a.sender {
			continue
		}
		if gen > tok && at.After(recent) {
			superseded = true
		}
		k := key{sender, attempt}
		if outcome == outcomeSending {
			open[k] = at
		} else {
			concluded[k] = true
		}
	}
	if err := rows.Err(); err != nil {
		return fenceUnknown, fmt.Errorf("read alert deliveries: %w", err)
	}
	if superseded {
		return fenceSuperseded, nil
	}
	for k, at := range open {
		if !concluded[k] && at.After(recent) {
			return fenceBusy, nil
		}
	}
	return fenceClear, nil
}

// newSenderID returns a random id for one alerter's rows.
func newSenderID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
