// Package store is Meterline's small seam to ClickHouse. One Conn
// interface has two engines that run the same SQL: a ClickHouse server
// through clickhouse-go's native protocol (Config.Addr set), and the
// embedded engine, chDB's libchdb loaded into the process (Config.Addr
// empty). Statements bind values only through ClickHouse's {name:Type}
// placeholders; Migrate applies the versioned files of package schemas.
//
// # Errors
//
// Errors wrap ErrUnavailable when retrying may help (server unreachable,
// library missing, data directory locked, transient engine codes such as
// MEMORY_LIMIT_EXCEEDED or TOO_MANY_PARTS); statements the engine rejects
// come back as *QueryError with ClickHouse's code.
//
// # Embedded engine: what callers must know
//
//   - libchdb is loaded lazily by this package (through purego, no cgo)
//     from CHDB_LIB_PATH when set, else from where deploy/install.sh puts
//     it ($METERLINE_CACHE/chdb/<version>/, the repository's .cache next
//     to the executable's directory), else from the system library path;
//     the version is pinned in chdb.version, which deploy/lib.sh reads too.
//     We do not import chdb-go's chdb-purego package: its init panics when
//     the library is missing, which would crash every binary and test that
//     imports store, even with a server configured.
//   - One data directory per process. A second Open with a different
//     DataDir fails while any Conn is open; Opens of the same directory
//     share the engine (each Conn has its own pool and database). Closing
//     the last Conn shuts the engine down and unlocks the directory.
//     Another process on the same directory gets ErrUnavailable.
//   - Opening a connection replaces Go's handlers for SIGSEGV, SIGBUS,
//     SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS and SIGTSTP, which turns a
//     nil dereference into a hang or crash instead of a panic. Every
//     connect here saves the standard signals' handlers and restores the
//     ones that changed (Linux). Code that calls libchdb by any other path
//     must do the same.
//   - After a failed statement the next one on that connection would
//     return the failed one's partial output; each failure is followed by
//     "SELECT 1 FORMAT Null" on the same connection to clear it.
//   - Parameters are bound with chdb_query_with_params_n (values never
//     enter the SQL text); a library without it falls back to
//     SET param_<name> on the checked-out connection. Parameter values use
//     ClickHouse's escaped text format: a raw tab or newline is rejected by
//     the engine and a bare \N means NULL, which is why they are escaped.
//     NUL bytes in string parameters are refused.
//   - A statement cannot be interrupted: ctx is checked while waiting for a
//     pooled connection and before the call, not during it. A Query whose
//     ctx ends meanwhile discards its result; an Exec or Insert that
//     started has happened, and returns nil.
//   - Query results are materialised whole by the engine (JSON, one row per
//     line, then parsed lazily): bound large results with LIMIT.
//   - Inserts are written in ClickHouse's Native format (columns in
//     binary) and read with INSERT ... FROM INFILE ... FORMAT Native, since
//     binary data cannot be inlined (inline data ends at the first blank
//     line and NUL byte). The data goes to an anonymous memory file
//     (memfd_create, read as /proc/self/fd/N), so nothing reaches a file
//     system; without memfd (not Linux) to a file in /dev/shm where it
//     exists, unless the data is encrypted at rest, when such inserts go
//     inline as JSON instead. A column type or a value the Native encoder
//     cannot write makes the insert fall back to inline
//     JSONCompactEachRow, whose escaping keeps the data free of both. Each
//     insert costs ~15 ms fixed, so batch 10k+ rows. Map values are written
//     with sorted keys (both engines and both formats): ClickHouse keeps a
//     Map's order, and a retried batch must be byte-identical for
//     insert_deduplication_token to recognise it.
//   - Encryption (Config.Encryption) redefines the engine's default
//     storage policy as an encrypted disk, so every table is encrypted
//     whatever its DDL; the keys reach the engine through its C
//     environment for the moment it boots, and a start whose keys do not
//     fit the files' headers is refused before the engine starts.
//   - A query string holding two statements runs both on the embedded
//     engine (the server refuses it): pass one statement per call, and
//     never build statements from input.
//   - The engine silently coerces out-of-range values (status 70000 is
//     stored as 4464): callers validate before inserting.
//   - Both engines run with session_timezone = 'UTC', so functions of
//     DateTime values without an explicit zone agree across machines.
//   - Strings are read back through encoding/json, so invalid UTF-8 in a
//     stored string comes back with U+FFFD replacements.
package store
