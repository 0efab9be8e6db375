package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meterline/meterline/internal/testenv"
)

// TestDemoFirstMinutes runs `meterline demo` against `meterline serve`
// configured like the development stack (the same customers, plans and
// alert thresholds, billing to stripe-mock) and checks what the README
// promises of it: acme's first usage alert arrives, signed, at the demo's
// receiver; the billing worker reports the demo's settled history to Stripe;
// and every event the demo says was accepted is counted by GET /v1/usage.
func TestDemoFirstMinutes(t *testing.T) {
	stripeMock := testenv.Require(t, testenv.EnvStripeMock)
	testenv.Require(t, testenv.EnvChdb)
	brokers := testenv.KafkaBrokers(t)
	dir := t.TempDir()
	alerts := "127.0.0.1:" + testenv.FreePort(t)
	dev, err := os.ReadFile(filepath.Join("..", "..", "deploy", "catalogue.dev.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(dev), "http://127.0.0.1:8099/alerts") {
		t.Fatal("deploy/catalogue.dev.yaml no longer sends acme's alerts to the demo's default receiver")
	}
	catalogue := filepath.Join(dir, "catalogue.yaml")
	if err := os.WriteFile(catalogue, []byte(strings.ReplaceAll(string(dev), "127.0.0.1:8099", alerts)), 0o600); err != nil {
		t.Fatal(err)
	}
	const secret = "demo-test-webhook-secret"
	topic := testenv.Unique("demo")
	cfgPath, addr := writeConfig(t, strings.Join(brokers, ","), topic, fmt.Sprintf(`limits:
  catalogue_file: %s
  refresh: 500ms
  webhook_secret: %s
aggregate:
  interval: 500ms
  settle: 1ms
billing:
  stripe_api_key: sk_test_123
  stripe_api_url: %s
  mapping_file: %s
  interval: 1s
  lateness: 5m
`, catalogue, secret, stripeMock, filepath.Join("..", "..", "deploy", "billing.dev.yaml")))
	start(t, cfgPath, addr)

	cmd := exec.Command(binPath, "demo", "--url", "http://"+addr, "--token", e2eIngestToken, "--admin-token", e2eAdminToken,
		"--alerts-listen", alerts, "--history", "3h", "--rate", "10", "--seed", "7")
	cmd.Env = append(os.Environ(), "METERLINE_LIMITS_WEBHOOK_SECRET="+secret)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &testenv.SyncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1000)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	var seen []string
	waitLine := func(what string, re *regexp.Regexp, d time.Duration) []string {
		t.Helper()
		deadline := time.After(d)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("the demo ended before %s:\n%s\n%s", what, strings.Join(seen, "\n"), stderr.String())
				}
				seen = append(seen, l)
				if m := re.FindStringSubmatch(l); m != nil {
					return m
				}
			case <-deadline:
				t.Fatalf("no %s within %s:\n%s\n%s", what, d, strings.Join(seen, "\n"), stderr.String())
			}
		}
	}
	waitLine("alert of acme at 80 %", regexp.MustCompile(`ALERT usage\.threshold_crossed: acme crossed 80 % .*signature good`), 3*time.Minute)

	testenv.Eventually(t, 3*time.Minute, func() error {
		n, err := metric(addr, "meterline_billing_units_acknowledged_total")
		if err != nil {
			return err
		}
		if n <= 0 {
			return fmt.Errorf("no unit acknowledged by Stripe yet")
		}
		return nil
	})

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	m := waitLine("summary", regexp.MustCompile(`stopped; events accepted: acme (\d+), globex (\d+)`), time.Minute)
	go func() { _, _ = io.Copy(io.Discard, out) }()
	acme, _ := strconv.Atoi(m[1])
	globex, _ := strconv.Atoi(m[2])
	if acme == 0 || globex == 0 {
		t.Fatalf("the demo sent acme %d and globex %d events", acme, globex)
	}
	s := &uiStack{addr: addr, base: "http://" + addr}
	from := time.Now().UTC().Add(-4 * time.Hour).Truncate(time.Hour).Format(time.RFC3339)
	testenv.Eventually(t, 2*time.Minute, func() error {
		for cust, want := range map[string]int{"acme": acme, "globex": globex} {
			u, err := s.usage("customer_id=" + cust + "&window=hour&from=" + from)
			if err != nil {
				return err
			}
			if u.requests() != uint64(want) {
				return fmt.Errorf("%s: GET /v1/usage counts %d requests, the demo says %d were accepted", cust, u.requests(), want)
			}
		}
		return nil
	})
}

// TestDemoRefusesBadFlags: each bad flag is named, nothing is sent.
func TestDemoRefusesBadFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"demo"}, "give --token"},
		{[]string{"demo", "--token", "x", "--history", "10s"}, "--history 10s: want 1m to 720h"},
		{[]string{"demo", "--token", "x", "--rate", "-3", "--history", "9000h"}, "--rate -3"},
		{[]string{"demo", "--token", "x", "--rate", "NaN"}, "--rate NaN"},
		{[]string{"demo", "--token", "x", "--duration", "-1s"}, "--duration: negative"},
		{[]string{"demo", "--token", "x", "extra"}, `unexpected argument "extra"`},
		{[]string{"demo", "--bogus"}, "flag provided but not defined"},
		{[]string{"demo", "--token", "x", "--url", "http://127.0.0.1:1", "--alerts-listen", "256.1.1.1:1"}, "--alerts-listen 256.1.1.1:1"},
	} {
		cmd := exec.Command(binPath, c.args...)
		cmd.Env = envWithout("METERLINE_INGEST_TOKEN", "METERLINE_TOKEN")
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("meterline %s: %v, want an error naming %q:\n%s", strings.Join(c.args, " "), err, c.want, out)
		}
	}
}
