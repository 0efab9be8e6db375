package privacy

import (
	"archive/zip"
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode"

	"github.com/meterline/meterline/store"
)

// Subject selects whose data an export covers: a customer, one API key, or
// a key of a customer. With only an API key, tables without an api_key_id
// column (alert deliveries, billing) are not part of the key's data.
type Subject struct {
	CustomerID string
	APIKeyID   string
}

// MaxIDBytes bounds customer and key ids, as the event contract does.
const MaxIDBytes = 128

// Validate checks the ids: at least one, each printable and at most
// MaxIDBytes. The message names the parameter.
func (s Subject) Validate() error {
	if s.CustomerID == "" && s.APIKeyID == "" {
		return errors.New("give a customer_id or an api_key_id")
	}
	return errors.Join(CheckID("customer_id", s.CustomerID), CheckID("api_key_id", s.APIKeyID))
}

// CheckID checks one id: printable and at most MaxIDBytes; the message
// names the parameter.
func CheckID(name, v string) error {
	if len(v) > MaxIDBytes {
		return fmt.Errorf("%s: longer than %d bytes", name, MaxIDBytes)
	}
	for _, r := range v {
		if r == unicode.ReplacementChar || !unicode.IsPrint(r) {
			return fmt.Errorf("%s: contains a control or invalid character", name)
		}
	}
	return nil
}

// Format is an export's encoding.
type Format string

const (
	// NDJSON writes one JSON object per line: {"table": ..., "row": {...}},
	// ending with a {"table": "_summary", ...} line.
	NDJSON Format = "ndjson"
	// ZipCSV writes a zip archive with one CSV file per table (header
	// line first) and summary.json.
	ZipCSV Format = "zip"
)

// ParseFormat accepts ndjson and zip.
func ParseFormat(s string) (Format, error) {
	switch Format(s) {
	case NDJSON, ZipCSV:
		return Format(s), nil
	}
	return "", fmt.Errorf("format %q: use ndjson or zip", s)
}

// ContentType is the MIME type of the format.
func (f Format) ContentType() string {
	if f == ZipCSV {
		return "application/zip"
	}
	return "application/x-ndjson"
}

// DefaultSliceRows is how many rows one read of an export aims at. Reads
// are slices of a table's time column sized from an hour histogram (busy
// hours by minute, busy minutes by second), so memory stays bounded by a
// slice whatever the customer's volume (short of more than a slice of rows
// in one second). Measured on 1 M events with the embedded engine: peak
// RSS 321 MB at 10k rows (25 s), 380 MB at 20k (12 s), 559 MB at 50k
// (10 s), 985 MB at 200k, against 248 MB for the engine scanning the same
// rows to nowhere.
const DefaultSliceRows = 20_000

// Record is extra data an export includes beside the tables, such as the
// customer's entry in the plan catalogue.
type Record struct {
	Table string
	Row   any
}

// Export is a planned export: what will be read, and how many rows.
type Export struct {
	Subject Subject
	Tables  []TablePlan
	// Records are written after the tables.
	Records []Record
	// Rows is the planned total over the tables.
	Rows uint64
	// SliceRows overrides DefaultSliceRows when positive.
	SliceRows uint64

	db store.Conn
}

// TablePlan is one table of an export.
type TablePlan struct {
	Table  Table
	Rows   uint64
	slices []slice
}

type slice struct {
	lo, hi time.Time // [lo, hi) of the time column; zero hi: whole table
	rows   uint64
}

// Progress reports an export's advance after each slice.
type Progress struct {
	Table              string
	TableRows, TableOf uint64
	Rows, Of           uint64
}

// Result counts the rows written per table.
type Result struct {
	Rows        map[string]uint64 `json:"rows"`
	Total       uint64            `json:"total"`
	GeneratedAt time.Time         `json:"generated_at"`
}

