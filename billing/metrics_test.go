package billing

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestMetricsStartAtZero checks that every known label value of the billing
// counters is exposed at zero before the first report, so that alert rules
// (increase of errors, failed reports) see the first one.
func TestMetricsStartAtZero(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	newMetrics(reg)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series := map[string]int{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if m.GetCounter() != nil && m.GetCounter().GetValue() != 0 {
				t.Errorf("%s %v starts at %v", mf.GetName(), m.GetLabel(), m.GetCounter().GetValue())
			}
			series[mf.GetName()]++
		}
	}
	for name, n := range map[string]int{
		"meterline_billing_reports_total":            2 * 5, // 2 modes × acknowledged, retrying, failed, abandoned, unbillable
		"meterline_billing_errors_total":             len(errorKinds),
		"meterline_billing_units_acknowledged_total": 2,
		"meterline_billing_runs_total":               2,
	} {
		if series[name] != n {
			t.Errorf("%s: %d series, want %d", name, series[name], n)
		}
	}
	wreg := prometheus.NewPedanticRegistry()
	NewWebhookHandler("whsec_x", nil, nil, wreg, nil)
	if n, err := testutil.GatherAndCount(wreg, "meterline_billing_webhooks_total"); err != nil || n != 4 {
		t.Errorf("meterline_billing_webhooks_total: %d series (%v), want 4 (recorded, ignored, rejected, error)", n, err)
	}
	if len(errorKinds) != 8 {
		t.Errorf("errorKinds %v: the metric's help names 8 kinds", errorKinds)
	}
	for _, a := range []answer{{status: 0}, {status: 409}, {status: 429}, {status: 503}, {status: 400}} {
		k := errorKind(a)
		found := false
		for _, e := range errorKinds {
			found = found || e == k
		}
		if !found {
			t.Errorf("errorKind(%d) = %q, not in errorKinds", a.status, k)
		}
	}
}
