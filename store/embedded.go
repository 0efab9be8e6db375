//go:build (linux || darwin) && !noembedded

package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// EmbeddedBuilt tells whether this binary carries the embedded engine (it
// does unless built with the tag noembedded).
const EmbeddedBuilt = true

// defaultEmbeddedConns is the default pool size of one embedded Conn.
// Connections on the same path run queries in parallel inside the engine,
// and each statement has a fixed cost of milliseconds, so a few
// connections keep readers from queuing behind a large insert.
const defaultEmbeddedConns = 4

// resultFormat is the output format of embedded queries: one JSON array per
// line, with the column names and types first. The types let Scan parse
// dates, decimals and maps exactly; one value per line keeps parsing
// incremental.
const resultFormat = "JSONCompactEachRowWithNamesAndTypes"

// connectionSettings run on every new embedded connection. They persist per
// connection (verified), so running them once per connection is enough.
var connectionSettings = []string{
	// Unquoted 64-bit integers keep json.Number exact and typed.
	"SET output_format_json_quote_64bit_integers = 0",
	// nan and inf are written as strings instead of null.
	"SET output_format_json_quote_denormals = 1",
	// Same zone on every machine and on the server engine; see doc.go.
	"SET session_timezone = 'UTC'",
}

// engineState is the process-wide embedded engine. libchdb holds one data
// directory per process; the anchor connection keeps the engine booted for
// as long as any Conn is open, because closing the last connection shuts
// the engine down (and repeated shutdown and boot is fragile).
type engineState struct {
	path   string
	lib    *chdbLib
	anchor *rawConn
	refs   int
	// encrypted tells whether the engine booted with encryption at rest.
	encrypted bool
	// backup is the backup store the engine booted with ("" for none).
	backup string
}

var (
	engineMu sync.Mutex
	engine   *engineState

	// connectMu serialises chdb_connect so that signal snapshots taken by
	// concurrent connects never capture each other's half-installed state.
	connectMu sync.Mutex
)

// guardedConnect opens a raw connection and restores the Go runtime's
// signal handlers that the library replaced (see signals_linux.go).
func guardedConnect(lib *chdbLib, args []string, log *slog.Logger) (*rawConn, error) {
	connectMu.Lock()
	defer connectMu.Unlock()
	snap := saveSignals()
	c, err := connectRaw(lib, args)
	restored, rerr := snap.restore()
	if rerr != nil {
		if c != nil {
			c.close()
		}
		return nil, fmt.Errorf("store: restore signal handlers after opening the embedded engine: %w", rerr)
	}
	if len(restored) > 0 {
		log.Debug("restored Go signal handlers replaced by the embedded engine", "signals", restored)
	}
	return c, err
}

// guardedLoad loads the library with the same signal protection, in case
// its static initialisers install handlers.
func guardedLoad() (*chdbLib, error) {
	connectMu.Lock()
	defer connectMu.Unlock()
	snap := saveSignals()
	lib, err := loadLib()
	if _, rerr := snap.restore(); rerr != nil && err == nil {
		err = fmt.Errorf("store: restore signal handlers after loading the embedded engine: %w", rerr)
	}
	return lib, err
}

