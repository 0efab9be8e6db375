package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/meterline/meterline/internal/testenv"
)

// envPromtool names Debian's promtool (deploy/install.sh promtool).
const envPromtool = "METERLINE_TEST_PROMTOOL"

var (
	observeDir    = filepath.Join("..", "..", "deploy")
	rulesFile     = filepath.Join(observeDir, "prometheus", "meterline-rules.yml")
	rulesTestFile = filepath.Join(observeDir, "prometheus", "meterline-rules.test.yml")
	pipelineDash  = filepath.Join(observeDir, "grafana", "dashboards", "meterline-pipeline.json")
	usageDash     = filepath.Join(observeDir, "grafana", "dashboards", "meterline-usage.json")
)

// promqlNames returns the metric names a PromQL expression selects. It is a
// careful scan, not a parser: string literals, label matchers, grouping
// label lists, ranges and Grafana variables are removed first; what remains
// is identifiers, of which function names (followed by "("), keywords and
// numbers are dropped. label_values(selector, label) keeps its selector.
func promqlNames(expr string) []string {
	s := regexp.MustCompile(`label_values\(\s*([^,)]*)(,[^)]*)?\)`).ReplaceAllString(expr, " $1 ")
	s = regexp.MustCompile(`"(\\.|[^"\\])*"|'(\\.|[^'\\])*'|`+"`[^`]*`").ReplaceAllString(s, " ")
	s = regexp.MustCompile(`\{[^}]*\}`).ReplaceAllString(s, " ")
	s = regexp.MustCompile(`\[[^\]]*\]`).ReplaceAllString(s, " ")
	s = regexp.MustCompile(`(?i)\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`).ReplaceAllString(s, " ")
	s = regexp.MustCompile(`\$\{[^}]*\}|\$\w+`).ReplaceAllString(s, " ")
	s = regexp.MustCompile(`(?i)\boffset\s+-?[0-9a-z]+`).ReplaceAllString(s, " ")
	keywords := map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true, "inf": true, "nan": true,
		"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}
	ident := regexp.MustCompile(`[0-9.]*[a-zA-Z_:][a-zA-Z0-9_:]*(\s*\()?`)
	seen := map[string]bool{}
	var out []string
	for _, m := range ident.FindAllString(s, -1) {
		if strings.HasSuffix(m, "(") || (m[0] >= '0' && m[0] <= '9') || m[0] == '.' {
			continue // a function or aggregation, or a number such as 1e3
		}
		if keywords[strings.ToLower(m)] || seen[m] {
			continue
		}
		seen[m] = true
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

func TestPromqlNames(t *testing.T) {
	for _, c := range []struct {
		expr string
		want []string
	}{
		{`sum(rate(meterline_a_total{job=~"$job"}[$__rate_interval]))`, []string{"meterline_a_total"}},
		{`max by (job, partition) (meterline_lag) > 10000 and max by (job, partition) (deriv(meterline_lag[10m])) > 0`, []string{"meterline_lag"}},
		{`histogram_quantile(0.95, sum by (le, route) (rate(x_bucket{job=~"$job", route!~"/metrics|/healthz"}[5m])))`, []string{"x_bucket"}},
		{`time() - max by (job) (meterline_w) > 600`, []string{"meterline_w"}},
		{`min by (job, instance, file) (cert) - time() < 14 * 86400`, []string{"cert"}},
		{`a / on(instance) group_left(version) b unless ignoring(code) c`, []string{"a", "b", "c"}},
		{`sum without (le) (rate(a[5m] offset 1h)) or vector(0)`, []string{"a"}},
		{`rate(a{kind=~"and|or|by(x)"}[10m:1m]) > bool 1e3`, []string{"a"}},
		{`label_values(meterline_http_request_duration_seconds_count, job)`, []string{"meterline_http_request_duration_seconds_count"}},
		{`label_values(up{job="x"}, instance)`, []string{"up"}},
		{`{__name__="not_extracted"}`, nil},
		{`sum(rate(a_total[${__interval}])) / sum(rate(b_total[$__range]))`, []string{"a_total", "b_total"}},
		{`namespace:metric:rate5m`, []string{"namespace:metric:rate5m"}},
	} {
		if got := promqlNames(c.expr); !slices.Equal(got, c.want) {
			t.Errorf("%s: %q, want %q", c.expr, got, c.want)
		}
	}
}

// ruleFile is the part of a Prometheus rule file the tests read.
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func readRules(t *testing.T) ruleFile {
	t.Helper()
	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := yaml.Unmarshal(b, &rf); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	return rf
}

// dashboard is the part of a Grafana dashboard the tests read.
type dashboard struct {
	Title      string  `json:"title"`
	UID        string  `json:"uid"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Datasource *datasource     `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID          int         `json:"id"`
	Type        string      `json:"type"`
	Title       string      `json:"title"`
	Description string      `json:"description"`
	Datasource  *datasource `json:"datasource"`
	GridPos     struct{ H, W, X, Y int }
	FieldConfig struct {
		Defaults struct {
			Unit string `json:"unit"`
		} `json:"defaults"`
	} `json:"fieldConfig"`
	Targets []struct {
		RefID        string      `json:"refId"`
		Expr         string      `json:"expr"`
		RawSQL       string      `json:"rawSql"`
		LegendFormat string      `json:"legendFormat"`
		Datasource   *datasource `json:"datasource"`
	} `json:"targets"`
}

func readDashboard(t *testing.T, path string) dashboard {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return d
}

// checkLayout checks what Grafana needs of every dashboard: unique panel
// ids, panels inside the 24-column grid that do not overlap, a title, a
// description and a unit on each.
func checkLayout(t *testing.T, d dashboard) {
	t.Helper()
	ids := map[int]bool{}
	type cell struct{ x, y int }
	used := map[cell]string{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("%s: panel id %d twice", d.UID, p.ID)
		}
		ids[p.ID] = true
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("%s: panel %q outside the grid: %+v", d.UID, p.Title, g)
		}
		for x := g.X; x < g.X+g.W; x++ {
			for y := g.Y; y < g.Y+g.H; y++ {
				if other, ok := used[cell{x, y}]; ok {
					t.Errorf("%s: panels %q and %q overlap at %d,%d", d.UID, other, p.Title, x, y)
				}
				used[cell{x, y}] = p.Title
			}
		}
		if p.Title == "" {
			t.Errorf("%s: panel %d has no title", d.UID, p.ID)
		}
		if p.Type == "row" {
			continue
		}
		if p.Description == "" || len(p.Targets) == 0 {
			t.Errorf("%s: panel %q needs a description and a query", d.UID, p.Title)
		}
		if p.Type != "table" && p.FieldConfig.Defaults.Unit == "" {
			t.Errorf("%s: panel %q has no unit", d.UID, p.Title)
		}
	}
}

