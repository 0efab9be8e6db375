//go:build (linux || darwin) && !noembedded

package store

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"unsafe"

	"github.com/ebitengine/purego"
)

// chdbLib is a minimal run-time binding to libchdb's C API.
//
// We do not import github.com/chdb-io/chdb-go/chdb-purego: its package init
// dlopens the library and panics when it is missing, so every binary and test
// that imports store (even one that only talks to a ClickHouse server) would
// crash on a machine without the 560 MB library. Binding the handful of
// functions we need ourselves lets the library load lazily on the first
// embedded Open, and a missing library becomes an ErrUnavailable error.
type chdbLib struct {
	connect     func(argc int32, argv **byte) unsafe.Pointer
	closeConn   func(conn unsafe.Pointer)
	queryN      func(conn unsafe.Pointer, query *byte, queryLen uintptr, format *byte, formatLen uintptr) unsafe.Pointer
	destroy     func(res unsafe.Pointer)
	buffer      func(res unsafe.Pointer) unsafe.Pointer
	length      func(res unsafe.Pointer) uintptr
	errorMsg    func(res unsafe.Pointer) unsafe.Pointer
	rowsWritten func(res unsafe.Pointer) uint64

	// queryParamsN binds {name:Type} parameters server-side for one call.
	// It is nil on libraries older than the function; the engine then falls
	// back to SET param_<name> on the same connection.
	queryParamsN func(conn unsafe.Pointer, query *byte, queryLen uintptr, format *byte, formatLen uintptr,
		names **byte, nameLens *uintptr, values **byte, valueLens *uintptr, count uintptr) unsafe.Pointer
}

var (
	libOnce   sync.Once
	libLoaded *chdbLib
	libErr    error
)

// loadLib loads libchdb once per process. Loading runs the library's static
// initialisers, which may touch signal handlers too, so the caller wraps it
// in the same save/restore as the first connect.
func loadLib() (*chdbLib, error) {
	libOnce.Do(func() {
		search := processLibSearch()
		found := search.find()
		path := found.path
		h, err := purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_GLOBAL)
		if err != nil {
			libErr = search.notFound(found, err)
			return
		}
		l := &chdbLib{}
		required := []struct {
			fn   any
			name string
		}{
			{&l.connect, "chdb_connect"},
			{&l.closeConn, "chdb_close_conn"},
			{&l.queryN, "chdb_query_n"},
			{&l.destroy, "chdb_destroy_query_result"},
			{&l.buffer, "chdb_result_buffer"},
			{&l.length, "chdb_result_length"},
			{&l.errorMsg, "chdb_result_error"},
		}
		for _, r := range required {
			sym, err := purego.Dlsym(h, r.name)
			if err != nil {
				libErr = fmt.Errorf("%w: embedded ClickHouse library %q lacks %s (too old?)", ErrUnavailable, path, r.name)
				return
			}
			purego.RegisterFunc(r.fn, sym)
		}
		if sym, err := purego.Dlsym(h, "chdb_query_with_params_n"); err == nil {
			purego.RegisterFunc(&l.queryParamsN, sym)
		}
		if sym, err := purego.Dlsym(h, "chdb_result_rows_written"); err == nil {
			purego.RegisterFunc(&l.rowsWritten, sym)
		}
		libLoaded = l
	})
	return libLoaded, libErr
}

// cbytes copies s into C-style memory: NUL-terminated, and never empty, so
// the pointer is valid even for "" (chdb_query_with_params_n rejects null
// pointers, including for empty values). The slice must be kept alive until
// the C call returns.
func cbytes(s []byte) []byte {
	b := make([]byte, len(s)+1)
	copy(b, s)
	return b
}

// goString copies a NUL-terminated C string.
func goString(p unsafe.Pointer) string {
	if p == nil {
		return ""
	}
	n := 0
	for *(*byte)(unsafe.Add(p, n)) != 0 {
		n++
	}
	return string(unsafe.Slice((*byte)(p), n))
}

// chdbResult is the outcome of one C query: the output copied into Go
// memory (the C result is always freed before this is returned, because
// unfreed results leak), the error text and the written-row count.
type chdbResult struct {
	data        []byte
	err         string
	rowsWritten uint64
	hasWritten  bool
}