// acquireEngine boots the engine at path, or joins it if it already runs
// there. A different path is an error: the library would otherwise refuse
// the connection (or, through chdb-go's Session, silently hand back the
// first directory).
func acquireEngine(path string, maxMemory int64, enc *Encryption, backup *BackupStore, log *slog.Logger) (*engineState, error) {
	engineMu.Lock()
	defer engineMu.Unlock()
	if engine != nil {
		if engine.path != path {
			return nil, fmt.Errorf("store: the embedded engine is already open at %q in this process; one process can use only one data directory at a time (asked for %q)", engine.path, path)
		}
		if maxMemory > 0 {
			log.Warn("embedded engine already running; MaxMemoryBytes applies only when it boots", "path", path)
		}
		if (enc != nil) != engine.encrypted {
			return nil, fmt.Errorf("store: the embedded engine already runs at %q with encryption %s; it cannot be switched without a restart", path, onOff(engine.encrypted))
		}
		if backup.id() != engine.backup {
			return nil, fmt.Errorf("store: the embedded engine already runs at %q with another backup store; it cannot be switched without a restart", path)
		}
		engine.refs++
		return engine, nil
	}
	lib, err := guardedLoad()
	if err != nil {
		return nil, err
	}
	// Refuse, before the engine touches anything, keys that do not fit
	// the files (the engine itself would fail half way through loading).
	if err := checkDataDir(path, enc); err != nil {
		return nil, err
	}
	args := []string{"--path=" + path}
	if maxMemory > 0 {
		args = append(args, "--max_server_memory_usage="+strconv.FormatInt(maxMemory, 10))
	}
	unsetKeys := func() {}
	if enc != nil || backup != nil {
		confPath, err := prepareBoot(path, enc, backup)
		if err != nil {
			return nil, err
		}
		args = append(args, "--config-file="+confPath)
		if unsetKeys, err = setKeyEnv(bootKeys(enc, backup)); err != nil {
			return nil, err
		}
	} else {
		_ = os.Remove(filepath.Join(path, storageConfigFile))
	}
	anchor, err := guardedConnect(lib, args, log)
	// The engine holds the keys in memory once it has booted.
	unsetKeys()
	if err != nil {
		hint := ""
		if enc != nil {
			hint = " (with encryption: the engine's stderr names the file it could not read)"
		}
		return nil, fmt.Errorf("%w: open embedded engine at %q: %v%s", ErrUnavailable, path, err, hint)
	}
	if enc != nil {
		if err := writeKeyRegistryFor(path, enc); err != nil {
			anchor.close()
			return nil, fmt.Errorf("store: record encryption key fingerprints: %w", err)
		}
	}
	engine = &engineState{path: path, lib: lib, anchor: anchor, refs: 1, encrypted: enc != nil, backup: backup.id()}
	log.Info("embedded ClickHouse engine started", "path", path, "max_memory_bytes", maxMemory, "encryption", onOff(enc != nil))
	return engine, nil
}

