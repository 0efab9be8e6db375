// Package billing reports metered usage to Stripe and keeps the books of
// what it reported.
//
// The worker (Worker.RunOnce, Worker.Run) reads the usage rollups of
// closed, settled windows, subtracts what the ledger (table billing_ledger)
// says Stripe already has, and reports the difference: one Billing Meter
// event per customer and window (with later corrections as new, separately
// identified events), or, for plans on legacy usage records, the
// period-to-date total with action=set. Every attempt and outcome is
// appended to the ledger before and after the request, so a worker killed
// at any instant resumes without billing twice; requests carry
// deterministic idempotency keys and identifiers.
//
// Reconcile compares, per customer and period, the rollups with what was
// reported and acknowledged and explains every difference. WebhookHandler
// records Stripe's invoice events. The mapping file (LoadMapping) says
// which Stripe customer, meter or subscription item each customer's usage
// goes to.
package billing
