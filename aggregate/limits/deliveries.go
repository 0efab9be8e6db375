package limits

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/meterline/meterline/store"
)

// Delivery is one recorded attempt of a usage alert, as people see it: the
// web interface's plan card and support. It carries neither the webhook
// URL nor the receiver's answer text, so it is safe to show to the
// customer it belongs to.
type Delivery struct {
	// DeliveryID is the alert's id (DeliveryID), the same on every attempt.
	DeliveryID string `json:"delivery_id"`
	// PeriodStart is the billing period of the crossing.
	PeriodStart time.Time `json:"period_start"`
	// Threshold is the crossed fraction of the plan's included units.
	Threshold float64 `json:"threshold"`
	// Attempt counts the alert's attempts from 1, across restarts.
	Attempt int `json:"attempt"`
	// AttemptedAt is when the attempt started.
	AttemptedAt time.Time `json:"attempted_at"`
	// StatusCode is the receiver's HTTP status, 0 when no answer arrived.
	StatusCode int `json:"status_code"`
	// State is the attempt's outcome: delivered, retrying or failed.
	State string `json:"state"`
}

// MaxRecentDeliveries bounds RecentDeliveries' n.
const MaxRecentDeliveries = 100

// RecentDeliveries returns the customer's latest n (1 to
// MaxRecentDeliveries) alert delivery attempts in alert_deliveries,
// newest first. The fencing rows that precede each attempt are left out:
// they record a claim, not an answer.
func RecentDeliveries(ctx context.Context, db store.Conn, customerID string, n int) ([]Delivery, error) {
	if db == nil {
		return nil, errors.New("alert deliveries: no database")
	}
	if customerID == "" || len(customerID) > maxIDBytes {
		return nil, fmt.Errorf("alert deliveries: customer id must be 1-%d bytes", maxIDBytes)
	}
	if n < 1 || n > MaxRecentDeliveries {
		return nil, fmt.Errorf("alert deliveries: n = %d is out of range 1-%d", n, MaxRecentDeliveries)
	}
	// customer_id leads the sort key, so the read touches this customer's
	// granules only.
	rows, err := db.Query(ctx, `SELECT delivery_id, period_start, threshold, attempt, attempted_at, status_code, outcome
FROM alert_deliveries
WHERE customer_id = {customer:String}
  AND outcome IN ('delivered', 'retrying', 'failed')
ORDER BY attempted_at DESC, attempt DESC, delivery_id
LIMIT {n:UInt32}`, store.P("customer", customerID), store.P("n", uint32(n)))
	if err != nil {
		return nil, fmt.Errorf("read alert deliveries: %w", err)
	}
	defer func() { _ = rows.Close() }()
	var out []Delivery
	for rows.Next() {
		var d Delivery
		var attempt, status int64
		if err := rows.Scan(&d.DeliveryID, &d.PeriodStart, &d.Threshold, &attempt, &d.AttemptedAt, &status, &d.State); err != nil {
			return nil, fmt.Errorf("read alert deliveries: %w", err)
		}
		d.Attempt, d.StatusCode = int(attempt), int(status)
		d.PeriodStart, d.AttemptedAt = d.PeriodStart.UTC(), d.AttemptedAt.UTC()
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read alert deliveries: %w", err)
	}
	return out, nil
}
