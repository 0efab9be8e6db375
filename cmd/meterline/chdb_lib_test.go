package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/store"
)

// envWithout returns the process environment less the named variables.
func envWithout(names ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		drop := false
		for _, n := range names {
			if strings.HasPrefix(kv, n+"=") {
				drop = true
			}
		}
		if !drop {
			out = append(out, kv)
		}
	}
	return out
}

// linkLibrary makes dir/chdb/<version>/libchdb.so a link to the real library.
func linkLibrary(t *testing.T, lib, cacheDir string) {
	t.Helper()
	dst := filepath.Join(cacheDir, "chdb", store.ChdbVersion, "libchdb.so")
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(lib, dst); err != nil {
		t.Fatal(err)
	}
}

// TestBinaryFindsTheInstalledLibraryWithoutCHDBLibPath runs `meterline sql`
// as the README writes it, without CHDB_LIB_PATH: the binary loads the real
// library from where deploy/install.sh puts it.
func TestBinaryFindsTheInstalledLibraryWithoutCHDBLibPath(t *testing.T) {
	lib := testenv.Require(t, testenv.EnvChdb)
	lib, err := filepath.EvalSymlinks(lib)
	if err != nil {
		t.Fatal(err)
	}
	sqlRun := func(t *testing.T, bin string, env []string) (string, string, error) {
		var stdout, stderr strings.Builder
		cmd := exec.Command(bin, "sql", "--data-dir", filepath.Join(t.TempDir(), "ch"), "SELECT 40 + 2 AS answer")
		cmd.Env = env
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		return stdout.String(), stderr.String(), err
	}
	base := envWithout("CHDB_LIB_PATH", "METERLINE_CACHE", "METERLINE_CONFIG")

	t.Run("METERLINE_CACHE", func(t *testing.T) {
		cache := t.TempDir()
		linkLibrary(t, lib, cache)
		out, errOut, err := sqlRun(t, binPath, append(base, "METERLINE_CACHE="+cache))
		if err != nil || !strings.Contains(out, "42") {
			t.Fatalf("sql with the library in $METERLINE_CACHE: %v\nstdout: %s\nstderr: %s", err, out, errOut)
		}
	})
	t.Run("repository .cache beside bin", func(t *testing.T) {
		repo := t.TempDir()
		bin := filepath.Join(repo, "bin", "meterline")
		if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(binPath)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(bin, data, 0o755); err != nil {
			t.Fatal(err)
		}
		linkLibrary(t, lib, filepath.Join(repo, ".cache"))
		out, errOut, err := sqlRun(t, bin, base)
		if err != nil || !strings.Contains(out, "42") {
			t.Fatalf("sql with the library in the repository's .cache: %v\nstdout: %s\nstderr: %s", err, out, errOut)
		}
		// A link to the binary (as from a PATH directory) finds it too.
		link := filepath.Join(t.TempDir(), "meterline")
		if err := os.Symlink(bin, link); err != nil {
			t.Fatal(err)
		}
		if out, errOut, err := sqlRun(t, link, base); err != nil || !strings.Contains(out, "42") {
			t.Fatalf("sql through a link to bin/meterline: %v\nstdout: %s\nstderr: %s", err, out, errOut)
		}
	})
	t.Run("nothing installed", func(t *testing.T) {
		for _, p := range []string{"/usr/local/lib/libchdb.so", "/usr/lib/libchdb.so"} {
			if _, err := os.Stat(p); err == nil {
				t.Skipf("%s is installed on this machine", p)
			}
		}
		repo := t.TempDir()
		bin := filepath.Join(repo, "bin", "meterline")
		os.MkdirAll(filepath.Dir(bin), 0o755)
		data, _ := os.ReadFile(binPath)
		if err := os.WriteFile(bin, data, 0o755); err != nil {
			t.Fatal(err)
		}
		out, errOut, err := sqlRun(t, bin, base)
		if err == nil {
			t.Fatalf("sql without any library succeeded: %s", out)
		}
		for _, want := range []string{filepath.Join(repo, ".cache", "chdb", store.ChdbVersion, "libchdb.so"),
			"CHDB_LIB_PATH (not set)", "make install", "deploy/install.sh chdb"} {
			if !strings.Contains(errOut, want) {
				t.Errorf("error lacks %q:\n%s", want, errOut)
			}
		}
	})
}
