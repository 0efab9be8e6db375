package api

import (
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestLimiterRefusalsStartAtZero checks that both refusal reasons are
// exposed before the first refusal, and that a refusal counts under its own.
func TestLimiterRefusalsStartAtZero(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	l := NewLimiter(ReadConfig{}, reg)
	want := func(conc, rate int) string {
		return `# HELP meterline_api_requests_limited_total Read API requests refused with 429, by reason (concurrency, rate).
# TYPE meterline_api_requests_limited_total counter
meterline_api_requests_limited_total{reason="concurrency"} ` + strconv.Itoa(conc) + `
meterline_api_requests_limited_total{reason="rate"} ` + strconv.Itoa(rate) + `
`
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want(0, 0))); err != nil {
		t.Fatal(err)
	}
	_ = l.refuse(&Refusal{Reason: "rate"})
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want(0, 1))); err != nil {
		t.Fatal(err)
	}
}