// prepareBoot removes the temporaries of a killed rotation and writes the
// engine configuration of the encrypted disk and of the backup store (no
// key in it).
func prepareBoot(path string, enc *Encryption, backup *BackupStore) (string, error) {
	conf, err := engineConfigXML(path, enc, backup)
	if err != nil {
		return "", err
	}
	confPath := filepath.Join(path, storageConfigFile)
	if err := writeFileAtomic(confPath, conf, 0o600); err != nil {
		return "", fmt.Errorf("store: engine configuration: %w", err)
	}
	return confPath, nil
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// releaseEngine drops one reference; the last one shuts the engine down.
func releaseEngine(e *engineState) {
	engineMu.Lock()
	defer engineMu.Unlock()
	e.refs--
	if e.refs == 0 {
		e.anchor.close()
		if engine == e {
			engine = nil
		}
	}
}

// embeddedConn is a Conn on the embedded engine: a pool of libchdb
// connections that all USE the same database.
type embeddedConn struct {
	eng  *engineState
	db   string
	log  *slog.Logger
	size int

	// slots is a semaphore of size pool slots; a checked-out connection is
	// used by one goroutine only, so a SET param_ and the statement that
	// reads it can never interleave with another caller's.
	slots chan struct{}
	// readSlots and readIdle are the pool of interactive reads, apart from
	// slots so that reads never hold a connection an insert waits for.
	inter     InteractiveConfig
	readSlots chan struct{}

	mu       sync.Mutex
	idle     []*rawConn
	readIdle []*rawConn
	closed   bool

	// forceSetParams makes the engine bind parameters with SET param_
	// even when chdb_query_with_params exists, so tests cover the fallback.
	forceSetParams bool
	// jsonInserts sends every insert as inline JSON (benchmarks compare).
	jsonInserts bool
	// fileInserts writes Native inserts to a file in nativeDir even where
	// a memory file exists (benchmarks compare).
	fileInserts bool

	// colTypes caches each table's column types (name -> type) for Native
	// inserts. DDL through this Conn and a failed Native insert drop it.
	typesMu  sync.Mutex
	colTypes map[string]map[string]string
}

func openEmbedded(ctx context.Context, cfg Config, log *slog.Logger) (Conn, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("store: embedded engine: Config.DataDir is required")
	}
	path, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("store: embedded engine: data directory: %w", err)
	}
	if err := os.MkdirAll(path, 0o750); err != nil {
		return nil, fmt.Errorf("store: embedded engine: create data directory: %w", err)
	}
	qdb, err := quoteName(cfg.Database)
	if err != nil {
		return nil, fmt.Errorf("store: database name: %w", err)
	}
	if err := cfg.Encryption.Validate(); err != nil {
		return nil, fmt.Errorf("store: encryption: %w", err)
	}
	if err := cfg.Backup.validate(); err != nil {
		return nil, fmt.Errorf("store: backup store: %w", err)
	}
	eng, err := acquireEngine(path, cfg.MaxMemoryBytes, cfg.Encryption, cfg.Backup, log)
	if err != nil {
		return nil, err
	}
	size := cfg.MaxOpenConns
	if size <= 0 {
		size = defaultEmbeddedConns
	}
	inter := cfg.Interactive.withDefaults()
	c := &embeddedConn{eng: eng, db: qdb, log: log, size: size, slots: make(chan struct{}, size),
		inter: inter, readSlots: make(chan struct{}, inter.Conns)}

	// Create the database on the anchor, which only ever runs under
	// engineMu, before any pooled connection tries to USE it.
	engineMu.Lock()
	res := eng.anchor.query([]byte("CREATE DATABASE IF NOT EXISTS "+qdb), "TabSeparated")
	if res.err != "" {
		clearStale(eng.anchor)
	}
	engineMu.Unlock()
	if res.err != "" {
		_ = c.Close()
		return nil, fmt.Errorf("store: create database %s: %w", qdb, engineError(res.err))
	}
	// Open one pooled connection now so that configuration errors surface
	// at Open rather than on the first query.
	if err := c.Ping(ctx); err != nil {
		_ = c.Close()
		return nil, err
	}
	removeStaleInsertFiles(nativeDir, 10*time.Minute, log)
	return c, nil
}

// removeStaleInsertFiles deletes Native insert files that a killed process
// left behind (in /dev/shm they hold memory). Only files older than age
// go: another live process's insert never takes that long.
func removeStaleInsertFiles(dir string, age time.Duration, log *slog.Logger) {
	paths, _ := filepath.Glob(filepath.Join(dir, "meterline-insert-*.native"))
	for _, p := range paths {
		if st, err := os.Stat(p); err == nil && time.Since(st.ModTime()) > age {
			if os.Remove(p) == nil {
				log.Info("removed a stale insert file", "path", p, "bytes", st.Size())
			}
		}
	}
}

// Engine implements Conn.
func (c *embeddedConn) Engine() string { return EngineEmbedded }

// newRaw opens and prepares one pooled connection; an interactive one
// also gets the read limits, which persist on the connection.
func (c *embeddedConn) newRaw(interactive bool) (*rawConn, error) {
	rc, err := guardedConnect(c.eng.lib, []string{"--path=" + c.eng.path}, c.log)
	if err != nil {
		return nil, fmt.Errorf("%w: embedded engine connection: %v", ErrUnavailable, err)
	}
	rc.interactive = interactive
	setup := append(append([]string(nil), connectionSettings...), "USE "+c.db)
	if interactive {
		for _, kv := range c.inter.settings() {
			lit, _ := quoteString(kv[1]) // digits, dots and letters: never NUL
			setup = append(setup, "SET "+kv[0]+" = "+lit)
		}
	}
	for _, q := range setup {
		if res := rc.query([]byte(q), "TabSeparated"); res.err != "" {
			rc.close()
			return nil, fmt.Errorf("store: prepare embedded connection (%s): %w", q, engineError(res.err))
		}
	}
	return rc, nil
}

