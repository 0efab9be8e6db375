package aggregate

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/meterline/meterline/store"
)

// dimension is a column rows can be grouped by: its column in the rollup
// tables and its expression over the raw table. narrow tells whether the
// narrow rollup tables (usage_key_*) have the column.
type dimension struct {
	rollup, raw string
	narrow      bool
}

// groupColumns maps each GroupByAllowed name to fixed SQL. Request input
// only ever selects entries of this map; it is never written into SQL.
var groupColumns = map[string]dimension{
	"api_key_id":   {"api_key_id", "api_key_id", true},
	"route":        {"route", "route", false},
	"method":       {"method", "method", false},
	"status_class": {"status_class", statusClassExpr, false},
	"gateway":      {"gateway", "gateway", false},
	"customer_id":  customerDimension,
}

// customerDimension groups UnitsByCustomer and all-customer queries.
var customerDimension = dimension{"customer_id", "customer_id", true}

// condition is a WHERE term of every branch of a usage query: its text
// over the rollup tables and over the raw table (they differ where a
// dimension is computed from raw columns, as status_class is).
type condition struct {
	rollup, raw string
}

// same is a condition that reads the same on every level.
func same(c string) condition { return condition{c, c} }

// Querier answers usage queries from the rollups and the raw table.
type Querier struct {
	db store.Conn
	// local is the aggregator running in this process, if any: its last
	// saved watermark is read from memory (see SetLocalAggregator).
	local *Aggregator
	// wide makes every query read the wide rollups (tests and benchmarks
	// compare the two paths).
	wide bool
}

// NewQuerier returns a Querier reading db.
func NewQuerier(db store.Conn) *Querier {
	return &Querier{db: db}
}

// SetLocalAggregator tells q that a runs in this process: once a has saved
// a watermark, q takes it from memory instead of reading aggregate_state.
// That watermark is one this process's aggregator saved after recomputing
// every level, so its promise holds whatever other aggregators do; before
// a's first tick, and without a local aggregator, q reads the store. Call
// it before q serves queries.
func (q *Querier) SetLocalAggregator(a *Aggregator) { q.local = a }

// Freshness returns the watermark: the rollups include every event
// ingested before it (zero before the first tick). Usage is exact for
// events at or after its minute too, which are read from raw; older events
// ingested after it count from the next tick on.
func (q *Querier) Freshness(ctx context.Context) (time.Time, error) {
	if q.local != nil {
		if w, ok := q.local.savedWatermark(); ok {
			return w, nil
		}
	}
	w, err := readWatermark(ctx, q.db)
	if err != nil {
		return time.Time{}, fmt.Errorf("aggregate: %w", err)
	}
	return w, nil
}

// Usage returns the usage rows of uq, ordered by window, then by the group
// values in GroupBy order. Rows without requests are left out. Invalid
// queries fail with the *ParamError of Validate before anything runs; an
// answer over MaxRows rows fails with a *ParamError too.
func (q *Querier) Usage(ctx context.Context, uq UsageQuery) ([]UsageRow, error) {
	rows, _, err := q.UsageFresh(ctx, uq)
	return rows, err
}

// UsageFresh is Usage that also returns the watermark the rows were read
// at (Freshness, read once): the rows include every event ingested before
// it.
func (q *Querier) UsageFresh(ctx context.Context, uq UsageQuery) ([]UsageRow, time.Time, error) {
	if err := uq.Validate(); err != nil {
		return nil, time.Time{}, err
	}
	if uq.TZ == nil {
		uq.TZ = time.UTC
	}
	w, err := q.Freshness(ctx)
	if err != nil {
		return nil, time.Time{}, err
	}
	rows, err := q.usage(ctx, uq, w)
	return rows, w, err
}