// Plan finds the tables that hold the subject's data and counts its rows
// per table and per time slice.
func Plan(ctx context.Context, db store.Conn, s Subject, sliceRows uint64) (*Export, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if sliceRows == 0 {
		sliceRows = DefaultSliceRows
	}
	tables, err := Tables(ctx, db)
	if err != nil {
		return nil, err
	}
	e := &Export{Subject: s, SliceRows: sliceRows, db: db}
	for _, t := range tables {
		if s.CustomerID == "" && !t.HasAPIKey {
			continue
		}
		tp := TablePlan{Table: t}
		if t.TimeColumn == "" {
			n, err := countRows(ctx, db, t, s, time.Time{}, time.Time{})
			if err != nil {
				return nil, err
			}
			tp.slices = []slice{{rows: n}}
			tp.Rows = n
		} else if tp.slices, tp.Rows, err = planSlices(ctx, db, t, s, sliceRows); err != nil {
			return nil, err
		}
		e.Tables = append(e.Tables, tp)
		e.Rows += tp.Rows
	}
	return e, nil
}

// where returns the subject filter of t and its parameters.
func where(t Table, s Subject) (string, []store.Param) {
	var conds []string
	var params []store.Param
	if s.CustomerID != "" {
		conds = append(conds, "customer_id = {customer_id:String}")
		params = append(params, store.P("customer_id", s.CustomerID))
	}
	if s.APIKeyID != "" && t.HasAPIKey {
		conds = append(conds, "api_key_id = {api_key_id:String}")
		params = append(params, store.P("api_key_id", s.APIKeyID))
	}
	return strings.Join(conds, " AND "), params
}

func from(t Table) string {
	if t.Final {
		return t.ident + " FINAL"
	}
	return t.ident
}

// timeRange adds [lo, hi) of the time column to a filter.
func timeRange(t Table, filter string, params []store.Param, lo, hi time.Time) (string, []store.Param) {
	if hi.IsZero() {
		return filter, params
	}
	tc := t.timeIdent
	filter += " AND " + tc + " >= {lo:DateTime64(3, 'UTC')} AND " + tc + " < {hi:DateTime64(3, 'UTC')}"
	return filter, append(params, store.P("lo", lo), store.P("hi", hi))
}

func countRows(ctx context.Context, db store.Conn, t Table, s Subject, lo, hi time.Time) (uint64, error) {
	filter, params := where(t, s)
	filter, params = timeRange(t, filter, params, lo, hi)
	return countQuery(ctx, db, t, "SELECT count() FROM "+from(t)+" WHERE "+filter, params...)
}

// countQuery runs a SELECT count() over table t.
func countQuery(ctx context.Context, db store.Conn, t Table, q string, params ...store.Param) (uint64, error) {
	rows, err := db.Query(ctx, q, params...)
	if err != nil {
		return 0, fmt.Errorf("privacy: counting %s: %w", t.Name, err)
	}
	defer rows.Close()
	var n uint64
	if rows.Next() {
		if err := rows.Scan(&n); err != nil {
			return 0, err
		}
	}
	return n, rows.Err()
}

// histogramLevels are the bucket sizes a busy bucket is cut into, coarsest
// first: hours, minutes, seconds (a single second is not cut further).
var histogramLevels = []struct {
	expr string // applied to toDateTime(time column, 'UTC')
	step time.Duration
}{{"toStartOfHour", time.Hour}, {"toStartOfMinute", time.Minute}, {"", time.Second}}

// histogram counts the subject's rows of t per bucket of the given level
// within [lo, hi) when hi is set.
func histogram(ctx context.Context, db store.Conn, t Table, s Subject, level int, lo, hi time.Time) ([]slice, error) {
	filter, params := where(t, s)
	filter, params = timeRange(t, filter, params, lo, hi)
	lv := histogramLevels[level]
	q := "SELECT " + lv.expr + "(toDateTime(" + t.timeIdent + ", 'UTC')) AS b, count() FROM " + from(t) +
		" WHERE " + filter + " GROUP BY b ORDER BY b"
	rows, err := db.Query(ctx, q, params...)
	if err != nil {
		return nil, fmt.Errorf("privacy: histogram of %s: %w", t.Name, err)
	}
	defer rows.Close()
	var out []slice
	for rows.Next() {
		var b time.Time
		var n uint64
		if err := rows.Scan(&b, &n); err != nil {
			return nil, err
		}
		out = append(out, slice{lo: b.UTC(), hi: b.UTC().Add(lv.step), rows: n})
	}
	return out, rows.Err()
}

