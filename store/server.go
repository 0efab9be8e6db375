package store

import (
	"context"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/column"
	chdriver "github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/ClickHouse/clickhouse-go/v2/lib/proto"
	"github.com/shopspring/decimal"
)

// Server engine defaults.
const (
	defaultDialTimeout = 5 * time.Second
	defaultServerConns = 8
)

// serverConn is a Conn on a ClickHouse server through clickhouse-go's
// native protocol.
type serverConn struct {
	conn chdriver.Conn
	log  *slog.Logger
	// inter and readSlots bound interactive reads to their own share of
	// the driver's connections (it opens MaxOpenConns + inter.Conns).
	inter     InteractiveConfig
	readSlots chan struct{}
	// layout is the cluster layout (zero on a single node); Exec sends
	// the mutations of sharded tables to their local tables.
	layout Layout
}

// serverOptions maps Config to clickhouse-go options for database.
func serverOptions(cfg Config, database string) *clickhouse.Options {
	dial := cfg.DialTimeout
	if dial <= 0 {
		dial = defaultDialTimeout
	}
	maxOpen := cfg.MaxOpenConns
	if maxOpen <= 0 {
		maxOpen = defaultServerConns
	}
	// Interactive reads have connections of their own on top.
	maxOpen += cfg.Interactive.withDefaults().Conns
	// The same zone as the embedded engine, whatever the server's.
	settings := clickhouse.Settings{"session_timezone": "UTC"}
	if cfg.Cluster != "" {
		// An insert into a Distributed table returns once every shard
		// stored its rows (not when queued on this node), so an
		// acknowledged insert is stored and a retried one meets its dedup
		// token on the shard. IN subqueries over Distributed tables read
		// each shard's local table: a customer's rows are on one shard,
		// and a read of one customer asks only that customer's shard.
		settings["distributed_foreground_insert"] = 1
		settings["distributed_product_mode"] = "local"
		settings["optimize_skip_unused_shards"] = 1
	}
	return &clickhouse.Options{
		Protocol: clickhouse.Native,
		Addr:     cfg.Addr,
		Auth: clickhouse.Auth{
			Database: database,
			Username: cfg.Username,
			Password: cfg.Password,
		},
		TLS:          cfg.TLS,
		DialTimeout:  dial,
		MaxOpenConns: maxOpen,
		MaxIdleConns: min(5, maxOpen),
		Compression:  &clickhouse.Compression{Method: clickhouse.CompressionLZ4},
		Settings:     settings,
		ClientInfo: clickhouse.ClientInfo{
			Products: []struct{ Name, Version string }{{Name: "meterline", Version: "1"}},
		},
	}
}

func openServer(ctx context.Context, cfg Config, log *slog.Logger) (Conn, error) {
	qdb, err := quoteName(cfg.Database)
	if err != nil {
		return nil, fmt.Errorf("store: database name: %w", err)
	}
	// Connect to "default" first: the target database may not exist yet,
	// and the server refuses a connection to a missing database.
	admin, err := clickhouse.Open(serverOptions(cfg, "default"))
	if err != nil {
		return nil, fmt.Errorf("store: open server %v: %w", cfg.Addr, classifyServerError(err))
	}
	layout := Layout{Cluster: cfg.Cluster, Database: cfg.Database}
	if err := layout.Validate(); err != nil {
		_ = admin.Close()
		return nil, err
	}
	create := "CREATE DATABASE IF NOT EXISTS " + qdb
	if cfg.Cluster != "" {
		create += layout.onCluster()
	}
	err = admin.Exec(ctx, create)
	_ = admin.Close()
	if err != nil {
		return nil, fmt.Errorf("store: create database %s on %v: %w", qdb, cfg.Addr, classifyServerError(err))
	}
	conn, err := clickhouse.Open(serverOptions(cfg, cfg.Database))
	if err != nil {
		return nil, fmt.Errorf("store: open server %v: %w", cfg.Addr, classifyServerError(err))
	}
	if err := conn.Ping(ctx); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("store: ping server %v: %w", cfg.Addr, classifyServerError(err))
	}
	inter := cfg.Interactive.withDefaults()
	sc := &serverConn{conn: conn, log: log, inter: inter, readSlots: make(chan struct{}, inter.Conns)}
	if cfg.Cluster != "" {
		if sc.layout, err = resolveLayout(ctx, sc, layout); err != nil {
			_ = conn.Close()
			return nil, err
		}
	}
	log.Info("connected to ClickHouse server", "addr", cfg.Addr, "database", cfg.Database, "layout", sc.layout.describe())
	return sc, nil
}