// acquire checks a connection out of the pool, waiting for a free slot.
// An interactive ctx takes a connection of the interactive pool, waiting
// at most its QueueTimeout.
func (c *embeddedConn) acquire(ctx context.Context) (*rawConn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("%w: connection closed", ErrUnavailable)
	}
	interactive := IsInteractive(ctx)
	slots, idle := c.slots, &c.idle
	if interactive {
		slots, idle = c.readSlots, &c.readIdle
		if err := acquireSlot(ctx, slots, c.inter.QueueTimeout); err != nil {
			return nil, err
		}
	} else {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		<-slots
		return nil, fmt.Errorf("%w: connection closed", ErrUnavailable)
	}
	if n := len(*idle); n > 0 {
		rc := (*idle)[n-1]
		*idle = (*idle)[:n-1]
		c.mu.Unlock()
		return rc, nil
	}
	c.mu.Unlock()
	rc, err := c.newRaw(interactive)
	if err != nil {
		<-slots
		return nil, err
	}
	return rc, nil
}

// release returns a connection to its pool, or closes it if it is broken.
func (c *embeddedConn) release(rc *rawConn, broken bool) {
	slots, idle := c.slots, &c.idle
	if rc.interactive {
		slots, idle = c.readSlots, &c.readIdle
	}
	c.mu.Lock()
	if broken || c.closed {
		rc.close()
	} else {
		*idle = append(*idle, rc)
	}
	c.mu.Unlock()
	<-slots
}

// clearStale runs a no-op query after a failed one: otherwise the next
// query on the connection returns the failed query's partial output first
// (libchdb pitfall). It reports whether the connection is usable.
func clearStale(rc *rawConn) bool {
	return rc.query([]byte("SELECT 1 FORMAT Null"), "TabSeparated").err == ""
}

// run executes one statement on a checked-out connection, binding params.
func (c *embeddedConn) run(rc *rawConn, query []byte, format string, names, values []string) (chdbResult, bool) {
	var res chdbResult
	switch {
	case len(names) == 0:
		res = rc.query(query, format)
	case rc.lib.queryParamsN != nil && !c.forceSetParams:
		res = rc.queryParams(query, format, names, values)
	default:
		// Older libraries: SET param_<name> persists on this connection,
		// which is checked out to us alone until the statement has run.
		for i, name := range names {
			lit, err := quoteString(values[i])
			if err != nil { // cannot happen: values never hold NUL
				return chdbResult{err: err.Error()}, false
			}
			res = rc.query([]byte("SET param_"+name+" = "+lit), "TabSeparated")
			if res.err != "" {
				break
			}
		}
		if res.err == "" {
			res = rc.query(query, format)
		}
	}
	ok := true
	if res.err != "" {
		ok = clearStale(rc)
	}
	return res, ok
}

// Exec implements Conn. A statement that has started runs to completion:
// libchdb calls cannot be interrupted, so ctx is checked before it starts
// (and while waiting for a pooled connection) but not during.
func (c *embeddedConn) Exec(ctx context.Context, query string, params ...Param) error {
	names, values, err := encodeParams(params)
	if err != nil {
		return err
	}
	rc, err := c.acquire(ctx)
	if err != nil {
		return fmt.Errorf("store: exec %q: %w", snippet(query), err)
	}
	res, ok := c.run(rc, []byte(query), "TabSeparated", names, values)
	c.release(rc, !ok)
	if isDDL(query) {
		c.forgetTypes("")
	}
	if res.err != "" {
		return fmt.Errorf("store: exec %q: %w", snippet(query), engineError(res.err))
	}
	return nil
}

