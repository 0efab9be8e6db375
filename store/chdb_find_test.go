package store

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// fakeInstall lays out the install locations of the library search under
// root as empty files, and returns their paths.
type fakeInstall struct {
	env, cache, exe, repoLib, sysDir, sysLib string
}

func newFakeInstall(t *testing.T) fakeInstall {
	t.Helper()
	root := t.TempDir()
	f := fakeInstall{
		env:    filepath.Join(root, "explicit", "libchdb-custom.so"),
		cache:  filepath.Join(root, "cache"),
		exe:    filepath.Join(root, "repo", "bin", "meterline"),
		sysDir: filepath.Join(root, "usr-local-lib"),
	}
	f.repoLib = filepath.Join(root, "repo", ".cache", "chdb", ChdbVersion, libName())
	f.sysLib = filepath.Join(f.sysDir, libName())
	for _, p := range []string{f.env, filepath.Join(f.cache, "chdb", ChdbVersion, libName()), f.exe, f.repoLib, f.sysLib} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("not a real library"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old := systemLibDirs
	systemLibDirs = []string{f.sysDir}
	t.Cleanup(func() { systemLibDirs = old })
	return f
}

func (f fakeInstall) search(env map[string]string) libSearch {
	return libSearch{getenv: func(k string) string { return env[k] }, exe: f.exe, exists: func(p string) bool {
		st, err := os.Stat(p)
		return err == nil && !st.IsDir()
	}}
}

func TestLibrarySearchOrder(t *testing.T) {
	f := newFakeInstall(t)
	cacheLib := filepath.Join(f.cache, "chdb", ChdbVersion, libName())

	// Everything present: each step of the order wins over the ones after it.
	if got := f.search(map[string]string{"CHDB_LIB_PATH": f.env, "METERLINE_CACHE": f.cache}).find(); got.path != f.env {
		t.Errorf("with CHDB_LIB_PATH set: found %s, want %s", got.path, f.env)
	}
	if got := f.search(map[string]string{"METERLINE_CACHE": f.cache}).find(); got.path != cacheLib {
		t.Errorf("with METERLINE_CACHE set: found %s, want %s", got.path, cacheLib)
	}
	if got := f.search(nil).find(); got.path != f.repoLib {
		t.Errorf("with no variable: found %s, want the repository's .cache beside bin/: %s", got.path, f.repoLib)
	}

	// A METERLINE_CACHE without the library falls through to the next place.
	if got := f.search(map[string]string{"METERLINE_CACHE": t.TempDir()}).find(); got.path != f.repoLib {
		t.Errorf("with an empty METERLINE_CACHE: found %s, want %s", got.path, f.repoLib)
	}
	if err := os.Remove(f.repoLib); err != nil {
		t.Fatal(err)
	}
	if got := f.search(nil).find(); got.path != f.sysLib {
		t.Errorf("without the repository's copy: found %s, want the system one %s", got.path, f.sysLib)
	}
	if err := os.Remove(f.sysLib); err != nil {
		t.Fatal(err)
	}
	if got := f.search(nil).find(); !got.loader || got.path != libName() {
		t.Errorf("with nothing installed: found %+v, want the bare name for the dynamic loader", got)
	}

	// An explicit CHDB_LIB_PATH that names a missing file is not replaced
	// by another copy: the load fails naming it.
	missing := filepath.Join(t.TempDir(), "nope.so")
	if got := f.search(map[string]string{"CHDB_LIB_PATH": missing, "METERLINE_CACHE": f.cache}).find(); got.path != missing {
		t.Errorf("with CHDB_LIB_PATH naming a missing file: found %s, want that file", got.path)
	}
}

func TestLibraryNotFoundNamesEveryPlaceAndTheInstallCommand(t *testing.T) {
	f := newFakeInstall(t)
	s := f.search(nil)
	os.Remove(f.repoLib)
	os.Remove(f.sysLib)
	got := s.find()
	msg := s.notFound(got, errors.New("libchdb.so: cannot open shared object file")).Error()
	for _, want := range []string{"CHDB_LIB_PATH (not set)", "METERLINE_CACHE not set", f.repoLib, f.sysLib,
		"cannot open shared object file", "make install", "deploy/install.sh chdb", ChdbVersion} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q:\n%s", want, msg)
		}
	}

	cache := t.TempDir()
	msg = f.search(map[string]string{"METERLINE_CACHE": cache}).notFound(got, errors.New("x")).Error()
	if want := filepath.Join(cache, "chdb", ChdbVersion, libName()); !strings.Contains(msg, want) {
		t.Errorf("message lacks the METERLINE_CACHE location %s:\n%s", want, msg)
	}

	msg = f.search(map[string]string{"CHDB_LIB_PATH": "/no/such/libchdb.so"}).notFound(libCandidate{path: "/no/such/libchdb.so", origin: "CHDB_LIB_PATH"}, errors.New("no such file")).Error()
	if !strings.Contains(msg, "/no/such/libchdb.so") || !strings.Contains(msg, "CHDB_LIB_PATH") {
		t.Errorf("CHDB_LIB_PATH failure does not name the variable and its file:\n%s", msg)
	}
}

// TestInstallerAndSearchAgreeOnTheVersion checks that deploy/lib.sh, which
// deploy/install.sh uses, installs the library exactly where the search
// looks for it.
func TestInstallerAndSearchAgreeOnTheVersion(t *testing.T) {
	if !regexp.MustCompile(`^\d+\.\d+\.\d+$`).MatchString(ChdbVersion) {
		t.Fatalf("chdb.version holds %q, want a version like 26.5.3", ChdbVersion)
	}
	cache := t.TempDir()
	cmd := exec.Command("bash", "-c", `source deploy/lib.sh && printf %s "$CHDB_LIB"`)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "METERLINE_CACHE="+cache, "CHDB_NPM_VERSION=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("sourcing deploy/lib.sh: %v\n%s", err, out)
	}
	s := libSearch{getenv: func(k string) string { return map[string]string{"METERLINE_CACHE": cache}[k] }}
	if want := s.candidates()[0].path; string(out) != want {
		t.Errorf("deploy/lib.sh installs into %s, the binary looks in %s", out, want)
	}
	// The repository's default cache, as seen from bin/meterline.
	cmd = exec.Command("bash", "-c", `unset METERLINE_CACHE CHDB_NPM_VERSION; source deploy/lib.sh && printf %s "$CHDB_LIB"`)
	cmd.Dir = ".."
	out, err = cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("sourcing deploy/lib.sh: %v\n%s", err, out)
	}
	repo, _ := filepath.Abs("..")
	s = libSearch{getenv: func(string) string { return "" }, exe: filepath.Join(repo, "bin", "meterline")}
	if want := s.candidates()[0].path; string(out) != want {
		t.Errorf("deploy/lib.sh installs into %s by default, bin/meterline looks in %s", out, want)
	}
}

func TestLibraryErrorIsUnavailable(t *testing.T) {
	f := newFakeInstall(t)
	err := f.search(nil).notFound(libCandidate{path: libName(), loader: true}, errors.New("x"))
	if !errors.Is(err, ErrNoLibrary) || !errors.Is(err, ErrUnavailable) {
		t.Errorf("%v: want ErrNoLibrary and ErrUnavailable", err)
	}
}