// TestDashboardsAreWellFormed checks both dashboards' shape and their data
// sources: the pipeline dashboard queries ${DS_PROMETHEUS} only and labels
// every series; the usage dashboard queries ${DS_CLICKHOUSE} with the
// ClickHouse plugin's SQL queries over the rollups, read with FINAL.
func TestDashboardsAreWellFormed(t *testing.T) {
	pipe := readDashboard(t, pipelineDash)
	checkLayout(t, pipe)
	vars := map[string]string{}
	for _, v := range pipe.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["DS_PROMETHEUS"] != "datasource" || vars["job"] != "query" {
		t.Errorf("pipeline variables %v, want DS_PROMETHEUS (datasource) and job (query)", vars)
	}
	for _, p := range pipe.Panels {
		if p.Type == "row" {
			continue
		}
		for _, ds := range append([]*datasource{p.Datasource}, targetSources(p)...) {
			if ds == nil || ds.Type != "prometheus" || ds.UID != "${DS_PROMETHEUS}" {
				t.Errorf("pipeline panel %q: data source %+v, want prometheus ${DS_PROMETHEUS}", p.Title, ds)
			}
		}
		for _, tg := range p.Targets {
			if tg.Expr == "" || tg.LegendFormat == "" {
				t.Errorf("pipeline panel %q target %s: expr %q legend %q", p.Title, tg.RefID, tg.Expr, tg.LegendFormat)
			}
			if !strings.Contains(tg.Expr, `job=~"$job"`) {
				t.Errorf("pipeline panel %q target %s does not follow the job variable: %s", p.Title, tg.RefID, tg.Expr)
			}
		}
	}

	use := readDashboard(t, usageDash)
	checkLayout(t, use)
	for _, p := range use.Panels {
		for _, ds := range append([]*datasource{p.Datasource}, targetSources(p)...) {
			if ds == nil || ds.Type != "grafana-clickhouse-datasource" || ds.UID != "${DS_CLICKHOUSE}" {
				t.Errorf("usage panel %q: data source %+v, want grafana-clickhouse-datasource ${DS_CLICKHOUSE}", p.Title, ds)
			}
		}
		for _, tg := range p.Targets {
			if !strings.Contains(tg.RawSQL, "usage_hour FINAL") || !strings.Contains(tg.RawSQL, "$__timeFilter(window_start)") ||
				!strings.Contains(tg.RawSQL, "${customer:singlequote}") {
				t.Errorf("usage panel %q: the query must read usage_hour FINAL in the time range for the chosen customers: %s", p.Title, tg.RawSQL)
			}
		}
	}
}