// classifyServerError maps clickhouse-go errors onto QueryError and
// ErrUnavailable, keeping the original error in the chain.
func classifyServerError(err error) error {
	if err == nil {
		return nil
	}
	var ex *proto.Exception
	if errors.As(err, &ex) {
		return &QueryError{Code: int(ex.Code), Message: ex.Error()}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		if errors.Is(err, clickhouse.ErrAcquireConnTimeout) {
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return err
	}
	var netErr net.Error
	if errors.As(err, &netErr) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, driver.ErrBadConn) ||
		errors.Is(err, clickhouse.ErrAcquireConnTimeout) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}

// withParams attaches bound parameters to the query context.
func withParams(ctx context.Context, params []Param) (context.Context, error) {
	if len(params) == 0 {
		return ctx, nil
	}
	names, values, err := encodeParams(params)
	if err != nil {
		return nil, err
	}
	p := make(clickhouse.Parameters, len(names))
	for i, n := range names {
		p[n] = values[i]
	}
	return clickhouse.Context(ctx, clickhouse.WithParameters(p)), nil
}

// Engine implements Conn.
func (c *serverConn) Engine() string { return EngineServer }

// interactive takes an interactive-read slot when ctx is interactive and
// adds the read limits to the statement's settings (merged with extra). It
// returns the context to run with and the function that frees the slot.
func (c *serverConn) interactive(ctx context.Context, extra clickhouse.Settings) (context.Context, func(), error) {
	if !IsInteractive(ctx) {
		if extra != nil {
			ctx = clickhouse.Context(ctx, clickhouse.WithSettings(extra))
		}
		return ctx, func() {}, nil
	}
	if err := acquireSlot(ctx, c.readSlots, c.inter.QueueTimeout); err != nil {
		return nil, nil, err
	}
	settings := clickhouse.Settings{}
	for _, kv := range c.inter.settings() {
		settings[kv[0]] = kv[1]
	}
	for k, v := range extra {
		settings[k] = v
	}
	if len(settings) > 0 {
		ctx = clickhouse.Context(ctx, clickhouse.WithSettings(settings))
	}
	var once sync.Once
	return ctx, func() { once.Do(func() { <-c.readSlots }) }, nil
}

// Exec implements Conn.
func (c *serverConn) Exec(ctx context.Context, query string, params ...Param) error {
	ctx, done, err := c.interactive(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: exec %q: %w", snippet(query), err)
	}
	defer done()
	qctx, err := withParams(ctx, params)
	if err != nil {
		return err
	}
	query = c.layout.mutation(query)
	if err := c.conn.Exec(qctx, query); err != nil {
		return fmt.Errorf("store: exec %q: %w", snippet(query), classifyServerError(err))
	}
	return nil
}

// Query implements Conn. An interactive read holds its slot until the
// rows are closed: the driver streams them over the connection.
func (c *serverConn) Query(ctx context.Context, query string, params ...Param) (Rows, error) {
	ctx, done, err := c.interactive(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("store: query %q: %w", snippet(query), err)
	}
	qctx, err := withParams(ctx, params)
	if err != nil {
		done()
		return nil, err
	}
	rows, err := c.conn.Query(qctx, query)
	if err != nil {
		done()
		return nil, fmt.Errorf("store: query %q: %w", snippet(query), classifyServerError(err))
	}
	r := newServerRows(rows)
	r.done = done
	return r, nil
}

