package aggregate_test

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/store"
)

// The recount is the independent side of every comparison: the stored
// events are read back one per distinct (customer, key, id), and usage is
// recomputed in Go (Go's time zones, exact decimal arithmetic on integer
// micro-units, exact quantiles) without any of the package's SQL.

// testEvent is one request event as the tests produce it.
type testEvent struct {
	ID, Customer, Key, Gateway, Method, Route string
	Status                                    int
	Time                                      time.Time
	LatencyMS                                 float64
	ReqBytes, RespBytes                       uint64
	IP                                        string // already anonymised
	Units                                     string // decimal text, at most 6 places
}

// json returns the event's v1 JSON, as a gateway producing to Kafka sends it.
func (e testEvent) json() []byte {
	m := map[string]any{
		"id": e.ID, "time": e.Time.UTC().Format("2006-01-02T15:04:05.000Z07:00"), "api_key_id": e.Key,
		"customer_id": e.Customer, "status": e.Status, "latency_ms": e.LatencyMS,
		"request_bytes": e.ReqBytes, "response_bytes": e.RespBytes, "units": json.Number(e.Units),
	}
	for k, v := range map[string]string{"gateway": e.Gateway, "method": e.Method, "route": e.Route, "client_ip": e.IP} {
		if v != "" {
			m[k] = v
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

var eventColumns = []string{
	"id", "time", "api_key_id", "customer_id", "gateway", "method", "route", "status",
	"latency_ms", "request_bytes", "response_bytes", "client_ip", "user_agent", "units",
	"properties", "kafka_partition", "kafka_offset", "ingested_at",
}

// insertEvents writes events straight into the raw table, stamped as
// ingested now, as the sink would.
func insertEvents(t testing.TB, db store.Conn, evs []testEvent) {
	t.Helper()
	now := time.Now().UTC()
	rows := make([][]any, len(evs))
	for i, e := range evs {
		rows[i] = []any{e.ID, e.Time, e.Key, e.Customer, e.Gateway, e.Method, e.Route, uint16(e.Status),
			e.LatencyMS, e.ReqBytes, e.RespBytes, e.IP, "test", json.Number(e.Units),
			map[string]string{}, int32(0), int64(i), now}
	}
	if err := db.Insert(testCtx(t), "events", eventColumns, rows, store.InsertOptions{}); err != nil {
		t.Fatal(err)
	}
}

// storedEvent is one distinct stored event.
type storedEvent struct {
	testEvent
	Micros int64 // Units in millionths
}

// fetchStored reads the distinct stored events of customers.
func fetchStored(t testing.TB, db store.Conn, customers []string) []storedEvent {
	t.Helper()
	rows, err := db.Query(testCtx(t), `SELECT customer_id, api_key_id, id, any(time), any(gateway), any(method), any(route),
    any(status), any(latency_ms), any(request_bytes), any(response_bytes), any(client_ip), toString(any(units))
FROM events WHERE customer_id IN {c:Array(String)}
GROUP BY customer_id, api_key_id, id`, store.P("c", customers))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []storedEvent
	for rows.Next() {
		var e storedEvent
		var status uint16
		if err := rows.Scan(&e.Customer, &e.Key, &e.ID, &e.Time, &e.Gateway, &e.Method, &e.Route, &status,
			&e.LatencyMS, &e.ReqBytes, &e.RespBytes, &e.IP, &e.Units); err != nil {
			t.Fatal(err)
		}
		e.Status = int(status)
		if e.Micros, err = parseMicros(e.Units); err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// parseMicros parses a decimal text with at most 6 places into millionths.
func parseMicros(s string) (int64, error) {
	neg := strings.HasPrefix(s, "-")
	whole, frac, _ := strings.Cut(strings.TrimPrefix(s, "-"), ".")
	if len(frac) > 6 {
		return 0, fmt.Errorf("decimal %q has more than 6 places", s)
	}
	frac += strings.Repeat("0", 6-len(frac))
	w, err1 := strconv.ParseInt(whole, 10, 64)
	f, err2 := strconv.ParseInt(frac, 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("bad decimal %q", s)
	}
	if neg {
		return -(w*1_000_000 + f), nil
	}
	return w*1_000_000 + f, nil
}

// expectedRow is the recount of one window and group.
type expectedRow struct {
	requests, clientErrors, serverErrors uint64
	micros                               int64
	reqBytes, respBytes                  uint64
	ips                                  map[string]bool
	latencies                            []float64
}

// windowStart buckets t as the query's window does, with Go's calendar.
func windowStart(t time.Time, w aggregate.Window, loc *time.Location) time.Time {
	switch w {
	case aggregate.WindowTotal:
		panic("windowStart: a total window starts at From")
	case aggregate.WindowMinute:
		return t.Truncate(time.Minute)
	case aggregate.WindowHour:
		return t.Truncate(time.Hour)
	case aggregate.WindowDay:
		l := t.In(loc)
		return time.Date(l.Year(), l.Month(), l.Day(), 0, 0, 0, 0, loc)
	default:
		l := t.In(loc)
		return time.Date(l.Year(), l.Month(), 1, 0, 0, 0, 0, loc)
	}
}

func statusClass(s int) string { return strconv.Itoa(s/100) + "xx" }

func dimValue(e storedEvent, dim string) string {
	switch dim {
	case "api_key_id":
		return e.Key
	case "route":
		return e.Route
	case "method":
		return e.Method
	case "status_class":
		return statusClass(e.Status)
	case "gateway":
		return e.Gateway
	case "customer_id":
		return e.Customer
	}
	panic("unknown dimension " + dim)
}

// rowKey identifies a window and group in comparisons.
func rowKey(start time.Time, group []string) string {
	return start.UTC().Format(time.RFC3339) + "|" + strings.Join(group, "|")
}

// recount computes the rows q should answer from evs, counting only the
// events visible says are.
func recount(q aggregate.UsageQuery, evs []storedEvent, visible func(storedEvent) bool) map[string]*expectedRow {
	loc := q.TZ
	if loc == nil {
		loc = time.UTC
	}
	out := map[string]*expectedRow{}
	for _, e := range evs {
		if (q.CustomerID != "" && e.Customer != q.CustomerID) || (q.APIKeyID != "" && e.Key != q.APIKeyID) {
			continue
		}
		if e.Time.Before(q.From) || !e.Time.Before(q.To) || (visible != nil && !visible(e)) {
			continue
		}
		filtered := false
		for dim, vals := range q.Filters {
			if len(vals) > 0 && !slices.Contains(vals, dimValue(e, dim)) {
				filtered = true
			}
		}
		if filtered {
			continue
		}
		group := make([]string, len(q.GroupBy))
		for i, g := range q.GroupBy {
			group[i] = dimValue(e, g)
		}
		start := q.From
		if q.Window != aggregate.WindowTotal {
			start = windowStart(e.Time, q.Window, loc)
		}
		k := rowKey(start, group)
		r := out[k]
		if r == nil {
			r = &expectedRow{ips: map[string]bool{}}
			out[k] = r
		}
		r.requests++
		if e.Status >= 400 && e.Status < 500 {
			r.clientErrors++
		}
		if e.Status >= 500 {
			r.serverErrors++
		}
		r.micros += e.Micros
		r.reqBytes += e.ReqBytes
		r.respBytes += e.RespBytes
		if e.IP != "" {
			r.ips[e.IP] = true
		}
		r.latencies = append(r.latencies, e.LatencyMS)
	}
	return out
}

// latencyRankTolerance is how far (in quantile levels) a latency estimate
// may be from the exact quantile: t-digest states merged minute by minute
// into hours, days and months are estimates. An estimate for level q must
// lie between the exact values at levels q - tolerance and q + tolerance
// (the interpolating definition over the sorted sample), widened by the
// Float32 precision the engine's t-digest keeps.
const latencyRankTolerance = 0.05

// latencyWithin reports whether est is an acceptable estimate of quantile
// q of sorted.
func latencyWithin(sorted []float64, q, est float64) bool {
	n := len(sorted)
	lo := int(math.Floor(math.Max(q-latencyRankTolerance, 0) * float64(n-1)))
	hi := int(math.Ceil(math.Min(q+latencyRankTolerance, 1) * float64(n-1)))
	slack := 1e-6*math.Max(math.Abs(sorted[lo]), math.Abs(sorted[hi])) + 1e-9
	return est >= sorted[lo]-slack && est <= sorted[hi]+slack
}

// compareUsage checks rows against the recount exactly (latency within the
// tolerance) and returns one message per difference.
func compareUsage(q aggregate.UsageQuery, rows []aggregate.UsageRow, want map[string]*expectedRow) []string {
	var diffs []string
	seen := map[string]bool{}
	loc := q.TZ
	if loc == nil {
		loc = time.UTC
	}
	for i, r := range rows {
		group := make([]string, len(q.GroupBy))
		for j, g := range q.GroupBy {
			group[j] = r.Group[g]
		}
		k := rowKey(r.WindowStart, group)
		if r.WindowStart.Location().String() != loc.String() {
			diffs = append(diffs, fmt.Sprintf("row %s: WindowStart in %s, want %s", k, r.WindowStart.Location(), loc))
		}
		if i > 0 && r.WindowStart.Before(rows[i-1].WindowStart) {
			diffs = append(diffs, fmt.Sprintf("row %s: out of window order", k))
		}
		if seen[k] {
			diffs = append(diffs, fmt.Sprintf("row %s: repeated", k))
		}
		seen[k] = true
		e := want[k]
		if e == nil {
			diffs = append(diffs, fmt.Sprintf("row %s: unexpected (%d requests)", k, r.Requests))
			continue
		}
		var rowMicros int64
		if f, err := parseMicros(r.UnitsText); err != nil {
			diffs = append(diffs, fmt.Sprintf("row %s: units %q: %v", k, r.UnitsText, err))
		} else {
			rowMicros = f
		}
		got := fmt.Sprintf("requests=%d client_errors=%d server_errors=%d units=%d request_bytes=%d response_bytes=%d ips=%d",
			r.Requests, r.ClientErrors, r.ServerErrors, rowMicros, r.RequestBytes, r.ResponseBytes, r.DistinctClientIPs)
		exp := fmt.Sprintf("requests=%d client_errors=%d server_errors=%d units=%d request_bytes=%d response_bytes=%d ips=%d",
			e.requests, e.clientErrors, e.serverErrors, e.micros, e.reqBytes, e.respBytes, len(e.ips))
		if got != exp {
			diffs = append(diffs, fmt.Sprintf("row %s:\n   got  %s\n   want %s", k, got, exp))
		}
		if math.Abs(r.Units-float64(rowMicros)/1e6) > 1e-9*math.Max(1, math.Abs(r.Units)) {
			diffs = append(diffs, fmt.Sprintf("row %s: Units %v does not match UnitsText %s", k, r.Units, r.UnitsText))
		}
		sorted := slices.Clone(e.latencies)
		sort.Float64s(sorted)
		for _, lq := range []struct {
			q   float64
			est float64
		}{{0.5, r.LatencyP50}, {0.95, r.LatencyP95}, {0.99, r.LatencyP99}} {
			if !latencyWithin(sorted, lq.q, lq.est) {
				diffs = append(diffs, fmt.Sprintf("row %s: latency p%v = %v, exact sample of %d: min %v max %v, exact p = %v",
					k, lq.q*100, lq.est, len(sorted), sorted[0], sorted[len(sorted)-1], exactQuantile(sorted, lq.q)))
			}
		}
	}
	for k, e := range want {
		if !seen[k] {
			diffs = append(diffs, fmt.Sprintf("row %s: missing (%d requests)", k, e.requests))
		}
	}
	sort.Strings(diffs)
	return diffs
}

// exactQuantile interpolates quantile q of sorted.
func exactQuantile(sorted []float64, q float64) float64 {
	pos := q * float64(len(sorted)-1)
	i := int(pos)
	if i+1 >= len(sorted) {
		return sorted[len(sorted)-1]
	}
	return sorted[i] + (pos-float64(i))*(sorted[i+1]-sorted[i])
}