func targetSources(p panel) []*datasource {
	var out []*datasource
	for _, tg := range p.Targets {
		out = append(out, tg.Datasource)
	}
	return out
}

// operationsAnchors returns the anchors of docs/operations.md's headings,
// as GitHub renders them.
func operationsAnchors(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	drop := regexp.MustCompile(`[^a-z0-9 _-]`)
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "#") {
			continue
		}
		h := strings.ToLower(strings.TrimSpace(strings.TrimLeft(line, "#")))
		anchors[strings.ReplaceAll(drop.ReplaceAllString(h, ""), " ", "-")] = true
	}
	return anchors
}

// TestAlertRulesAreComplete checks every alert for what an operator needs:
// a for: duration, a severity, a summary, a description and a runbook link
// to a section of docs/operations.md that exists and names the alert.
func TestAlertRulesAreComplete(t *testing.T) {
	rf := readRules(t)
	anchors := operationsAnchors(t)
	n := 0
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			n++
			if _, err := time.ParseDuration(r.For); err != nil || r.For == "0s" {
				t.Errorf("%s: for: %q, want a duration", r.Alert, r.For)
			}
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("%s: severity %q, want warning or critical", r.Alert, s)
			}
			for _, a := range []string{"summary", "description", "runbook"} {
				if r.Annotations[a] == "" {
					t.Errorf("%s: no %s annotation", r.Alert, a)
				}
			}
			rb := r.Annotations["runbook"]
			anchor, ok := strings.CutPrefix(rb, "docs/operations.md#")
			if !ok || !anchors[anchor] || anchor != "alert-"+strings.ToLower(r.Alert) {
				t.Errorf("%s: runbook %q, want docs/operations.md#alert-%s, a heading there", r.Alert, rb, strings.ToLower(r.Alert))
			}
		}
	}
	if n == 0 {
		t.Fatal("no alerts in " + rulesFile)
	}
}

// TestPromtoolChecksAndUnitTestsRules runs Debian's promtool on the rules:
// `check rules` (syntax, PromQL, templates) and `test rules` (each alert's
// unit tests in meterline-rules.test.yml).
func TestPromtoolChecksAndUnitTestsRules(t *testing.T) {
	promtool := testenv.Require(t, envPromtool)
	for _, args := range [][]string{{"check", "rules", rulesFile}, {"test", "rules", rulesTestFile}} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil || !bytes.Contains(out, []byte("SUCCESS")) {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	// Every alert has a unit test.
	b, err := os.ReadFile(rulesTestFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			if r.Alert != "" && !bytes.Contains(b, []byte("alertname: "+r.Alert+"\n")) {
				t.Errorf("%s has no test in %s", r.Alert, rulesTestFile)
			}
		}
	}
	// Every PromQL expression of the pipeline dashboard parses: each one,
	// Grafana's variables replaced, becomes a recording rule that
	// promtool checks.
	grafanaVars := strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "6h", `"$job"`, `".*"`)
	var rec strings.Builder
	rec.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	n := 0
	for where, expr := range observedExprs(t) {
		if !strings.HasPrefix(where, "panel ") {
			continue
		}
		n++
		q, _ := json.Marshal(grafanaVars.Replace(expr)) // a JSON string is a YAML string
		fmt.Fprintf(&rec, "      - record: dashboard:expr%d\n        expr: %s\n", n, q)
	}
	recFile := filepath.Join(t.TempDir(), "dashboard-exprs.yml")
	if err := os.WriteFile(recFile, []byte(rec.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", recFile).CombinedOutput(); err != nil || !bytes.Contains(out, []byte(fmt.Sprintf("SUCCESS: %d rules found", n))) {
		t.Errorf("the pipeline dashboard's expressions do not all parse: %v\n%s", err, out)
	}

	// promtool really evaluates: a rule file whose alert fires at the
	// wrong time fails its test.
	dir := t.TempDir()
	rules, _ := os.ReadFile(rulesFile)
	broken := strings.Replace(string(rules), "max by (job, instance) (meterline_sink_stalled) == 1", "max by (job, instance) (meterline_sink_stalled) == 0", 1)
	if broken == string(rules) {
		t.Fatal("the sink stalled rule changed: update this test")
	}
	if err := os.WriteFile(filepath.Join(dir, "meterline-rules.yml"), []byte(broken), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "meterline-rules.test.yml"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "test", "rules", filepath.Join(dir, "meterline-rules.test.yml")).CombinedOutput(); err == nil {
		t.Errorf("promtool accepted a broken sink stalled rule:\n%s", out)
	}
}