// Query implements Conn. The whole result is materialised in memory by the
// engine before the first row is returned, so bound large results with
// LIMIT. If ctx ends while the query runs, its result is discarded.
func (c *embeddedConn) Query(ctx context.Context, query string, params ...Param) (Rows, error) {
	names, values, err := encodeParams(params)
	if err != nil {
		return nil, err
	}
	rc, err := c.acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: query %q: %w", snippet(query), err)
	}
	res, ok := c.run(rc, []byte(query), resultFormat, names, values)
	c.release(rc, !ok)
	if res.err != "" {
		return nil, fmt.Errorf("store: query %q: %w", snippet(query), engineError(res.err))
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("store: query %q: %w", snippet(query), err)
	}
	rows, err := newJSONRows(res.data)
	if err != nil {
		return nil, fmt.Errorf("store: query %q: %w", snippet(query), err)
	}
	return rows, nil
}

// Insert implements Conn. Rows go to the engine as a Native file
// (insertNative) when every column has a Native encoder; otherwise they are
// sent inline as JSONCompactEachRow: JSON escapes newlines and NULs inside
// strings, so the inline data can never contain the blank line or NUL byte
// at which libchdb stops reading it. Like Exec, a started insert is not
// interrupted by ctx.
func (c *embeddedConn) Insert(ctx context.Context, table string, columns []string, rows [][]any, opts InsertOptions) error {
	if len(rows) == 0 {
		return nil
	}
	head, err := insertHead(table, columns, opts)
	if err != nil {
		return err
	}
	for i, row := range rows {
		if len(row) != len(columns) {
			return fmt.Errorf("store: insert into %s: row %d has %d values for %d columns", table, i, len(row), len(columns))
		}
	}
	if !c.jsonInserts {
		types, ok, err := c.nativeTypes(ctx, table, columns)
		if err != nil {
			return fmt.Errorf("store: insert into %s: %w", table, err)
		}
		if ok {
			err := c.insertNative(ctx, table, columns, types, rows, opts)
			if !errors.Is(err, errNativeUnsupported) {
				return err
			}
		}
	}
	buf := bytes.NewBuffer(make([]byte, 0, len(head)+1+len(rows)*64*len(columns)))
	buf.WriteString(head)
	buf.WriteString(" FORMAT JSONCompactEachRow\n")
	for i, row := range rows {
		buf.WriteByte('[')
		for j, v := range row {
			if j > 0 {
				buf.WriteByte(',')
			}
			if err := appendJSONValue(buf, v); err != nil {
				return fmt.Errorf("store: insert into %s: row %d column %q: %w", table, i, columns[j], err)
			}
		}
		buf.WriteString("]\n")
	}
	rc, err := c.acquire(ctx)
	if err != nil {
		return fmt.Errorf("store: insert into %s: %w", table, err)
	}
	res, ok := c.run(rc, buf.Bytes(), "TabSeparated", nil, nil)
	c.release(rc, !ok)
	return insertResult(table, res, len(rows))
}

// insertResult turns an insert's outcome into an error.
func insertResult(table string, res chdbResult, rows int) error {
	if res.err != "" {
		return fmt.Errorf("store: insert into %s: %w", table, engineError(res.err))
	}
	// A deduplicated retry still reports the full count, and materialized
	// views add to it, so only a short count is suspicious.
	if res.hasWritten && res.rowsWritten > 0 && res.rowsWritten < uint64(rows) {
		return fmt.Errorf("store: insert into %s: engine wrote %d of %d rows", table, res.rowsWritten, rows)
	}
	return nil
}

// isDDL tells whether a statement may change a table's columns.
func isDDL(query string) bool {
	f := strings.Fields(query)
	if len(f) == 0 {
		return false
	}
	switch strings.ToUpper(f[0]) {
	case "ALTER", "CREATE", "DROP", "RENAME", "EXCHANGE", "ATTACH", "DETACH":
		return true
	}
	return false
}

// forgetTypes drops the cached column types of table ("" drops all).
func (c *embeddedConn) forgetTypes(table string) {
	c.typesMu.Lock()
	defer c.typesMu.Unlock()
	if table == "" {
		c.colTypes = nil
	} else {
		delete(c.colTypes, table)
	}
}

