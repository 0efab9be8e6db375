package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/meterline/meterline/internal/testenv"
)

// TestUIBenchFirstChart (run only with METERLINE_TEST_UI_BENCH=N, the
// number of navigations to time) drives headless chromium against `meterline serve`
// holding a modest data set (METERLINE_TEST_UI_BENCH_EVENTS events, default
// 20,000, over 10 customers and 7 days, posted through the collector) and
// reports, per navigation to a customer page with the 7-day range: the time
// from navigation to the first chart drawn (a uPlot canvas; without the
// chart library installed, the usage table, reported as table-ms instead),
// and the bytes the page and its assets took on the wire (the browser's
// transferSize, compressed when the server compresses). Figures are
// reported, not asserted; docs/performance.md has the latest.
func TestUIBenchFirstChart(b *testing.T) {
	var navigations int
	if v := os.Getenv("METERLINE_TEST_UI_BENCH"); v == "" {
		b.Skip("a measurement, not a check: set METERLINE_TEST_UI_BENCH=20 (navigations) to run it")
	} else if _, err := fmt.Sscan(v, &navigations); err != nil || navigations < 1 {
		b.Fatalf("METERLINE_TEST_UI_BENCH=%q: want a positive count", v)
	}
	testenv.Require(b, testenv.EnvChdb)
	brokers := testenv.KafkaBrokers(b)
	n := 20000
	if v := os.Getenv("METERLINE_TEST_UI_BENCH_EVENTS"); v != "" {
		if _, err := fmt.Sscan(v, &n); err != nil || n < 1 {
			b.Fatalf("METERLINE_TEST_UI_BENCH_EVENTS=%q: want a positive count", v)
		}
	}
	const customers = 10
	dir := b.TempDir()
	var cat strings.Builder
	cat.WriteString("plans:\n  - {id: starter, included_units: 100000}\ncustomers:\n")
	for c := range customers {
		fmt.Fprintf(&cat, "  - {id: cust%02d, plan: starter, keys: [key%02d_a, key%02d_b]}\n", c, c, c)
	}
	catalogue := filepath.Join(dir, "catalogue.yaml")
	if err := os.WriteFile(catalogue, []byte(cat.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	topic := testenv.Unique("uibench")
	cfgPath, addr := writeConfig(b, strings.Join(brokers, ","), topic, fmt.Sprintf("limits:\n  catalogue_file: %s\naggregate:\n  interval: 200ms\n  settle: 1ms\n", catalogue))
	start(b, cfgPath, addr)

	rng := rand.New(rand.NewPCG(1, 2))
	now := time.Now().UTC()
	statuses := []int{200, 200, 200, 200, 201, 404, 429, 500}
	routes := []string{"/v1/pets/{id}", "/v1/orders", "/v1/search", "/v1/users/{id}"}
	for done := 0; done < n; {
		batch := min(2000, n-done)
		evs := make([]map[string]any, 0, batch)
		for i := range batch {
			c := rng.IntN(customers)
			key := fmt.Sprintf("key%02d_a", c)
			if rng.IntN(3) == 0 {
				key = fmt.Sprintf("key%02d_b", c)
			}
			evs = append(evs, map[string]any{
				"id": fmt.Sprintf("uib-%d", done+i), "api_key_id": key, "customer_id": fmt.Sprintf("cust%02d", c),
				"time":   now.Add(-time.Duration(rng.Int64N(int64(7*24*time.Hour - 10*time.Minute)))).Format(time.RFC3339Nano),
				"method": "GET", "route": routes[rng.IntN(len(routes))], "status": statuses[rng.IntN(len(statuses))],
				"latency_ms": 1 + rng.Float64()*200, "units": 1 + rng.IntN(5),
			})
		}
		postEvents(b, addr, evs)
		done += batch
	}
	s := &uiStack{addr: addr, base: "http://" + addr}
	from := now.Add(-8 * 24 * time.Hour).Truncate(time.Hour).Format(time.RFC3339)
	testenv.Eventually(b, 5*time.Minute, func() error {
		var total uint64
		for c := range customers {
			u, err := s.usage(fmt.Sprintf("customer_id=cust%02d&window=day&from=%s", c, from))
			if err != nil {
				return err
			}
			total += u.requests()
		}
		if total != uint64(n) {
			return fmt.Errorf("the usage API counts %d of %d events", total, n)
		}
		return nil
	})

	tab := testenv.Browser(b)
	signIn(b, tab, s.base, e2eAdminToken)
	hasChart := hasChartLibrary(b, tab)
	sel, unit := "main .chart canvas", "chart-ms"
	if !hasChart {
		sel, unit = `[data-testid="usage-table"]`, "table-ms"
	}
	var total, worst time.Duration
	var bytes, server float64
	for i := range navigations {
		page := fmt.Sprintf("%s/ui/customers/cust%02d?range=7d", s.base, i%customers)
		t0 := time.Now()
		if err := chromedp.Do(tab.Ctx, chromedp.Navigate(page), chromedp.WaitVisible(chromedp.CSS(sel))); err != nil {
			b.Fatal(err)
		}
		d := time.Since(t0)
		total += d
		worst = max(worst, d)
		size, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[float64](`performance.getEntriesByType("navigation").concat(performance.getEntriesByType("resource")).reduce((s, e) => s + e.transferSize, 0)`))
		if err != nil {
			b.Fatal(err)
		}
		bytes += size
		ttfb, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[float64](`(e => e.responseStart - e.requestStart)(performance.getEntriesByType("navigation")[0])`))
		if err != nil {
			b.Fatal(err)
		}
		server += ttfb
	}
	b.Logf("%d events, %d navigations to a customer page (7 days): %s mean %.1f, worst %.1f; %.0f bytes per page on the wire (document and assets); server time to the first byte of the page mean %.1f ms",
		n, navigations, unit, float64(total.Microseconds())/1000/float64(navigations), float64(worst.Microseconds())/1000, bytes/float64(navigations), server/float64(navigations))
}