// observedExprs returns every PromQL expression of the rules and of the
// pipeline dashboard (panel targets and query variables), by where it is.
func observedExprs(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			out[fmt.Sprintf("rule %s (%s)", r.Alert+r.Record, r.Labels["severity"])] = r.Expr
		}
	}
	d := readDashboard(t, pipelineDash)
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			out[fmt.Sprintf("panel %q %s", p.Title, tg.RefID)] = tg.Expr
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Fatalf("variable %s: %v", v.Name, err)
		}
		out["variable "+v.Name] = q.Query
	}
	return out
}

// exposedNames returns the metric names of a Prometheus text exposition:
// sample names (histograms' _bucket, _sum, _count) and # TYPE names.
func exposedNames(body []byte) map[string]bool {
	names := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
			names[f[2]] = true
			continue
		}
		if line == "" || line[0] == '#' {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			names[line[:i]] = true
		}
	}
	return names
}

// TestDashboardsAndRulesUseExposedMetrics runs `meterline serve` with every
// role over HTTPS (real Kafka, the embedded engine, billing to stripe-mock),
// drives a little traffic (valid, invalid and unauthorised events, a usage
// query, a forged Stripe webhook, billing runs), scrapes /metrics and checks
// that every metric name of every rule and dashboard expression is exposed.
// It then runs the usage dashboard's SQL on the same engine, with the
// plugin's macros expanded by hand (a stand-in for the ClickHouse plugin,
// which cannot run here), and checks the numbers against what was sent.
func TestDashboardsAndRulesUseExposedMetrics(t *testing.T) {
	stripeMock := testenv.Require(t, testenv.EnvStripeMock)
	testenv.Require(t, testenv.EnvChdb)
	brokers := testenv.KafkaBrokers(t)
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	catalogue := write("catalogue.yaml", `plans:
  - id: starter
customers:
  - id: acme
    plan: starter
    keys: [key_acme]
`)
	mapping := write("billing.yaml", `plans:
  - plan: starter
    mode: meter_events
    event_name: api_units
customers:
  - id: acme
    stripe_customer_id: cus_acme
`)
	certFile, keyFile, pool := selfSigned(t)
	topic := testenv.Unique("observe")
	cfgPath, addr := writeConfig(t, strings.Join(brokers, ","), topic, fmt.Sprintf(`limits:
  catalogue_file: %s
  refresh: 500ms
aggregate:
  interval: 500ms
  settle: 1ms
billing:
  stripe_api_key: sk_test_observe
  stripe_api_url: %s
  mapping_file: %s
  webhook_secret: whsec_observe
  interval: 1s
  lateness: 5m
`, catalogue, stripeMock, mapping))
	cfg, _ := os.ReadFile(cfgPath)
	cfg = bytes.Replace(cfg, []byte("http:\n"), []byte(fmt.Sprintf("http:\n  tls:\n    cert_file: %s\n    key_file: %s\n", certFile, keyFile)), 1)
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &testenv.SyncBuffer{}
	p := startCmd(t, cfgPath, logs)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	base := "https://" + addr
	do := func(method, path, token, ctype, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	testenv.Eventually(t, 90*time.Second, func() error {
		select {
		case <-p.exited:
			t.Fatalf("meterline exited early:\n%s", logs.String())
		default:
		}
		if code, body := do("GET", "/readyz", "", "", ""); code != 200 {
			return fmt.Errorf("readyz %d: %s", code, body)
		}
		return nil
	})

	// Three settled hours ago, so that billing reports them at once.
	at := time.Now().UTC().Add(-3 * time.Hour).Truncate(time.Hour).Add(10 * time.Minute)
	var events []map[string]any
	for i := range 5 {
		e := event(fmt.Sprintf("obs-%d", i), "key_acme")
		e["time"] = at.Add(time.Duration(i) * time.Second).Format(time.RFC3339Nano)
		e["customer_id"] = "acme"
		if i == 4 {
			e["status"] = 503
		}
		events = append(events, e)
	}
	events = append(events, map[string]any{"id": "obs-bad", "status": 900})
	body, _ := json.Marshal(events)
	if code, b := do("POST", "/v1/events", e2eIngestToken, "application/json", string(body)); code != 202 || !strings.Contains(b, `"accepted":5`) {
		t.Fatalf("POST /v1/events: %d %s", code, b)
	}
	if code, b := do("POST", "/v1/events", "wrong-token", "application/json", string(body)); code != 401 {
		t.Fatalf("POST /v1/events with a wrong token: %d %s", code, b)
	}
	if code, b := do("POST", "/v1/stripe/webhook", "", "application/json", `{"type":"invoice.paid"}`); code < 400 || code >= 500 {
		t.Fatalf("unsigned Stripe webhook: %d %s, want 4xx", code, b)
	}
	from := at.Add(-time.Hour).Format(time.RFC3339)
	testenv.Eventually(t, 60*time.Second, func() error {
		code, b := do("GET", "/v1/usage?customer_id=acme&window=hour&from="+from, e2eAdminToken, "", "")
		if code != 200 || !strings.Contains(b, `"requests":5`) {
			return fmt.Errorf("usage: %d %s", code, b)
		}
		return nil
	})
	var scrape []byte
	testenv.Eventually(t, 3*time.Minute, func() error {
		code, b := do("GET", "/metrics", "", "", "")
		if code != 200 {
			return fmt.Errorf("metrics %d", code)
		}
		scrape = []byte(b)
		for _, want := range []string{`meterline_billing_units_acknowledged_total{mode="meter_events"} 5`, `meterline_collector_events_rejected_total{reason=`, `meterline_billing_webhooks_total{outcome="rejected"} 1`} {
			if !strings.Contains(b, want) {
				return fmt.Errorf("no %s in /metrics yet", want)
			}
		}
		return nil
	})

	exposed := exposedNames(scrape)
	if !exposed["meterline_tls_certificate_expiry_timestamp_seconds"] || !bytes.Contains(scrape, []byte(`meterline_tls_certificate_expiry_timestamp_seconds{file="`+certFile+`"}`)) {
		t.Errorf("the served certificate's expiry is not exposed")
	}
	used := 0
	for where, expr := range observedExprs(t) {
		names := promqlNames(expr)
		if len(names) == 0 {
			t.Errorf("%s uses no metric: %s", where, expr)
		}
		for _, n := range names {
			used++
			if !exposed[n] {
				t.Errorf("%s uses %s, which `meterline serve` does not expose", where, n)
			}
		}
	}
	if used < 40 {
		t.Errorf("only %d metric uses found in the rules and dashboards", used)
	}

	// The usage dashboard's SQL, on the engine that served the traffic
	// (one process holds the embedded engine: stop serve first).
	stopGracefully(t, p)
	use := readDashboard(t, usageDash)
	expand := func(sql string) string {
		r := strings.NewReplacer(
			"$__timeFilter(window_start)", fmt.Sprintf("window_start >= toDateTime(%d) AND window_start <= toDateTime(%d)", at.Add(-24*time.Hour).Unix(), time.Now().Unix()),
			"${database}", "meterline",
			"${customer:singlequote}", "'acme'",
		)
		return r.Replace(sql)
	}
	results := map[string][]string{}
	for _, pn := range use.Panels {
		for _, tg := range pn.Targets {
			results[pn.Title] = sqlRows(t, cfgPath, expand(tg.RawSQL))
		}
	}
	for _, v := range use.Templating.List {
		if v.Type == "query" {
			var q string
			if err := json.Unmarshal(v.Query, &q); err != nil {
				t.Fatal(err)
			}
			results["variable "+v.Name] = sqlRows(t, cfgPath, expand(q))
		}
	}
	hour := at.Truncate(time.Hour).Format("2006-01-02 15:04:05.000") // as meterline sql prints times
	for title, want := range map[string][]string{
		"Requests per hour by customer": {hour + " acme 5"},
		"Units per hour by customer":    {hour + " acme 5"},
		"Error rate by customer":        {hour + " acme 0.2"},
		"Server errors by customer":     {hour + " acme 1"},
		"Top API keys":                  {"acme key_acme 5 5 0.2"},
		"Top routes":                    {"/v1/items/{id} 5 5 0.2"},
		"variable customer":             {"acme"},
	} {
		// meterline sql aligns columns with spaces: compare fields.
		norm := func(rows []string) []string {
			out := make([]string, len(rows))
			for i, r := range rows {
				out[i] = strings.Join(strings.Fields(r), " ")
			}
			return out
		}
		if got, ok := results[title]; !ok || !slices.Equal(norm(got), norm(want)) {
			t.Errorf("usage dashboard %q: %q, want %q", title, got, want)
		}
	}
	if len(results) != 7 {
		t.Errorf("usage dashboard: %d queries, want 7 (a new panel needs its expected answer here)", len(results))
	}
}
