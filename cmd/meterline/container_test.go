package main

import (
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
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

	bin := staticBinary(t)
	root := filepath.Dir(bin)
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
	if err := os.MkdirAll(filepath.Join(root, "tmp"), 0o1777); err != nil {
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

var (
	staticOnce sync.Once
	staticDir  string
	staticErr  error
)

// staticBinary builds, once per test run, the binary the container image
// holds, alone in a directory of its own (TestMain removes it).
func staticBinary(t *testing.T) string {
	t.Helper()
	staticOnce.Do(func() {
		if staticDir, staticErr = os.MkdirTemp("", "meterline-static"); staticErr != nil {
			return
		}
		build := exec.Command("go", append(append([]string{"build"}, staticBuildFlags...), "-o", filepath.Join(staticDir, "meterline"), ".")...)
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			staticErr = fmt.Errorf("static build: %v\n%s", err, out)
		}
	})
	if staticErr != nil {
		t.Fatal(staticErr)
	}
	return filepath.Join(staticDir, "meterline")
}

// TestStaticBinaryServesChartConfig runs the image's binary as the chart's
// collector pod: with the configuration and files the chart renders (on the
// shared broker), it becomes ready, stores a posted event in Kafka (202),
// and stops cleanly on SIGTERM.
func TestStaticBinaryServesChartConfig(t *testing.T) {
	helmTool(t)
	brokers := testenv.KafkaBrokers(t)
	bin := staticBinary(t)
	topic := testenv.Unique("helm-collector")
	token := "helm-test-ingest"
	sum := sha256.Sum256([]byte(token))
	brokersJSON, err := json.Marshal(brokers)
	if err != nil {
		t.Fatal(err)
	}
	manifest, err := helmTemplate(t, "-f", filepath.Join(chartDir, "ci", "default-values.yaml"),
		"--set-json", "kafka.brokers="+string(brokersJSON),
		"--set", "kafka.replicationFactor=1", "--set", "kafka.partitions=2",
		"--set", "kafka.topic="+topic, "--set", "kafka.deadLetterTopic="+topic+".dlq",
		"--set", "clickhouse.addr={127.0.0.1:"+testenv.FreePort(t)+"}",
		"--set-json", fmt.Sprintf(`auth.tokens=[{"name":"gateway","sha256":%q,"scopes":["ingest"]}]`, hex.EncodeToString(sum[:])),
		"--set", "config.http.drain_delay=0s")
	if err != nil {
		t.Fatal(err)
	}
	objs := decodeObjects(t, manifest)
	rendered := map[string]k8sObject{}
	for _, o := range objs {
		rendered[o.kind()+"/"+o.name()] = o
	}
	pod, ok := rendered["Deployment/r-meterline-collector"]
	if !ok {
		t.Fatal("no collector Deployment")
	}
	cfgPath, _ := layOutPod(t, rendered, nil, pod)
	var args []string
	for _, a := range list(dig(pod, "spec", "template", "spec", "containers", 0, "args")) {
		s := fmt.Sprint(a)
		if strings.HasPrefix(s, "--config=") {
			s = "--config=" + cfgPath
		}
		args = append(args, s)
	}
	addr := "127.0.0.1:" + testenv.FreePort(t)
	cmd := exec.Command(bin, args...)
	// The pod's environment, less what only Kubernetes can fill in, and the
	// listen address moved to a free port of this machine.
	cmd.Env = []string{"METERLINE_HTTP_ADDR=" + addr, "GOMEMLIMIT=536870912"}
	var out testenv.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-done
		}
	})
	base := "http://" + addr
	testenv.Eventually(t, 2*time.Minute, func() error {
		select {
		case err := <-done:
			t.Fatalf("meterline stopped: %v\n%s", err, out.String())
		default:
		}
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			return fmt.Errorf("/readyz %d: %s", resp.StatusCode, b)
		}
		return nil
	})
	event := fmt.Sprintf(`[{"id":"helm-1","time":%q,"api_key_id":"key_helm","status":200}]`, time.Now().UTC().Format(time.RFC3339Nano))
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/events", strings.NewReader(event))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || !strings.Contains(string(body), `"accepted":1`) {
		t.Fatalf("POST /v1/events: %d %s\n%s", resp.StatusCode, body, out.String())
	}
	t.Logf("POST /v1/events: %d %s", resp.StatusCode, body)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v\n%s", err, out.String())
		}
		if !strings.Contains(out.String(), `"msg":"stopped"`) {
			t.Errorf("no clean stop in the log:\n%s", out.String())
		}
	case <-time.After(time.Minute):
		t.Fatalf("no exit within a minute of SIGTERM\n%s", out.String())
	}
}

// removeStaticBinary removes what staticBinary built; TestMain calls it.
func removeStaticBinary() {
	if staticDir != "" {
		os.RemoveAll(staticDir)
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