// takeResult copies what we need out of a C result and frees it.
func (l *chdbLib) takeResult(res unsafe.Pointer) chdbResult {
	if res == nil {
		// Older libraries return NULL for "no output"; that is success.
		return chdbResult{}
	}
	defer l.destroy(res)
	var out chdbResult
	out.err = goString(l.errorMsg(res))
	if n := l.length(res); n > 0 {
		if buf := l.buffer(res); buf != nil {
			out.data = make([]byte, n)
			copy(out.data, unsafe.Slice((*byte)(buf), n))
		}
	}
	if l.rowsWritten != nil {
		out.rowsWritten = l.rowsWritten(res)
		out.hasWritten = true
	}
	return out
}

// rawConn is one libchdb connection handle.
type rawConn struct {
	lib    *chdbLib
	handle unsafe.Pointer // chdb_connection* as returned by chdb_connect
	// interactive marks a connection of the interactive-read pool, which
	// carries the read limits as connection settings.
	interactive bool
}

// connectRaw opens one connection with the given command-line style
// arguments (argv[0] is added here).
func connectRaw(l *chdbLib, args []string) (*rawConn, error) {
	argv := append([]string{"clickhouse"}, args...)
	keep := make([][]byte, len(argv))
	ptrs := make([]*byte, len(argv))
	for i, a := range argv {
		keep[i] = cbytes([]byte(a))
		ptrs[i] = &keep[i][0]
	}
	h := l.connect(int32(len(ptrs)), &ptrs[0])
	runtime.KeepAlive(keep)
	runtime.KeepAlive(ptrs)
	if h == nil || *(*unsafe.Pointer)(h) == nil {
		return nil, errors.New("chdb_connect returned no connection (is the data directory locked by another process? see the engine's stderr)")
	}
	return &rawConn{lib: l, handle: h}, nil
}

// conn returns the chdb_connection value that the query functions take.
func (c *rawConn) conn() unsafe.Pointer { return *(*unsafe.Pointer)(c.handle) }

// query runs one statement. format is an output format name.
func (c *rawConn) query(query []byte, format string) chdbResult {
	q, f := cbytes(query), cbytes([]byte(format))
	res := c.lib.queryN(c.conn(), &q[0], uintptr(len(query)), &f[0], uintptr(len(format)))
	runtime.KeepAlive(q)
	runtime.KeepAlive(f)
	return c.lib.takeResult(res)
}

// queryParams runs one statement with server-side bound parameters.
// The caller checks lib.queryParamsN != nil.
func (c *rawConn) queryParams(query []byte, format string, names, values []string) chdbResult {
	q, f := cbytes(query), cbytes([]byte(format))
	n := len(names)
	keep := make([][]byte, 0, 2*n)
	namePtrs := make([]*byte, n+1) // +1 so &x[0] is valid when n == 0
	valuePtrs := make([]*byte, n+1)
	nameLens := make([]uintptr, n+1)
	valueLens := make([]uintptr, n+1)
	for i := range n {
		nb, vb := cbytes([]byte(names[i])), cbytes([]byte(values[i]))
		keep = append(keep, nb, vb)
		namePtrs[i], nameLens[i] = &nb[0], uintptr(len(names[i]))
		valuePtrs[i], valueLens[i] = &vb[0], uintptr(len(values[i]))
	}
	res := c.lib.queryParamsN(c.conn(), &q[0], uintptr(len(query)), &f[0], uintptr(len(format)),
		&namePtrs[0], &nameLens[0], &valuePtrs[0], &valueLens[0], uintptr(n))
	runtime.KeepAlive(q)
	runtime.KeepAlive(f)
	runtime.KeepAlive(keep)
	runtime.KeepAlive(namePtrs)
	runtime.KeepAlive(valuePtrs)
	runtime.KeepAlive(nameLens)
	runtime.KeepAlive(valueLens)
	return c.lib.takeResult(res)
}

// close releases the connection. Closing the last connection shuts the
// engine down inside the library.
func (c *rawConn) close() {
	if c.handle != nil {
		c.lib.closeConn(c.handle)
		c.handle = nil
	}
}
