package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/meterline/meterline/internal/testenv"
)

// TestUIBenchPages (run only with METERLINE_TEST_UI_BENCH=N, the number
// of navigations per page kind) drives headless chromium against
// `meterline serve` holding METERLINE_TEST_UI_BENCH_EVENTS raw events
// (default 1,000,000; the target is 10,000,000) over 50 customers with two
// keys each and the last 30 days. The events are generated inside the
// engine by one INSERT … SELECT run through `meterline sql` before serve
// starts (posting 10 M events through the collector would take longer than
// the measurement), then rolled up by serve's own aggregator, which is
// waited for through GET /v1/usage. It reports, per page kind (overview,
// customer page, key page; 30-day range), the time from navigation to the
// first chart drawn (a uPlot canvas; the page's main table when the chart
// library or the chart is absent), the server's time to the page's first
// byte and to the first byte of the chart's CSV, and the bytes the browser
// received (transferSize: compressed, and zero for assets it had cached).
// Figures are reported, not asserted; docs/performance.md has the latest.
func TestUIBenchPages(b *testing.T) {
	var navigations int
	if v := os.Getenv("METERLINE_TEST_UI_BENCH"); v == "" {
		b.Skip("a measurement, not a check: set METERLINE_TEST_UI_BENCH=10 (navigations per page) to run it")
	} else if _, err := fmt.Sscan(v, &navigations); err != nil || navigations < 1 {
		b.Fatalf("METERLINE_TEST_UI_BENCH=%q: want a positive count", v)
	}
	testenv.Require(b, testenv.EnvChdb)
	brokers := testenv.KafkaBrokers(b)
	n := 1_000_000
	if v := os.Getenv("METERLINE_TEST_UI_BENCH_EVENTS"); v != "" {
		if _, err := fmt.Sscan(v, &n); err != nil || n < 1 {
			b.Fatalf("METERLINE_TEST_UI_BENCH_EVENTS=%q: want a positive count", v)
		}
	}
	const customers = 50
	dir := b.TempDir()
	var cat strings.Builder
	cat.WriteString("plans:\n  - {id: starter, included_units: 10000000}\ncustomers:\n")
	for c := range customers {
		fmt.Fprintf(&cat, "  - {id: cust%02d, plan: starter, keys: [key%02d_a, key%02d_b]}\n", c, c, c)
	}
	catalogue := filepath.Join(dir, "catalogue.yaml")
	if err := os.WriteFile(catalogue, []byte(cat.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	topic := testenv.Unique("uibench")
	cfgPath, addr := writeConfig(b, strings.Join(brokers, ","), topic, fmt.Sprintf("limits:\n  catalogue_file: %s\naggregate:\n  interval: 1s\n  settle: 1ms\napi:\n  token_rate: 1000\n  token_burst: 1000\n", catalogue))

	t0 := time.Now()
	for _, stmt := range []string{"", fmt.Sprintf(uiBenchLoadSQL, n)} {
		args := []string{"migrate", "--config", cfgPath}
		if stmt != "" {
			args = []string{"sql", "--config", cfgPath, stmt}
		}
		if out, err := exec.Command(binPath, args...).CombinedOutput(); err != nil {
			b.Fatalf("meterline %s: %v\n%s", args[0], err, out)
		}
	}
	load := time.Since(t0)
	t0 = time.Now()
	start(b, cfgPath, addr)
	s := &uiStack{addr: addr, base: "http://" + addr}
	from := time.Now().UTC().Add(-32 * 24 * time.Hour).Truncate(24 * time.Hour).Format(time.RFC3339)
	testenv.Eventually(b, 30*time.Minute, func() error {
		var total uint64
		for c := range customers {
			u, err := s.usage(fmt.Sprintf("customer_id=cust%02d&window=month&from=%s", c, from))
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
	b.Logf("%d events generated in the engine in %s; rolled up by serve in %s", n, load.Round(time.Second), time.Since(t0).Round(time.Second))

	// The baseline: the API's own answer to the customer page's chart
	// query (30 days by day), one request at a time from Go, measured right
	// before each navigation, so that the ratios hold while the machine's
	// load changes during the run.
	baseline := func(i int) float64 {
		t0 := time.Now()
		if _, err := s.usage(fmt.Sprintf("customer_id=cust%02d&window=day&from=%s", i%customers,
			time.Now().UTC().Add(-30*24*time.Hour).Format(time.RFC3339))); err != nil {
			b.Fatal(err)
		}
		return float64(time.Since(t0).Microseconds()) / 1000
	}
	var api []float64

	// The overview's reads one by one (the page runs them at once), each
	// as GET /v1/usage answers it (with distinct IPs and latency), so a
	// slow overview can be traced to the read that makes it slow.
	since := time.Now().UTC().Add(-30 * 24 * time.Hour).Format(time.RFC3339)
	for _, g := range []string{"", "customer_id", "customer_id,api_key_id", "route"} {
		t0 := time.Now()
		_, err := s.usage("window=total&from=" + since + "&group_by=" + g)
		b.Logf("overview read as the API answers it (with distinct IPs), every customer, 30 days, window=total, group_by=%q: %.0f ms (error: %v)", g, float64(time.Since(t0).Microseconds())/1000, err)
	}

	tab := testenv.Browser(b)
	signIn(b, tab, s.base, e2eAdminToken)
	hasChart := hasChartLibrary(b, tab)
	kinds := []struct {
		name, sel string
		path      func(i int) string
	}{
		{"overview", "main table", func(int) string { return "/ui/overview?range=30d" }},
		{"customer", "main .chart canvas", func(i int) string { return fmt.Sprintf("/ui/customers/cust%02d?range=30d", i%customers) }},
		{"key", "main .chart canvas", func(i int) string {
			return fmt.Sprintf("/ui/customers/cust%02d/keys/key%02d_b?range=30d", i%customers, i%customers)
		}},
	}
	for _, k := range kinds {
		sel, what := k.sel, "chart"
		if !hasChart || k.name == "overview" {
			sel, what = "main table", "table"
		}
		var total, worst time.Duration
		var bytes, weight, first, csv, base []float64
		for i := range navigations {
			base = append(base, baseline(i))
			t0 := time.Now()
			if err := chromedp.Do(tab.Ctx, chromedp.Navigate(s.base+k.path(i)), chromedp.WaitVisible(chromedp.CSS(sel))); err != nil {
				b.Fatalf("%s: %v", k.path(i), err)
			}
			d := time.Since(t0)
			total += d
			worst = max(worst, d)
			m, err := chromedp.Run(tab.Ctx, chromedp.Evaluate[[]float64](uiBenchTimingJS))
			if err != nil {
				b.Fatal(err)
			}
			first, csv, bytes, weight = append(first, m[0]), append(csv, m[1]), append(bytes, m[2]), append(weight, m[3])
		}
		api = append(api, base...)
		b.Logf("%s page (30 days, %d navigations): baseline beside it mean %.0f ms; first %s drawn mean %.0f ms (%.1f× the baseline), worst %.0f ms; server to first byte: page mean %.0f ms (%.1f× the baseline), worst %.0f ms; chart CSV mean %.0f ms (%.1f×), worst %.0f ms; page weight (compressed, assets included) %.0f bytes; on the wire per navigation (assets cached) mean %.0f bytes",
			k.name, navigations, mean(base), what, float64(total.Milliseconds())/float64(navigations), float64(total.Milliseconds())/float64(navigations)/mean(base), float64(worst.Milliseconds()),
			mean(first), mean(first)/mean(base), slices.Max(first), mean(csv), mean(csv)/mean(base), slices.Max(csv), slices.Max(weight), mean(bytes))
	}
	b.Logf("baseline: GET /v1/usage of one customer, 30 days by day, %d requests between the navigations: mean %.0f ms, worst %.0f ms", len(api), mean(api), slices.Max(api))
}

// uiBenchTimingJS returns [the page's server time to first byte, the
// slowest CSV's, the bytes received for the document and its resources
// (nothing for what the browser had cached), the same bytes counting cached
// ones (the page's weight as sent, compressed)].
const uiBenchTimingJS = `(() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const res = performance.getEntriesByType("resource");
  const csv = res.filter(e => e.name.includes(".csv")).map(e => e.responseStart - e.requestStart);
  return [nav.responseStart - nav.requestStart, csv.length ? Math.max(...csv) : 0,
    [nav].concat(res).reduce((s, e) => s + e.transferSize, 0),
    [nav].concat(res).reduce((s, e) => s + e.encodedBodySize, 0)];
})()`

// uiBenchLoadSQL generates the benchmark's raw events (%d of them): 50
// customers (cust00…cust49) with keys keyNN_a and keyNN_b, times spread
// over the last 30 days, 8 routes, 4 methods, statuses with 4xx and 5xx, 3
// gateways, a few thousand /24s, all stamped as ingested now.
const uiBenchLoadSQL = `INSERT INTO events (id, time, api_key_id, customer_id, gateway, method, route, status,
    latency_ms, request_bytes, response_bytes, client_ip, user_agent, units, properties, kafka_partition, kafka_offset, ingested_at)
SELECT
    concat('uib-', toString(number)),
    now64(3) - toIntervalMillisecond(60000 + cityHash64(number, 1) %% (30 * 86400000 - 120000)),
    concat('key', leftPad(toString(number %% 50), 2, '0'), if(intDiv(number, 50) %% 3 = 0, '_b', '_a')),
    concat('cust', leftPad(toString(number %% 50), 2, '0')),
    ['edge-eu', 'edge-us', 'edge-ap'][cityHash64(number, 2) %% 3 + 1],
    ['GET', 'GET', 'POST', 'DELETE'][cityHash64(number, 3) %% 4 + 1],
    concat('/v1/route', toString(cityHash64(number, 4) %% 8)),
    [200, 200, 200, 201, 204, 304, 400, 404, 429, 500, 503][cityHash64(number, 5) %% 11 + 1],
    (cityHash64(number, 6) %% 200000) / 100,
    cityHash64(number, 7) %% 4000,
    cityHash64(number, 8) %% 100000,
    concat('10.', toString(cityHash64(number, 9) %% 20), '.', toString(cityHash64(number, 10) %% 250), '.0'),
    'bench',
    CAST(1 + cityHash64(number, 11) %% 5 AS Decimal(18, 6)),
    map(),
    0,
    toInt64(number),
    now64(3)
FROM numbers(%d)`

func mean(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	var s float64
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}