func (q *Querier) usage(ctx context.Context, uq UsageQuery, w time.Time) ([]UsageRow, error) {
	sqlText, params := buildUsageSQL(uq, frontier(w), q.wide)
	rows, err := q.db.Query(ctx, sqlText, params...)
	if err != nil {
		return nil, fmt.Errorf("aggregate: usage query: %w", err)
	}
	defer func() { _ = rows.Close() }()
	var out []UsageRow
	groupVals := make([]string, len(uq.GroupBy))
	for rows.Next() {
		if len(out) == MaxRows {
			return nil, &ParamError{Param: "window", Message: fmt.Sprintf("the answer has more than %d rows: use a coarser window, a shorter range or fewer group_by dimensions", MaxRows)}
		}
		var r UsageRow
		dest := []any{&r.WindowStart}
		for i := range groupVals {
			dest = append(dest, &groupVals[i])
		}
		dest = append(dest, &r.Requests, &r.ClientErrors, &r.ServerErrors, &r.UnitsText,
			&r.RequestBytes, &r.ResponseBytes, &r.LatencyP50, &r.LatencyP95, &r.LatencyP99, &r.DistinctClientIPs,
			&r.LatencyMeasured)
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("aggregate: usage query: %w", err)
		}
		if !r.LatencyMeasured {
			r.LatencyP50, r.LatencyP95, r.LatencyP99 = 0, 0, 0
		}
		if r.Units, err = strconv.ParseFloat(r.UnitsText, 64); err != nil {
			return nil, fmt.Errorf("aggregate: usage query: units %q: %w", r.UnitsText, err)
		}
		if uq.Window == WindowTotal {
			r.WindowStart = uq.From
		}
		r.WindowStart = r.WindowStart.In(uq.TZ)
		r.Group = make(map[string]string, len(uq.GroupBy))
		for i, g := range uq.GroupBy {
			r.Group[g] = groupVals[i]
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("aggregate: usage query: %w", err)
	}
	return out, nil
}

// UnitsByCustomer returns the units of every customer with events in
// [from, to), read exactly like Usage (rollups before the watermark's
// minute, raw after it; summed as decimals, converted last).
func (q *Querier) UnitsByCustomer(ctx context.Context, from, to time.Time) (map[string]float64, error) {
	if errs := validRange(from, to); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	w, err := q.Freshness(ctx)
	if err != nil {
		return nil, err
	}
	from, to = ceilMilli(from), ceilMilli(to)
	p := makePlan([]time.Time{from, to}, frontier(w), levelMonth)
	branches, params := branchesSQL(p, []dimension{customerDimension}, nil, source{narrow: !q.wide})
	sqlText := `SELECT g0, toString(sum(u)) FROM (` + branches + `) GROUP BY g0 HAVING sum(r) > 0`
	rows, err := q.db.Query(ctx, sqlText, params...)
	if err != nil {
		return nil, fmt.Errorf("aggregate: units by customer: %w", err)
	}
	defer func() { _ = rows.Close() }()
	out := map[string]float64{}
	for rows.Next() {
		var c, u string
		if err := rows.Scan(&c, &u); err != nil {
			return nil, fmt.Errorf("aggregate: units by customer: %w", err)
		}
		f, err := strconv.ParseFloat(u, 64)
		if err != nil {
			return nil, fmt.Errorf("aggregate: units by customer: units %q: %w", u, err)
		}
		out[c] = f
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("aggregate: units by customer: %w", err)
	}
	return out, nil
}

// frontier is T, the minute of the watermark: windows before it come from
// rollups, time from it on from raw. Zero (no tick yet) reads raw only.
func frontier(w time.Time) time.Time {
	if w.IsZero() {
		return time.Time{}
	}
	return floorUTC(levelMinute, w)
}

// ceilMilli rounds t up to the millisecond of raw event times: an event at
// millisecond m is at or after t exactly when m >= ceilMilli(t).
func ceilMilli(t time.Time) time.Time {
	f := t.Truncate(time.Millisecond)
	if f.Equal(t) {
		return t.UTC()
	}
	return f.Add(time.Millisecond).UTC()
}

