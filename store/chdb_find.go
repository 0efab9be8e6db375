package store

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// chdbVersionFile is the one place that pins the engine library's version:
// deploy/lib.sh reads the same file to install it, so the path the
// installer writes and the path searched here cannot drift apart.
//
//go:embed chdb.version
var chdbVersionFile string

// ChdbVersion is the version of libchdb (the npm package
// @chdb/lib-linux-x64-gnu) that deploy/install.sh installs and that the
// embedded engine looks for in the install locations.
var ChdbVersion = strings.TrimSpace(chdbVersionFile)

// libName is the library's file name on this system.
func libName() string {
	if runtime.GOOS == "darwin" {
		return "libchdb.dylib"
	}
	return "libchdb.so"
}

// libCandidate is one place the library may be, and where that place came
// from (for the error that lists what was tried).
type libCandidate struct {
	path   string
	origin string
	// loader marks the bare file name handed to the dynamic loader, which
	// searches the system library path itself (it cannot be stat'ed).
	loader bool
}

// libSearch is the input of the library search: the environment and the
// running executable's path, passed in so tests can point them at
// temporary directories.
type libSearch struct {
	getenv func(string) string
	exe    string // os.Executable(), symlinks resolved; empty when unknown
	exists func(string) bool
}

// ErrNoLibrary marks (with ErrUnavailable) an embedded Open that failed
// because libchdb could not be loaded.
var ErrNoLibrary = errors.New("embedded ClickHouse library not loaded")

// libError is a failed library load: its text explains it, and it is both
// ErrNoLibrary and ErrUnavailable.
type libError struct{ msg string }

func (e *libError) Error() string { return e.msg }

func (e *libError) Is(target error) bool { return target == ErrNoLibrary || target == ErrUnavailable }

// systemLibDirs are searched by file before the loader's own search, so
// the error can name them.
var systemLibDirs = func() []string {
	if runtime.GOOS == "darwin" {
		return []string{"/usr/local/lib", "/opt/homebrew/lib"}
	}
	return []string{"/usr/local/lib", "/usr/lib"}
}()

// candidates lists, in order, where the library is looked for:
//
//  1. CHDB_LIB_PATH, when set (and then only there: an explicit setting
//     that names a missing file is an error, not a hint to look elsewhere);
//  2. $METERLINE_CACHE/chdb/<version>/libchdb.so, where deploy/install.sh
//     puts it when METERLINE_CACHE is set;
//  3. the repository's .cache next to the executable's directory
//     (bin/meterline -> ../.cache/chdb/<version>/libchdb.so), where
//     `make install` and `make run` put it by default;
//  4. the system library directories, then the dynamic loader's own path
//     (LD_LIBRARY_PATH, ld.so.cache).
func (s libSearch) candidates() []libCandidate {
	if p := s.getenv("CHDB_LIB_PATH"); p != "" {
		return []libCandidate{{path: p, origin: "CHDB_LIB_PATH"}}
	}
	name := libName()
	var out []libCandidate
	if c := s.getenv("METERLINE_CACHE"); c != "" {
		out = append(out, libCandidate{path: filepath.Join(c, "chdb", ChdbVersion, name), origin: "METERLINE_CACHE"})
	}
	if s.exe != "" {
		out = append(out, libCandidate{path: filepath.Join(filepath.Dir(filepath.Dir(s.exe)), ".cache", "chdb", ChdbVersion, name),
			origin: "the repository's .cache beside " + filepath.Base(filepath.Dir(s.exe)) + "/"})
	}
	for _, d := range systemLibDirs {
		out = append(out, libCandidate{path: filepath.Join(d, name), origin: "system"})
	}
	return append(out, libCandidate{path: name, origin: "the dynamic loader's path", loader: true})
}

// find returns the first candidate that exists, or the bare name for the
// loader when none does. With CHDB_LIB_PATH set it returns that path even
// when missing, so that dlopen's own message names it.
func (s libSearch) find() libCandidate {
	cs := s.candidates()
	if len(cs) == 1 {
		return cs[0]
	}
	for _, c := range cs {
		if c.loader || s.exists(c.path) {
			return c
		}
	}
	return cs[len(cs)-1]
}

// notFound explains a failed load: every place tried, and how to install
// the library.
func (s libSearch) notFound(tried libCandidate, cause error) error {
	var b strings.Builder
	if tried.origin == "CHDB_LIB_PATH" {
		fmt.Fprintf(&b, "load embedded ClickHouse library %q (from CHDB_LIB_PATH): %v\n", tried.path, cause)
		b.WriteString("  fix CHDB_LIB_PATH, or unset it to search the install locations")
		return &libError{b.String()}
	}
	if !tried.loader {
		fmt.Fprintf(&b, "load embedded ClickHouse library %q (found at the %s location): %v\n", tried.path, tried.origin, cause)
		b.WriteString("  a damaged or partial download? remove it and run `make install` (or deploy/install.sh chdb) again")
		return &libError{b.String()}
	}
	fmt.Fprintf(&b, "embedded ClickHouse library %s %s not found; tried:\n", libName(), ChdbVersion)
	b.WriteString("  CHDB_LIB_PATH (not set)\n")
	if s.getenv("METERLINE_CACHE") == "" {
		b.WriteString("  $METERLINE_CACHE/chdb/" + ChdbVersion + "/" + libName() + " (METERLINE_CACHE not set)\n")
	}
	for _, c := range s.candidates() {
		if c.loader {
			fmt.Fprintf(&b, "  %s on the dynamic loader's path (%v)\n", c.path, cause)
			continue
		}
		fmt.Fprintf(&b, "  %s\n", c.path)
	}
	b.WriteString("  install it with `make install` (or deploy/install.sh chdb) in the repository, or set CHDB_LIB_PATH to the file")
	return &libError{b.String()}
}

// processLibSearch is the search of this process: its environment and
// its executable.
func processLibSearch() libSearch {
	exe, err := os.Executable()
	if err == nil {
		if r, err := filepath.EvalSymlinks(exe); err == nil {
			exe = r
		}
	} else {
		exe = ""
	}
	return libSearch{getenv: os.Getenv, exe: exe, exists: func(p string) bool {
		st, err := os.Stat(p)
		return err == nil && !st.IsDir()
	}}
}