// buckets returns the subject's rows of t in [lo, hi) as buckets of at most
// sliceRows rows where possible: a bucket above it is cut into the next
// finer level.
func buckets(ctx context.Context, db store.Conn, t Table, s Subject, sliceRows uint64, level int, lo, hi time.Time) ([]slice, error) {
	bs, err := histogram(ctx, db, t, s, level, lo, hi)
	if err != nil {
		return nil, err
	}
	var out []slice
	for _, b := range bs {
		if b.rows <= sliceRows || level+1 == len(histogramLevels) {
			out = append(out, b)
			continue
		}
		finer, err := buckets(ctx, db, t, s, sliceRows, level+1, b.lo, b.hi)
		if err != nil {
			return nil, err
		}
		out = append(out, finer...)
	}
	return out, nil
}

// planSlices cuts the subject's rows of t into contiguous time slices of
// about sliceRows rows: hours are merged until they reach it, and an hour
// above it is cut into minutes, a minute above it into seconds.
func planSlices(ctx context.Context, db store.Conn, t Table, s Subject, sliceRows uint64) ([]slice, uint64, error) {
	bs, err := buckets(ctx, db, t, s, sliceRows, 0, time.Time{}, time.Time{})
	if err != nil {
		return nil, 0, err
	}
	var out []slice
	var total uint64
	for _, b := range bs {
		total += b.rows
		if n := len(out); n > 0 && out[n-1].rows+b.rows <= sliceRows {
			out[n-1].hi = b.hi
			out[n-1].rows += b.rows
			continue
		}
		if n := len(out); n > 0 {
			// Keep the slices contiguous: a row written into a gap after
			// planning is still exported.
			b.lo = out[n-1].hi
		}
		out = append(out, b)
	}
	return out, total, nil
}

// selectList formats each row as one string in ClickHouse's own encoding
// (JSONEachRow or CSV), so values keep their exact types and escaping.
// Aggregate states are finalised under their ExportName.
func selectList(t Table, format string) string {
	exprs := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		exprs[i] = c.ident
		if c.Aggregate() {
			exprs[i] = "finalizeAggregation(" + c.ident + ") AS " + c.exportIdent
		}
	}
	return "formatRowNoNewline('" + format + "', " + strings.Join(exprs, ", ") + ")"
}

// exportSettings make the rows readable and exact: RFC 3339 times, numbers
// as JSON numbers, routes with their slashes as they are ("/v1/pets", not
// "\/v1\/pets": JSON allows both, people read the first).
const exportSettings = ` SETTINGS date_time_output_format = 'iso', output_format_json_quote_64bit_integers = 0,
 output_format_json_quote_decimals = 0, output_format_decimal_trailing_zeros = 0,
 output_format_json_escape_forward_slashes = 0`

// readSlice calls emit for every row of one slice, in time order.
func (e *Export) readSlice(ctx context.Context, t Table, sl slice, format string, emit func(string) error) (uint64, error) {
	sel := selectList(t, format)
	filter, params := where(t, e.Subject)
	filter, params = timeRange(t, filter, params, sl.lo, sl.hi)
	q := "SELECT " + sel + " FROM " + from(t) + " WHERE " + filter
	if t.TimeColumn != "" {
		q += " ORDER BY " + t.timeIdent
	}
	q += exportSettings
	rows, err := e.db.Query(ctx, q, params...)
	if err != nil {
		return 0, fmt.Errorf("privacy: reading %s: %w", t.Name, err)
	}
	defer rows.Close()
	var n uint64
	var line string
	for rows.Next() {
		if err := rows.Scan(&line); err != nil {
			return n, err
		}
		if err := emit(line); err != nil {
			return n, err
		}
		n++
	}
	if err := rows.Err(); err != nil {
		return n, fmt.Errorf("privacy: reading %s: %w", t.Name, err)
	}
	return n, nil
}

// Write streams the export to w in format f. progress, if not nil, is
// called after each slice. The result counts what was written; it can
// differ from the plan by rows that arrived or expired meanwhile.
func (e *Export) Write(ctx context.Context, w io.Writer, f Format, progress func(Progress)) (Result, error) {
	res := Result{Rows: map[string]uint64{}, GeneratedAt: time.Now().UTC()}
	var err error
	switch f {
	case NDJSON:
		err = e.writeNDJSON(ctx, w, &res, progress)
	case ZipCSV:
		err = e.writeZip(ctx, w, &res, progress)
	default:
		err = fmt.Errorf("privacy: unknown export format %q", f)
	}
	return res, err
}

