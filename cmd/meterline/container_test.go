package main

import (
	"context"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meterline/meterline/internal/testenv"
)

// staticBuildFlags are the container image's build flags
// (deploy/container/Containerfile): no cgo, no embedded engine.
var staticBuildFlags = []string{"-trimpath", "-tags", "noembedded"}

// imageUID is the distroless base's non-root user, the chart's runAsUser.
const imageUID = 65532

// TestStaticBinaryRunsWithoutEmbeddedEngine builds the binary as the
// container image does and checks that it is static (no interpreter, no
// shared library: it runs on a base without a C library) and, inside an
// empty root as the image's non-root user where the test runs as root,
// that it starts with the server engine configured and stops with a clear
// error when the server cannot be reached, or when no server is configured.
// No container runtime runs here, so the image itself is not built by the
// tests; this is what stands in for running it.
func TestStaticBinaryRunsWithoutEmbeddedEngine(t *testing.T) {
	containerfile, err := os.ReadFile(filepath.Join("..", "..", "deploy", "container", "Containerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(containerfile), "CGO_ENABLED=0 go build "+strings.Join(staticBuildFlags, " ")+" ") {
		t.Fatalf("the Containerfile does not build with CGO_ENABLED=0 and %v: keep the two in step", staticBuildFlags)
	}

	root := t.TempDir()
	bin := filepath.Join(root, "meterline")
	build := exec.Command("go", append(append([]string{"build"}, staticBuildFlags...), "-o", bin, ".")...)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("static build: %v\n%s", err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("the binary has a %v program header: it is not static", p.Type)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the binary needs shared libraries %v", libs)
	}
	f.Close()

	// An empty root as the image has it: the binary, a /tmp, nothing else.
	if err := os.Mkdir(filepath.Join(root, "tmp"), 0o1777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	chroot := os.Geteuid() == 0
	if !chroot {
		t.Log("not root: the binary runs on this machine's root file system, as this user (an empty root needs chroot)")
	}
	run := func(env []string, args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, args...)
		if chroot {
			cmd = exec.CommandContext(ctx, "/meterline", args...)
			cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root, Credential: &syscall.Credential{Uid: imageUID, Gid: imageUID}}
			cmd.Dir = "/"
		}
		cmd.Env = env // nothing of the test's environment: no CHDB_LIB_PATH, no METERLINE_CACHE
		out, err := cmd.CombinedOutput()
		if ctx.Err() != nil {
			t.Fatalf("meterline %v did not stop: %s", args, out)
		}
		return string(out), err
	}

	out, err := run(nil, "version")
	if err != nil || !strings.Contains(out, "engines: ClickHouse server only") {
		t.Errorf("version: %v\n%s", err, out)
	}

	// The server engine configured, nothing listening there: the process
	// starts, tries the server and stops with exit status 1 naming it.
	chAddr := "127.0.0.1:" + testenv.FreePort(t)
	env := []string{
		"METERLINE_CLICKHOUSE_ADDR=" + chAddr,
		"METERLINE_KAFKA_BROKERS=127.0.0.1:" + testenv.FreePort(t),
		"METERLINE_HTTP_ADDR=127.0.0.1:0",
		"METERLINE_LOG_FORMAT=json",
	}
	for _, args := range [][]string{{"serve", "--roles=query"}, {"serve", "--roles=sink,aggregator"}, {"migrate"}} {
		out, err := run(env, args...)
		if code := exitCode(err); code != 1 {
			t.Errorf("%v: exit %d (%v), want 1\n%s", args, code, err, out)
		}
		for _, want := range []string{"clickhouse unavailable", chAddr, "connection refused"} {
			if !strings.Contains(out, want) {
				t.Errorf("%v: output does not say %q:\n%s", args, want, out)
			}
		}
		if strings.Contains(out, "libchdb") || strings.Contains(out, "embedded") {
			t.Errorf("%v: the server engine's failure mentions the embedded engine:\n%s", args, out)
		}
	}

	// No server configured: the embedded engine is not in this binary.
	out, err = run(env[1:], "serve", "--roles=sink")
	if code := exitCode(err); code != 1 || !strings.Contains(out, "built without the embedded ClickHouse engine") || !strings.Contains(out, "set clickhouse.addr") {
		t.Errorf("serve without clickhouse.addr: exit %d (%v)\n%s", code, err, out)
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}