// Insert implements Conn. The dedup token travels as a query setting.
func (c *serverConn) Insert(ctx context.Context, table string, columns []string, rows [][]any, opts InsertOptions) error {
	if len(rows) == 0 {
		return nil
	}
	head, err := insertHead(table, columns, InsertOptions{})
	if err != nil {
		return err
	}
	var settings clickhouse.Settings
	if opts.DedupToken != "" {
		if strings.IndexByte(opts.DedupToken, 0) >= 0 {
			return fmt.Errorf("store: insert into %s: dedup token: %w", table, errNUL)
		}
		settings = clickhouse.Settings{
			"insert_deduplication_token":                         opts.DedupToken,
			"deduplicate_blocks_in_dependent_materialized_views": 1,
		}
	}
	ctx, done, err := c.interactive(ctx, settings)
	if err != nil {
		return fmt.Errorf("store: insert into %s: %w", table, err)
	}
	defer done()
	batch, err := c.conn.PrepareBatch(ctx, head)
	if err != nil {
		return fmt.Errorf("store: insert into %s: %w", table, classifyServerError(err))
	}
	defer func() { _ = batch.Close() }()
	cols := batch.Columns()
	if len(cols) != len(columns) {
		_ = batch.Abort()
		return fmt.Errorf("store: insert into %s: server expects %d columns, got %d", table, len(cols), len(columns))
	}
	types := make([]string, len(cols))
	for i, col := range cols {
		types[i] = string(col.Type())
	}
	vals := make([]any, len(columns))
	for i, row := range rows {
		if len(row) != len(columns) {
			_ = batch.Abort()
			return fmt.Errorf("store: insert into %s: row %d has %d values for %d columns", table, i, len(row), len(columns))
		}
		for j, v := range row {
			cv, err := convertForColumn(types[j], v)
			if err != nil {
				_ = batch.Abort()
				return fmt.Errorf("store: insert into %s: row %d column %q (%s): %w", table, i, columns[j], types[j], err)
			}
			vals[j] = cv
		}
		if err := batch.Append(vals...); err != nil {
			_ = batch.Abort()
			return fmt.Errorf("store: insert into %s: row %d: %w", table, i, classifyServerError(err))
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("store: insert into %s: %w", table, classifyServerError(err))
	}
	return nil
}

// Ping implements Conn.
func (c *serverConn) Ping(ctx context.Context) error {
	if err := c.conn.Ping(ctx); err != nil {
		return fmt.Errorf("store: ping: %w", classifyServerError(err))
	}
	return nil
}

// Close implements Conn.
func (c *serverConn) Close() error { return c.conn.Close() }

// toInt64Value converts a Go integer of any width to int64 exactly.
func toInt64Value(v any) (int64, error) {
	switch x := v.(type) {
	case int:
		return int64(x), nil
	case int8:
		return int64(x), nil
	case int16:
		return int64(x), nil
	case int32:
		return int64(x), nil
	case int64:
		return x, nil
	case uint, uint8, uint16, uint32, uint64:
		u, err := toUint64Value(x)
		if err != nil {
			return 0, err
		}
		if u > math.MaxInt64 {
			return 0, fmt.Errorf("%d out of range", u)
		}
		return int64(u), nil
	}
	return 0, fmt.Errorf("cannot convert %T to an integer", v)
}

// toUint64Value converts a Go integer of any width to uint64 exactly.
func toUint64Value(v any) (uint64, error) {
	switch x := v.(type) {
	case uint:
		return uint64(x), nil
	case uint8:
		return uint64(x), nil
	case uint16:
		return uint64(x), nil
	case uint32:
		return uint64(x), nil
	case uint64:
		return x, nil
	case int, int8, int16, int32, int64:
		n, _ := toInt64Value(x)
		if n < 0 {
			return 0, fmt.Errorf("%d is negative", n)
		}
		return uint64(n), nil
	}
	return 0, fmt.Errorf("cannot convert %T to an unsigned integer", v)
}

// toFloat64Value converts Go numbers to float64.
func toFloat64Value(v any) (float64, error) {
	switch x := v.(type) {
	case float64:
		return x, nil
	case float32:
		return float64(x), nil
	case json.Number:
		return x.Float64()
	}
	if n, err := toInt64Value(v); err == nil {
		return float64(n), nil
	}
	if u, err := toUint64Value(v); err == nil {
		return float64(u), nil
	}
	return 0, fmt.Errorf("cannot convert %T to a float", v)
}

// convertForColumn turns a caller's value into the Go type clickhouse-go
// requires for a column of type chType: the driver accepts only exact
// widths (an int for a UInt16 column fails), while callers of Insert pass
// the same values to both engines.
func convertForColumn(chType string, v any) (any, error) {
	if v == nil {
		return nil, nil
	}
	name, args := splitType(chType)
	switch name {
	case "String", "FixedString":
		switch x := v.(type) {
		case string, []byte:
			return x, nil
		}
		return nil, fmt.Errorf("cannot convert %T to a string", v)
	case "Int8", "Int16", "Int32", "Int64":
		n, err := toInt64Value(v)
		if err != nil {
			return nil, err
		}
		bits, _ := strconv.Atoi(name[3:])
		if bits < 64 && (n < -(1<<(bits-1)) || n > 1<<(bits-1)-1) {
			return nil, fmt.Errorf("%d out of range for %s", n, name)
		}
		switch bits {
		case 8:
			return int8(n), nil
		case 16:
			return int16(n), nil
		case 32:
			return int32(n), nil
		}
		return n, nil
	case "UInt8", "UInt16", "UInt32", "UInt64":
		if b, ok := v.(bool); ok && name == "UInt8" {
			if b {
				return uint8(1), nil
			}
			return uint8(0), nil
		}
		u, err := toUint64Value(v)
		if err != nil {
			return nil, err
		}
		bits, _ := strconv.Atoi(name[4:])
		if bits < 64 && u > 1<<bits-1 {
			return nil, fmt.Errorf("%d out of range for %s", u, name)
		}
		switch bits {
		case 8:
			return uint8(u), nil
		case 16:
			return uint16(u), nil
		case 32:
			return uint32(u), nil
		}
		return u, nil
	case "Float32", "Float64":
		f, err := toFloat64Value(v)
		if err != nil {
			return nil, err
		}
		if name == "Float32" {
			return float32(f), nil
		}
		return f, nil
	case "Decimal", "Decimal32", "Decimal64", "Decimal128", "Decimal256":
		switch x := v.(type) {
		case decimal.Decimal:
			return x, nil
		case string:
			return decimal.NewFromString(x)
		case json.Number:
			return decimal.NewFromString(string(x))
		case float64:
			return decimal.NewFromFloat(x), nil
		case float32:
			return decimal.NewFromFloat32(x), nil
		}
		n, err := toInt64Value(v)
		if err != nil {
			return nil, fmt.Errorf("cannot convert %T to a decimal", v)
		}
		return decimal.NewFromInt(n), nil
	case "Bool":
		if b, ok := v.(bool); ok {
			return b, nil
		}
		return nil, fmt.Errorf("cannot convert %T to a bool", v)
	case "DateTime", "DateTime64", "Date", "Date32":
		if t, ok := v.(time.Time); ok {
			return t, nil
		}
		return nil, fmt.Errorf("cannot convert %T to a time", v)
	case "Map":
		if m, ok := v.(map[string]string); ok {
			return newSortedMap(m), nil
		}
	case "Array":
		if isStringType(args) {
			if s, ok := v.([]string); ok {
				return s, nil
			}
			return nil, fmt.Errorf("cannot convert %T to an array of strings", v)
		}
	}
	return v, nil
}

// sortedMap presents a map[string]string to clickhouse-go in key order.
// A plain Go map is appended in random order, and ClickHouse keeps a Map's
// order, so a retried batch would differ from the original and insert
// deduplication would not recognise it.
type sortedMap struct {
	keys   []string
	values map[string]string
}

func newSortedMap(m map[string]string) *sortedMap {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return &sortedMap{keys: keys, values: m}
}

// Put implements column.IterableOrderedMap (used only when scanning).
func (m *sortedMap) Put(key, value any) {
	k := fmt.Sprint(key)
	if m.values == nil {
		m.values = map[string]string{}
	}
	if _, ok := m.values[k]; !ok {
		m.keys = append(m.keys, k)
	}
	m.values[k] = fmt.Sprint(value)
}

// Iterator implements column.IterableOrderedMap.
func (m *sortedMap) Iterator() column.MapIterator {
	return &sortedMapIter{m: m, i: -1}
}

type sortedMapIter struct {
	m *sortedMap
	i int
}

func (it *sortedMapIter) Next() bool { it.i++; return it.i < len(it.m.keys) }
func (it *sortedMapIter) Key() any   { return it.m.keys[it.i] }
func (it *sortedMapIter) Value() any { return it.m.values[it.m.keys[it.i]] }

// serverRows adapts clickhouse-go rows to Rows. clickhouse-go scans only
// into exact types, so each row is scanned into the driver's own types and
// then converted like the embedded engine's values.
type serverRows struct {
	rows  chdriver.Rows
	cols  []string
	types []string
	ptrs  []any
	cur   []any
	err   error
	done  func() // frees an interactive-read slot; nil otherwise
}

func newServerRows(rows chdriver.Rows) *serverRows {
	cts := rows.ColumnTypes()
	r := &serverRows{rows: rows, cols: rows.Columns(), types: make([]string, len(cts)), ptrs: make([]any, len(cts))}
	for i, ct := range cts {
		r.types[i] = ct.DatabaseTypeName()
		r.ptrs[i] = reflect.New(ct.ScanType()).Interface()
	}
	return r
}

// Next implements Rows.
func (r *serverRows) Next() bool {
	if r.err != nil || !r.rows.Next() {
		r.cur = nil
		return false
	}
	if err := r.rows.Scan(r.ptrs...); err != nil {
		r.err = fmt.Errorf("store: scan row: %w", err)
		r.cur = nil
		return false
	}
	cur := make([]any, len(r.ptrs))
	for i, p := range r.ptrs {
		cur[i] = normalizeNative(reflect.ValueOf(p).Elem().Interface())
	}
	r.cur = cur
	return true
}

// Scan implements Rows.
func (r *serverRows) Scan(dest ...any) error { return scanRow(r.cols, r.cur, dest) }

// Columns implements Rows.
func (r *serverRows) Columns() []string { return r.cols }

// Err implements Rows.
func (r *serverRows) Err() error {
	if r.err != nil {
		return r.err
	}
	if err := r.rows.Err(); err != nil {
		return fmt.Errorf("store: rows: %w", classifyServerError(err))
	}
	return nil
}

// Close implements Rows.
func (r *serverRows) Close() error {
	err := r.rows.Close()
	if r.done != nil {
		r.done()
	}
	return err
}

// sortedMap must satisfy clickhouse-go's ordered-map interface, or the
// driver would reject it instead of appending it in order.
var _ column.IterableOrderedMap = (*sortedMap)(nil)
