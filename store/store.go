package store

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Engine names returned by Conn.Engine.
const (
	EngineEmbedded = "embedded"
	EngineServer   = "server"
)

// DefaultDatabase is used when Config.Database is empty.
const DefaultDatabase = "meterline"

// ErrUnavailable marks failures of the connection rather than of the
// statement: the server is unreachable, the embedded library cannot be
// loaded, its data directory is locked by another process, or the engine
// reported a transient condition (memory limit, too many parts, timeouts).
// Callers may retry these with backoff; other errors will fail again.
var ErrUnavailable = errors.New("clickhouse unavailable")

// Config selects and configures the engine. An empty Addr selects the
// embedded engine.
type Config struct {
	// Addr lists server host:port pairs for the native protocol (9000, or
	// 9440 with TLS). Empty selects the embedded engine.
	Addr []string
	// Database is created if missing and used for unqualified names.
	// Default DefaultDatabase.
	Database string
	// Username and Password authenticate to the server (server only).
	Username, Password string
	// TLS enables TLS to the server; nil means plaintext (server only).
	TLS *tls.Config
	// DataDir is the embedded engine's data directory (embedded only,
	// required). One process can hold only one directory at a time.
	DataDir string
	// MaxMemoryBytes caps the embedded engine's memory
	// (max_server_memory_usage); 0 keeps the engine default of 90 % of RAM.
	// It takes effect only on the Open that boots the engine.
	MaxMemoryBytes int64
	// Encryption turns on encryption at rest of the embedded engine's data
	// (embedded only; nil, the default, stores it unencrypted). It takes
	// effect only on the Open that boots the engine. A server encrypts
	// with its own storage configuration (see StorageConfigXML and
	// MigrateOptions.StoragePolicy).
	Encryption *Encryption
	// Backup gives the embedded engine the backups directory (embedded
	// only; nil, the default, gives it none, and BACKUP and RESTORE are
	// refused). It takes effect only on the Open that boots the engine.
	// A server needs the disk meterline_backup in its own configuration.
	Backup *BackupStore
	// DialTimeout bounds connecting to the server (server only; default 5s).
	DialTimeout time.Duration
	// MaxOpenConns bounds the connections one Conn uses concurrently
	// (default 4 embedded, 8 server). Embedded connections run queries in
	// parallel, so this is also the embedded engine's query concurrency.
	MaxOpenConns int
	// Interactive configures the connections and limits of interactive
	// reads (see Interactive); they come on top of MaxOpenConns.
	Interactive InteractiveConfig
	// Cluster names the server's cluster (remote_servers) that the
	// schema is laid out on (server only; see Layout and docs/cluster.md).
	// The database is then created ON CLUSTER, inserts into Distributed
	// tables return only once every shard has stored its rows, and the
	// mutations Meterline runs (ALTER TABLE ... DELETE, UPDATE, MODIFY
	// TTL) on a sharded table go to its local tables ON CLUSTER. Default
	// empty: a single node.
	Cluster string
}

// Param binds a value to a {name:Type} placeholder of a statement.
// Supported value types: string, int, int8, int16, int32, int64, uint,
// uint8, uint16, uint32, uint64, float32, float64, bool, time.Time and
// []string. Strings must not contain NUL bytes.
type Param struct {
	Name  string
	Value any
}

// P is shorthand for Param{Name: name, Value: v}.
func P(name string, v any) Param { return Param{Name: name, Value: v} }

// InsertOptions tunes one Insert.
type InsertOptions struct {
	// DedupToken sets insert_deduplication_token: a retried batch with the
	// same token and identical content is stored once, provided the table
	// has non_replicated_deduplication_window (or is replicated). It also
	// sets deduplicate_blocks_in_dependent_materialized_views=1 so that
	// materialized views attached to the table do not count the retry.
	DedupToken string
}

// Conn is the small seam between Meterline and ClickHouse. Both engines
// run the same SQL. All methods are safe for concurrent use.
type Conn interface {
	// Exec runs one statement that returns no rows (DDL, INSERT ...
	// SELECT, ALTER, OPTIMIZE). Do not use SET: each call may run on a
	// different pooled connection, so put a SETTINGS clause in the
	// statement instead.
	Exec(ctx context.Context, query string, params ...Param) error
	// Query runs one SELECT. The caller must Close the Rows.
	Query(ctx context.Context, query string, params ...Param) (Rows, error)
	// Insert stores rows (each a slice of values in columns order) into
	// table in one block.
	Insert(ctx context.Context, table string, columns []string, rows [][]any, opts InsertOptions) error
	// Ping checks that the engine answers.
	Ping(ctx context.Context) error
	// Engine returns EngineEmbedded or EngineServer.
	Engine() string
	// Close releases the connections. For the embedded engine, closing
	// the last open Conn shuts the engine down and unlocks DataDir.
	Close() error
}

