package bench

import (
	"encoding/json"
	"fmt"
	"html"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
)

// Targets of the benchmark issue; reported, never asserted.
const (
	TargetRate       = 100_000 // events/s HTTP acceptance to stored row
	TargetRatio      = 0.5     // of min(raw consume, raw insert)
	TargetP99Seconds = 2.0     // event to queryable at 50 % of the sustained rate
	TargetGoMemBytes = 300 << 20
)

// WriteTable prints the summary a person reads at the end of a run.
func WriteTable(w io.Writer, res *Result) {
	c := res.Config
	m := res.Machine
	fmt.Fprintf(w, "\nMeterline bench, %s — %d CPUs (%s), %.1f GiB RAM, %s\n", res.Started.Format("2006-01-02 15:04 UTC"), m.CPUs, m.CPUModel, float64(m.MemBytes)/(1<<30), m.Go)
	mode := fmt.Sprintf("%s mode, %d connections x %d-event batches, %d partitions", c.Mode, c.Connections, c.BatchEvents, c.Partitions)
	if c.Target != "" {
		mode += ", target " + c.Target
	}
	fmt.Fprintf(w, "%s\ntraffic: %d customers x %d keys (Zipf), %.1f%% errors, %.1f%% duplicates, %.1f%% late (>= %s old)\n\n",
		mode, c.Customers, c.KeysPerCustomer, c.ErrorRate*100, c.DupRate*100, c.LateRate*100, fmtSeconds(c.LatenessSeconds))

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "phase\tsent\taccepted\taccept/s\tsustained/s\tdrain\tmax lag\tqueryable p50\tp99\tprobes\t")
	for _, p := range res.Phases {
		name := p.Name
		if p.TargetRate > 0 {
			name += fmt.Sprintf(" (%s/s)", si(p.TargetRate))
		}
		sus := si(p.Rate)
		if !p.Drained {
			sus += " (not drained)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.1fs\t%s\t%s\t%s\t%d\t\n", name, si(float64(p.Sent)), si(float64(p.Accepted)),
			si(p.AcceptRate), sus, p.DrainSeconds, si(float64(p.MaxLag)), fmtSeconds(p.Latency.P50), fmtSeconds(p.Latency.P99), p.Latency.Probes)
	}
	tw.Flush()

	b := res.Baseline
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if b.Events > 0 {
		fmt.Fprintf(tw, "baselines (same run, %s events like the run's)\tevents/s\n", si(float64(b.Events)))
		fmt.Fprintf(tw, "  kafka-go produce (collector's writer settings)\t%s\n", orDash(b.KafkaProduce))
		fmt.Fprintf(tw, "  kafka-go consume (consumer group, sink's reader settings)\t%s\n", orDash(b.KafkaConsume))
		fmt.Fprintf(tw, "  engine: one bulk insert of %s rows\t%s\n", si(float64(b.Events)), orDash(b.Insert))
		if res.Ratio > 0 {
			fmt.Fprintf(tw, "pipeline sustained / min(consume, insert)\t%.2f  (the lower is %s)\n", res.Ratio, res.Limit)
		}
		if b.Error != "" {
			fmt.Fprintf(tw, "  baseline error\t%s\n", b.Error)
		}
		tw.Flush()
		fmt.Fprintln(w)
	}

	if len(res.Procs) > 0 {
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		head := "process\troles\tCPU s"
		for _, p := range res.Phases {
			head += "\tCPU s/M ev " + strings.Fields(p.Name)[0]
		}
		fmt.Fprintln(tw, head+"\tpeak RSS\tpeak Go memory\tengine share\t")
		for _, p := range res.Procs {
			line := fmt.Sprintf("%s\t%s\t%.1f", p.Name, p.Roles, p.CPUSeconds)
			for _, ph := range res.Phases {
				line += fmt.Sprintf("\t%.2f", ph.CPUPerMillion[p.Name])
			}
			eng := "-"
			if p.EngineShare > 0 {
				eng = mib(p.EngineShare)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", line, mib(p.PeakRSS), mib(p.PeakGoSys), eng)
		}
		line := "bench (load generator)\t\t"
		for _, ph := range res.Phases {
			line += fmt.Sprintf("\t%.2f", ph.CPUPerMillion["bench"])
		}
		fmt.Fprintf(tw, "%s\t\t\t\t\n", line)
		tw.Flush()
		fmt.Fprintln(w)
	}

	ck := res.Check
	switch {
	case ck.Done:
		verdict := "OK"
		if !ck.OK {
			verdict = "MISMATCH"
		}
		fmt.Fprintf(w, "stored check: %d distinct ids accepted, %d distinct stored, %d rows (FINAL): %s\n", ck.DistinctSent, ck.StoredDistinct, ck.StoredRows, verdict)
	case ck.Note != "":
		fmt.Fprintf(w, "stored check: %s\n", ck.Note)
	}
	if ck.Done && ck.Note != "" {
		fmt.Fprintf(w, "  (%s)\n", ck.Note)
	}

	fmt.Fprintln(w, "\ntargets (measured, not asserted):")
	for _, t := range Targets(res) {
		fmt.Fprintf(w, "  %-4s %s\n", t.Verdict, t.Text)
	}
	for _, n := range res.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

// TargetResult is one target of the issue and whether this run met it.
type TargetResult struct {
	Verdict string // met, MISS, n/a
	Text    string
}

// Targets evaluates the targets against a result.
func Targets(res *Result) []TargetResult {
	var out []TargetResult
	add := func(ok, known bool, format string, args ...any) {
		v := "n/a"
		if known {
			v = "MISS"
			if ok {
				v = "met"
			}
		}
		out = append(out, TargetResult{v, fmt.Sprintf(format, args...)})
	}
	var rate float64
	if len(res.Phases) > 0 {
		rate = res.Phases[0].Rate
	}
	add(rate >= TargetRate, len(res.Phases) > 0 && res.Config.Rate == 0, ">= %s events/s acceptance to stored row: %s/s", si(TargetRate), si(rate))
	add(res.Ratio >= TargetRatio, res.Ratio > 0, ">= %.1f x min(raw consume, raw insert): %.2f", TargetRatio, res.Ratio)
	var lat *Phase
	for i := range res.Phases[min(1, len(res.Phases)):] {
		lat = &res.Phases[1+i]
	}
	if lat != nil {
		add(lat.Latency.P99 <= TargetP99Seconds && lat.Latency.Probes > 0, lat.Latency.Probes > 0, "event-to-queryable p99 <= %gs at %s/s: %s", TargetP99Seconds, si(lat.TargetRate), fmtSeconds(lat.Latency.P99))
	} else {
		add(false, false, "event-to-queryable p99 <= %gs at half the sustained rate: no latency phase", TargetP99Seconds)
	}
	var goMem int64
	for _, p := range res.Procs {
		if p.Name == "collector" {
			goMem += p.PeakRSS
		} else {
			goMem += p.PeakGoSys
		}
	}
	add(goMem <= TargetGoMemBytes, len(res.Procs) > 0, "collector + sink <= 300 MiB without the engine (collector RSS + sink Go memory): %s", mib(goMem))
	return out
}

func orDash(v float64) string {
	if v == 0 {
		return "-"
	}
	return si(v)
}

func mib(b int64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20))
}