func (e *Export) eachTable(ctx context.Context, res *Result, progress func(Progress), format string,
	begin func(TablePlan) error, emit func(string) error) error {
	for _, tp := range e.Tables {
		if err := begin(tp); err != nil {
			return err
		}
		var done uint64
		for _, sl := range tp.slices {
			n, err := e.readSlice(ctx, tp.Table, sl, format, emit)
			done += n
			res.Rows[tp.Table.Name] = done
			res.Total += n
			if err != nil {
				return err
			}
			if progress != nil {
				progress(Progress{Table: tp.Table.Name, TableRows: done, TableOf: tp.Rows, Rows: res.Total, Of: e.Rows})
			}
		}
		res.Rows[tp.Table.Name] = done
	}
	return nil
}

// summary is the last object of an export.
type summary struct {
	CustomerID  string            `json:"customer_id,omitempty"`
	APIKeyID    string            `json:"api_key_id,omitempty"`
	GeneratedAt time.Time         `json:"generated_at"`
	Rows        map[string]uint64 `json:"rows"`
	Total       uint64            `json:"total"`
	Complete    bool              `json:"complete"`
}

func (e *Export) summary(res *Result) summary {
	return summary{CustomerID: e.Subject.CustomerID, APIKeyID: e.Subject.APIKeyID, GeneratedAt: res.GeneratedAt,
		Rows: res.Rows, Total: res.Total, Complete: true}
}

func (e *Export) writeNDJSON(ctx context.Context, w io.Writer, res *Result, progress func(Progress)) error {
	bw := bufio.NewWriterSize(w, 256<<10)
	var prefix string
	err := e.eachTable(ctx, res, progress, "JSONEachRow", func(tp TablePlan) error {
		name, _ := json.Marshal(tp.Table.Name)
		prefix = `{"table":` + string(name) + `,"row":`
		return nil
	}, func(row string) error {
		bw.WriteString(prefix)
		bw.WriteString(row)
		_, err := bw.WriteString("}\n")
		return err
	})
	if err != nil {
		return err
	}
	enc := json.NewEncoder(bw)
	for _, r := range e.Records {
		if err := enc.Encode(map[string]any{"table": r.Table, "row": r.Row}); err != nil {
			return err
		}
		res.Rows[r.Table]++
	}
	if err := enc.Encode(map[string]any{"table": "_summary", "row": e.summary(res)}); err != nil {
		return err
	}
	return bw.Flush()
}

func (e *Export) writeZip(ctx context.Context, w io.Writer, res *Result, progress func(Progress)) error {
	zw := zip.NewWriter(w)
	var cur io.Writer
	err := e.eachTable(ctx, res, progress, "CSV", func(tp TablePlan) error {
		var err error
		cur, err = zw.CreateHeader(&zip.FileHeader{Name: tp.Table.Name + ".csv", Method: zip.Deflate, Modified: res.GeneratedAt})
		if err != nil {
			return err
		}
		_, err = io.WriteString(cur, csvHeader(tp.Table.Columns))
		return err
	}, func(row string) error {
		_, err := io.WriteString(cur, row+"\n")
		return err
	})
	if err != nil {
		return err
	}
	byTable := map[string][]any{}
	var order []string
	for _, r := range e.Records {
		if _, ok := byTable[r.Table]; !ok {
			order = append(order, r.Table)
		}
		byTable[r.Table] = append(byTable[r.Table], r.Row)
		res.Rows[r.Table]++
	}
	for _, name := range order {
		if err := zipJSON(zw, name+".json", byTable[name], res.GeneratedAt); err != nil {
			return err
		}
	}
	if err := zipJSON(zw, "summary.json", e.summary(res), res.GeneratedAt); err != nil {
		return err
	}
	return zw.Close()
}

func zipJSON(zw *zip.Writer, name string, v any, mod time.Time) error {
	f, err := zw.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Deflate, Modified: mod})
	if err != nil {
		return err
	}
	enc := json.NewEncoder(f)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// csvHeader is the header line of a table's CSV: the export names, quoted
// as RFC 4180 requires.
func csvHeader(cols []Column) string {
	q := make([]string, len(cols))
	for i, c := range cols {
		q[i] = `"` + strings.ReplaceAll(c.ExportName, `"`, `""`) + `"`
	}
	return strings.Join(q, ",") + "\n"
}