// buildUsageSQL returns the statement answering a validated uq (TZ set)
// with frontier t, and its parameters. The narrow rollups serve it when
// it neither groups nor filters by a dimension they lack and either
// leaves distinct client IPs out or asks for one window over the whole
// range, unless wide forces the wide ones. Per-window distinct IPs stay
// on the wide rollups: a narrow row holds the address set of its whole
// cell, and merging a few large sets per window was measured slower than
// the many small ones of the wide rows (docs/performance.md).
func buildUsageSQL(uq UsageQuery, t time.Time, wide bool) (string, []store.Param) {
	from, to := ceilMilli(uq.From), ceilMilli(uq.To)
	p := makePlan(windowBounds(from, to, uq.Window, uq.TZ), t, windowLevel[uq.Window])
	src := source{narrow: !wide && (uq.SkipDistinctIPs || uq.Window == WindowTotal), ips: !uq.SkipDistinctIPs}
	dims := make([]dimension, len(uq.GroupBy))
	for i, g := range uq.GroupBy {
		dims[i] = groupColumns[g]
		src.narrow = src.narrow && dims[i].narrow
	}
	var filter []condition
	var params []store.Param
	if uq.CustomerID != "" {
		filter = append(filter, same("customer_id = {customer_id:String}"))
		params = append(params, store.P("customer_id", uq.CustomerID))
	}
	if uq.APIKeyID != "" {
		filter = append(filter, same("api_key_id = {api_key_id:String}"))
		params = append(params, store.P("api_key_id", uq.APIKeyID))
	}
	// Filter dimensions in a fixed order; only names of the fixed map
	// reach SQL, values are bound.
	for _, name := range FilterAllowed {
		vals := uq.Filters[name]
		if len(vals) == 0 {
			continue
		}
		d, pn := groupColumns[name], "filter_"+name
		src.narrow = src.narrow && d.narrow
		filter = append(filter, condition{
			rollup: d.rollup + " IN {" + pn + ":Array(String)}",
			raw:    d.raw + " IN {" + pn + ":Array(String)}",
		})
		params = append(params, store.P(pn, slices.Clone(vals)))
	}
	branches, bparams := branchesSQL(p, dims, filter, src)
	params = append(params, bparams...)

	var bucket string
	switch uq.Window {
	case WindowMinute:
		bucket = "ws"
	case WindowHour:
		bucket = "toStartOfHour(ws)"
	case WindowDay:
		bucket = "toStartOfDay(ws, {tz:String})"
		params = append(params, store.P("tz", uq.TZ.String()))
	case WindowMonth:
		bucket = "toDateTime(toStartOfMonth(ws, {tz:String}), {tz:String})"
		params = append(params, store.P("tz", uq.TZ.String()))
	case WindowTotal:
		// One bucket; Usage sets WindowStart to From.
		bucket = "toDateTime(0, 'UTC')"
	}
	groups := ""
	for i := range dims {
		groups += ", g" + strconv.Itoa(i)
	}
	params = append(params, store.P("limit", uint64(MaxRows+1)))
	ips := "uniqExactMerge(ips)"
	if !src.ips {
		ips = "toUInt64(0)"
	}
	return `SELECT bucket` + groups + `, n, n_ce, n_se, toString(n_u), n_rqb, n_rsb,
    if(n = 0, 0, toFloat64(q[1])), if(n = 0, 0, toFloat64(q[2])), if(n = 0, 0, toFloat64(q[3])), n_ips,
    n > 0 AND NOT isNaN(toFloat64(q[1]))
FROM
(
    SELECT ` + bucket + ` AS bucket` + groups + `,
        sum(r) AS n, sum(ce) AS n_ce, sum(se) AS n_se, sum(u) AS n_u, sum(rqb) AS n_rqb, sum(rsb) AS n_rsb,
        quantilesTDigestMerge(` + latencyQuantiles + `)(lat) AS q,
        ` + ips + ` AS n_ips
    FROM
    (
` + branches + `
    )
    GROUP BY bucket` + groups + `
    HAVING n > 0
)
ORDER BY bucket` + groups + `
LIMIT {limit:UInt64}`, params
}