func fmtSeconds(s float64) string {
	switch {
	case s == 0:
		return "-"
	case s < 1:
		return fmt.Sprintf("%.0fms", s*1000)
	case s < 120:
		return fmt.Sprintf("%.2fs", s)
	}
	return fmt.Sprintf("%.0fm", s/60)
}

// WriteFiles writes bench.json and bench.svg into dir.
func WriteFiles(res *Result, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "bench.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	var sb strings.Builder
	WriteSVG(&sb, res)
	return os.WriteFile(filepath.Join(dir, "bench.svg"), []byte(sb.String()), 0o644)
}

// WriteSVG draws throughput (accepted and stored events/s) and consumer lag
// over the run, one sample a second, with the phases shaded.
func WriteSVG(w io.Writer, res *Result) {
	const (
		W, H        = 960, 600
		left, right = 80, 30
		top1, h1    = 50, 270
		top2, h2    = 380, 170
	)
	pw := float64(W - left - right)
	s := res.Samples
	var tmax, rmax, lmax float64
	type pt struct{ t, acc, sto float64 }
	var rates []pt
	for i := range s {
		tmax = math.Max(tmax, s[i].T)
		lmax = math.Max(lmax, float64(s[i].Lag))
		// Rates over a 5-sample window: the sink stores whole batches, so
		// per-second differences jump between 0 and a batch or two.
		a, b := max(i-3, 0), min(i+2, len(s)-1)
		dt := s[b].T - s[a].T
		if i == 0 || dt <= 0 {
			continue
		}
		p := pt{s[i].T, float64(s[b].Accepted-s[a].Accepted) / dt, float64(s[b].Processed-s[a].Processed) / dt}
		rmax = math.Max(rmax, math.Max(p.acc, p.sto))
		rates = append(rates, p)
	}
	tmax = math.Max(tmax, 1)
	rmax = niceCeil(math.Max(rmax, 1))
	lmax = niceCeil(math.Max(lmax, 1))
	x := func(t float64) float64 { return left + t/tmax*pw }

	fmt.Fprintf(w, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", W, H, W, H)
	fmt.Fprintf(w, `<rect width="%d" height="%d" fill="white"/>`+"\n", W, H)
	title := fmt.Sprintf("meterline bench %s: %s mode, %d CPUs", res.Started.Format("2006-01-02 15:04 UTC"), res.Config.Mode, res.Machine.CPUs)
	if len(res.Phases) > 0 {
		title += fmt.Sprintf(", sustained %s events/s", si(res.Phases[0].Rate))
	}
	if res.Ratio > 0 {
		title += fmt.Sprintf(" (%.2f x %s baseline)", res.Ratio, res.Limit)
	}
	fmt.Fprintf(w, `<text x="%d" y="24" font-size="15" font-weight="bold">%s</text>`+"\n", left, html.EscapeString(title))

	// Phase bands.
	colors := []string{"#eef4ff", "#fff4e6", "#eefbea"}
	var cur string
	var from float64
	band := 0
	flush := func(to float64) {
		if cur == "" {
			return
		}
		for _, top := range []int{top1, top2} {
			hh := h1
			if top == top2 {
				hh = h2
			}
			fmt.Fprintf(w, `<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"/>`+"\n", x(from), top, x(to)-x(from), hh, colors[band%len(colors)])
		}
		fmt.Fprintf(w, `<text x="%.1f" y="%d" fill="#555">%s</text>`+"\n", x(from)+4, top1+14, html.EscapeString(cur))
		band++
	}
	for i := range s {
		if s[i].Phase != cur {
			flush(s[i].T)
			cur, from = s[i].Phase, s[i].T
		}
	}
	flush(tmax)

	axes := func(top, hh int, vmax float64, label string) {
		for k := 0; k <= 4; k++ {
			y := float64(top+hh) - float64(k)/4*float64(hh)
			fmt.Fprintf(w, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, W-right, y, y)
			fmt.Fprintf(w, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y+4, si(vmax*float64(k)/4))
		}
		fmt.Fprintf(w, `<text x="14" y="%d" transform="rotate(-90 14 %d)" text-anchor="middle">%s</text>`+"\n", top+hh/2, top+hh/2, label)
		step := niceCeil(tmax / 8)
		for t := 0.0; t <= tmax; t += step {
			fmt.Fprintf(w, `<text x="%.1f" y="%d" text-anchor="middle">%.0fs</text>`+"\n", x(t), top+hh+16, t)
		}
		fmt.Fprintf(w, `<rect x="%d" y="%d" width="%.0f" height="%d" fill="none" stroke="#999"/>`+"\n", left, top, pw, hh)
	}
	axes(top1, h1, rmax, "events/s")
	axes(top2, h2, lmax, "consumer lag (messages)")

	poly := func(color string, pts []string) {
		if len(pts) > 0 {
			fmt.Fprintf(w, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", color, strings.Join(pts, " "))
		}
	}
	var acc, sto, lag []string
	for _, p := range rates {
		acc = append(acc, fmt.Sprintf("%.1f,%.1f", x(p.t), float64(top1+h1)-p.acc/rmax*h1))
		sto = append(sto, fmt.Sprintf("%.1f,%.1f", x(p.t), float64(top1+h1)-p.sto/rmax*h1))
	}
	for i := range s {
		lag = append(lag, fmt.Sprintf("%.1f,%.1f", x(s[i].T), float64(top2+h2)-float64(s[i].Lag)/lmax*h2))
	}
	poly("#1f77b4", acc)
	poly("#2ca02c", sto)
	poly("#d62728", lag)
	// Legend.
	lx := W - right - 330
	for i, l := range []struct{ color, text string }{{"#1f77b4", "accepted by the collector"}, {"#2ca02c", "stored (sink)"}, {"#d62728", "consumer lag"}} {
		fmt.Fprintf(w, `<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="%s" stroke-width="3"/><text x="%d" y="%d">%s</text>`+"\n",
			lx+i*115, lx+i*115+18, 38, 38, l.color, lx+i*115+22, 42, l.text)
	}
	fmt.Fprintf(w, `<text x="%d" y="%d" fill="#555">seconds since the pipeline was up; baselines: kafka-go consume %s/s, engine bulk insert %s/s</text>`+"\n",
		left, H-12, orDash(res.Baseline.KafkaConsume), orDash(res.Baseline.Insert))
	fmt.Fprintln(w, "</svg>")
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}