// Rows iterates over a query result, like database/sql.Rows.
type Rows interface {
	// Next advances to the next row; false at the end or on error.
	Next() bool
	// Scan copies the current row into dest. Accepted destinations:
	// *string, *int64, *int, *int32, *uint64, *uint16, *float64, *bool,
	// *time.Time, *map[string]string, *[]string and *any. Numbers are
	// converted between widths with range checks; NULL scans as the zero
	// value (nil for *any).
	Scan(dest ...any) error
	// Columns returns the result's column names.
	Columns() []string
	// Err returns the error that ended iteration, if any.
	Err() error
	// Close releases the result. It is safe to call more than once.
	Close() error
}

// QueryError is a statement the engine rejected. Its Code is ClickHouse's
// error code (0 when unknown). errors.Is(err, ErrUnavailable) holds for the
// codes that describe a transient condition.
type QueryError struct {
	Code    int
	Message string
}

// Error implements error.
func (e *QueryError) Error() string {
	return e.Message
}

// Unwrap lets errors.Is(err, ErrUnavailable) see transient engine codes.
func (e *QueryError) Unwrap() error {
	if transientCodes[e.Code] {
		return ErrUnavailable
	}
	return nil
}

// transientCodes are ClickHouse error codes worth retrying: they describe
// load or connectivity, not the statement.
var transientCodes = map[int]bool{
	159: true, // TIMEOUT_EXCEEDED
	202: true, // TOO_MANY_SIMULTANEOUS_QUERIES
	203: true, // NO_FREE_CONNECTION
	209: true, // SOCKET_TIMEOUT
	210: true, // NETWORK_ERROR
	225: true, // NO_ZOOKEEPER
	241: true, // MEMORY_LIMIT_EXCEEDED
	242: true, // TABLE_IS_READ_ONLY
	252: true, // TOO_MANY_PARTS
	279: true, // ALL_CONNECTION_TRIES_FAILED (a shard of a Distributed table is down)
	285: true, // TOO_FEW_LIVE_REPLICAS
	286: true, // UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE
	319: true, // UNKNOWN_STATUS_OF_INSERT
	999: true, // KEEPER_EXCEPTION
}

// Open connects to the engine that cfg selects. For the server engine it
// creates cfg.Database if missing; for the embedded engine it boots the
// engine in cfg.DataDir (once per process) and creates the database.
// log may be nil.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (Conn, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Database == "" {
		cfg.Database = DefaultDatabase
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("store: open: %w", err)
	}
	if len(cfg.Addr) == 0 {
		if cfg.Cluster != "" {
			return nil, fmt.Errorf("store: open: cluster %q needs a ClickHouse server (Addr); the embedded engine is a single node", cfg.Cluster)
		}
		return openEmbedded(ctx, cfg, log)
	}
	return openServer(ctx, cfg, log)
}

// engineCodeRe extracts ClickHouse's error code from an exception text.
var engineCodeRe = regexp.MustCompile(`Code: (\d+)\.`)

// engineError turns an engine error text into a *QueryError.
func engineError(msg string) error {
	msg = strings.TrimSpace(msg)
	code := 0
	if m := engineCodeRe.FindStringSubmatch(msg); m != nil {
		code, _ = strconv.Atoi(m[1])
	}
	return &QueryError{Code: code, Message: msg}
}

// snippet shortens a statement for error messages.
func snippet(q string) string {
	q = strings.Join(strings.Fields(q), " ")
	if len(q) > 120 {
		q = q[:117] + "..."
	}
	return q
}

// insertHead builds "INSERT INTO t (cols) [SETTINGS ...]".
func insertHead(table string, columns []string, opts InsertOptions) (string, error) {
	qt, err := quoteTable(table)
	if err != nil {
		return "", fmt.Errorf("store: insert: table: %w", err)
	}
	if len(columns) == 0 {
		return "", fmt.Errorf("store: insert into %s: no columns", table)
	}
	qcols := make([]string, len(columns))
	for i, col := range columns {
		if qcols[i], err = quoteName(col); err != nil {
			return "", fmt.Errorf("store: insert into %s: column: %w", table, err)
		}
	}
	head := "INSERT INTO " + qt + " (" + strings.Join(qcols, ", ") + ")"
	settings, err := insertSettings(table, opts)
	if settings != "" {
		head += " SETTINGS " + settings
	}
	return head, err
}

// insertSettings returns the SETTINGS list of an insert ("" for none).
func insertSettings(table string, opts InsertOptions) (string, error) {
	if opts.DedupToken == "" {
		return "", nil
	}
	tok, err := quoteString(opts.DedupToken)
	if err != nil {
		return "", fmt.Errorf("store: insert into %s: dedup token: %w", table, err)
	}
	return "insert_deduplication_token = " + tok + ", deduplicate_blocks_in_dependent_materialized_views = 1", nil
}