// source says which rollups a query reads and what it computes.
type source struct {
	// narrow reads the narrow rollups (usage_key_*); only for queries
	// whose dimensions and filters all have narrow set.
	narrow bool
	// ips reads the client-IP states (the ips column of the branches).
	ips bool
}

// branchesSQL returns a UNION ALL of one SELECT per level that the plan
// uses, each giving rows (ws, g0..gN, r, ce, se, u, rqb, rsb, lat, ips) of
// the same types: ws is a minute or coarser window start, gI the value of
// dims[I], then requests, client and server errors, units, request and
// response bytes, and the latency and client-IP states (ips only with
// src.ips). Raw rows are aggregated per minute on the fly. filter holds
// fixed conditions.
func branchesSQL(p plan, dims []dimension, filter []condition, src source) (string, []store.Param) {
	tables := levelTables
	if src.narrow {
		tables = narrowTables
	}
	rawIPs, rollupIPs := "", ""
	if src.ips {
		rawIPs = ",\n            uniqExactStateIf(client_ip, client_ip != '') AS ips"
		rollupIPs = ", client_ips_state AS ips"
	}
	var parts []string
	var params []store.Param
	for l := levelMonth; l >= levelRaw; l-- {
		if len(p[l]) == 0 {
			continue
		}
		col, typ := "window_start", "DateTime('UTC')"
		if l == levelRaw {
			col, typ = "time", "DateTime64(3, 'UTC')"
		}
		var ranges []string
		for i, s := range p[l] {
			a := fmt.Sprintf("l%d_%d_from", l, i)
			b := fmt.Sprintf("l%d_%d_to", l, i)
			ranges = append(ranges, fmt.Sprintf("(%s >= {%s:%s} AND %s < {%s:%s})", col, a, typ, col, b, typ))
			params = append(params, store.P(a, s.from), store.P(b, s.to))
		}
		var where []string
		for _, c := range filter {
			if l == levelRaw {
				where = append(where, c.raw)
			} else {
				where = append(where, c.rollup)
			}
		}
		where = append(where, "("+strings.Join(ranges, " OR ")+")")
		var b strings.Builder
		if l == levelRaw {
			b.WriteString("        SELECT toDateTime(toStartOfMinute(time), 'UTC') AS ws")
			for i, d := range dims {
				fmt.Fprintf(&b, ", %s AS g%d", d.raw, i)
			}
			b.WriteString(`,
            count() AS r, countIf(status >= 400 AND status < 500) AS ce, countIf(status >= 500) AS se,
            sum(units) AS u, sum(ifNull(request_bytes, 0)) AS rqb, sum(ifNull(response_bytes, 0)) AS rsb,
            quantilesTDigestStateIf(` + latencyQuantiles + `)(assumeNotNull(latency_ms), isNotNull(latency_ms)) AS lat` + rawIPs + `
        FROM events FINAL
        WHERE `)
			b.WriteString(strings.Join(where, " AND "))
			b.WriteString("\n        GROUP BY ws")
			for i := range dims {
				fmt.Fprintf(&b, ", g%d", i)
			}
		} else {
			b.WriteString("        SELECT window_start AS ws")
			for i, d := range dims {
				fmt.Fprintf(&b, ", %s AS g%d", d.rollup, i)
			}
			b.WriteString(`,
            requests AS r, client_errors AS ce, server_errors AS se,
            units AS u, request_bytes AS rqb, response_bytes AS rsb,
            latency_state AS lat` + rollupIPs + `
        FROM ` + tables[l] + ` FINAL
        WHERE `)
			b.WriteString(strings.Join(where, " AND "))
		}
		parts = append(parts, b.String())
	}
	return strings.Join(parts, "\n        UNION ALL\n"), params
}