// nativeTypes returns the Native encoders of the columns, or false when a
// column's type has none (the insert then goes as JSON).
func (c *embeddedConn) nativeTypes(ctx context.Context, table string, columns []string) ([]nativeType, bool, error) {
	if strings.ContainsAny(table, ".`") {
		return nil, false, nil
	}
	c.typesMu.Lock()
	byName, ok := c.colTypes[table]
	c.typesMu.Unlock()
	if !ok {
		rows, err := c.Query(ctx, "SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = {t:String}", P("t", table))
		if err != nil {
			return nil, false, err
		}
		byName = map[string]string{}
		for rows.Next() {
			var n, t string
			if err := rows.Scan(&n, &t); err != nil {
				rows.Close()
				return nil, false, err
			}
			byName[n] = t
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, false, err
		}
		c.typesMu.Lock()
		if c.colTypes == nil {
			c.colTypes = map[string]map[string]string{}
		}
		c.colTypes[table] = byName
		c.typesMu.Unlock()
	}
	out := make([]nativeType, len(columns))
	for i, col := range columns {
		t, ok := parseNativeType(byName[col])
		if !ok {
			return nil, false, nil
		}
		out[i] = t
	}
	return out, true, nil
}

// nativeDir holds the insert files where no memory file (memFile) can be
// made: memory-backed where there is one.
var nativeDir = func() string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		if f, err := os.CreateTemp("/dev/shm", "meterline-probe-*"); err == nil {
			f.Close()
			os.Remove(f.Name())
			return "/dev/shm"
		}
	}
	return os.TempDir()
}()

// insertSource puts the Native data where FROM INFILE reads it: a memory
// file (memfd, read by the engine through /proc/self/fd), which never
// reaches a file system, where the platform has one; otherwise a file in
// nativeDir, unless the data is encrypted at rest (errNoMemFile: nothing
// may be written in plain then). done releases it.
func (c *embeddedConn) insertSource(data []byte) (path string, done func(), err error) {
	if !c.fileInserts {
		path, done, err = memFile(data)
		if !errors.Is(err, errNoMemFile) {
			return path, done, err
		}
		if c.eng.encrypted {
			return "", nil, errNoMemFile
		}
	}
	f, err := os.CreateTemp(nativeDir, "meterline-insert-*.native")
	if err != nil {
		return "", nil, err
	}
	path = f.Name()
	done = func() { os.Remove(path) }
	if _, err := f.Write(data); err != nil {
		f.Close()
		done()
		return "", nil, fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		done()
		return "", nil, fmt.Errorf("writing %s: %w", path, err)
	}
	return path, done, nil
}

// insertNative writes rows to a Native file and inserts it with FROM INFILE.
// errNativeUnsupported means nothing was sent: a value did not fit its
// column, and the caller falls back to JSON.
func (c *embeddedConn) insertNative(ctx context.Context, table string, columns []string, types []nativeType, rows [][]any, opts InsertOptions) error {
	data, err := nativeBlock(make([]byte, 0, len(rows)*24*len(columns)), columns, types, rows)
	if err != nil {
		return err
	}
	path, done, err := c.insertSource(data)
	if errors.Is(err, errNoMemFile) {
		// Encrypted at rest and no memory file here: the data must not
		// touch a file system in plain, so it goes inline as JSON.
		return errNativeUnsupported
	}
	if err != nil {
		return fmt.Errorf("store: insert into %s: %w", table, err)
	}
	defer done()
	qpath, err := quoteString(path)
	if err != nil {
		return err
	}
	// INSERT ... FROM INFILE takes its SETTINGS after the file name.
	into, err := insertHead(table, columns, InsertOptions{})
	if err != nil {
		return err
	}
	q := into + " FROM INFILE " + qpath
	if settings, _ := insertSettings(table, opts); settings != "" {
		q += " SETTINGS " + settings
	}
	rc, err := c.acquire(ctx)
	if err != nil {
		return fmt.Errorf("store: insert into %s: %w", table, err)
	}
	res, ok := c.run(rc, []byte(q+" FORMAT Native"), "TabSeparated", nil, nil)
	c.release(rc, !ok)
	if res.err != "" {
		// The table may have changed under a cached type: look again next time.
		c.forgetTypes(table)
	}
	return insertResult(table, res, len(rows))
}

// Ping implements Conn.
func (c *embeddedConn) Ping(ctx context.Context) error {
	return c.Exec(ctx, "SELECT 1")
}

// Close implements Conn. It waits for statements in flight.
func (c *embeddedConn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	// Taking every slot waits until all checked-out connections are back.
	for range c.size {
		c.slots <- struct{}{}
	}
	for range c.inter.Conns {
		c.readSlots <- struct{}{}
	}
	c.mu.Lock()
	for _, rc := range append(c.idle, c.readIdle...) {
		rc.close()
	}
	c.idle, c.readIdle = nil, nil
	c.mu.Unlock()
	// Free the slots again so that later calls fail fast in acquire
	// instead of waiting for a slot forever.
	for range c.size {
		<-c.slots
	}
	for range c.inter.Conns {
		<-c.readSlots
	}
	releaseEngine(c.eng)
	return nil
}

// jsonRows iterates over a JSONCompactEachRowWithNamesAndTypes result.
type jsonRows struct {
	cols  []string
	types []string
	rest  []byte
	cur   []any
	err   error
}

func newJSONRows(data []byte) (*jsonRows, error) {
	r := &jsonRows{rest: data}
	if len(bytes.TrimSpace(data)) == 0 {
		// Statements without a result (DDL run through Query).
		return r, nil
	}
	var line []byte
	line, r.rest = nextLine(r.rest)
	if err := json.Unmarshal(line, &r.cols); err != nil {
		return nil, fmt.Errorf("decode column names: %w", err)
	}
	line, r.rest = nextLine(r.rest)
	if err := json.Unmarshal(line, &r.types); err != nil {
		return nil, fmt.Errorf("decode column types: %w", err)
	}
	if len(r.types) != len(r.cols) {
		return nil, fmt.Errorf("result has %d names but %d types", len(r.cols), len(r.types))
	}
	return r, nil
}

func nextLine(b []byte) (line, rest []byte) {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		return b[:i], b[i+1:]
	}
	return b, nil
}

// Next implements Rows.
func (r *jsonRows) Next() bool {
	if r.err != nil {
		return false
	}
	for len(r.rest) > 0 {
		var line []byte
		line, r.rest = nextLine(r.rest)
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.UseNumber()
		var raw []any
		if err := dec.Decode(&raw); err != nil {
			r.err = fmt.Errorf("store: decode row: %w", err)
			return false
		}
		if len(raw) != len(r.cols) {
			r.err = fmt.Errorf("store: row has %d values for %d columns", len(raw), len(r.cols))
			return false
		}
		for i, v := range raw {
			n, err := normalizeJSON(v, r.types[i])
			if err != nil {
				r.err = fmt.Errorf("store: column %q (%s): %w", r.cols[i], r.types[i], err)
				return false
			}
			raw[i] = n
		}
		r.cur = raw
		return true
	}
	r.cur = nil
	return false
}

// Scan implements Rows.
func (r *jsonRows) Scan(dest ...any) error { return scanRow(r.cols, r.cur, dest) }

// Columns implements Rows.
func (r *jsonRows) Columns() []string { return r.cols }

// Err implements Rows.
func (r *jsonRows) Err() error { return r.err }

// Close implements Rows. The engine's result was already freed.
func (r *jsonRows) Close() error {
	r.rest, r.cur = nil, nil
	return nil
}

// embeddedBackupID returns the id of the backup store an embedded Conn's
// engine booted with ("" for none); ok is false for other Conns.
func embeddedBackupID(c Conn) (id string, ok bool) {
	ec, ok := c.(*embeddedConn)
	if !ok {
		return "", false
	}
	return ec.eng.backup, true
}
