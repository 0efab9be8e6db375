package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/meterline/meterline/internal/testenv"
)

// readmeAddr is the address the README's examples use; the test replaces it
// by the address of the server it starts.
const readmeAddr = "127.0.0.1:8080"

// readmeStepMarker separates the output of an example's steps.
const readmeStepMarker = "@@meterline-readme-step@@"

// readmeExample is one shell block of a Markdown file.
type readmeExample struct {
	line   int    // line of its opening fence, 1-based
	mode   string // "run", "retry" or "skip"
	reason string // why a skipped block is not run
	steps  []readmeStep
}

// readmeStep is a block's commands up to the output shown after them.
type readmeStep struct {
	commands []string
	expected []string // comment lines after the commands, without "# "
}

// String names the example by its line and first command.
func (e readmeExample) String() string {
	first := ""
	if len(e.steps) > 0 && len(e.steps[0].commands) > 0 {
		first = e.steps[0].commands[0]
	}
	return fmt.Sprintf("line %d (%s)", e.line, first)
}

var readmeMarkerRE = regexp.MustCompile(`^<!-- example(?:: (retry|not run \((.+)\)))? -->$`)

// parseReadmeExamples returns the ```sh blocks of a Markdown document with
// their markings. Every sh block must be marked, and a marking must be
// followed by an sh block: an unmarked example would silently go untested.
func parseReadmeExamples(doc string) ([]readmeExample, error) {
	var (
		examples []readmeExample
		errs     []error
		pending  *readmeExample // marking seen, block not yet opened
		cur      *readmeExample // inside a marked block
		inFence  bool           // inside a fence of another kind
	)
	sc := bufio.NewScanner(strings.NewReader(doc))
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		switch {
		case cur != nil:
			if line == "```" {
				if len(cur.steps) == 0 {
					errs = append(errs, fmt.Errorf("line %d: empty example", cur.line))
				}
				examples = append(examples, *cur)
				cur = nil
				continue
			}
			if strings.TrimSpace(line) == "" {
				continue
			}
			if strings.HasPrefix(line, "#") {
				if len(cur.steps) == 0 {
					errs = append(errs, fmt.Errorf("line %d: an example's comment lines are the output of the command before them, and this one has none", n))
					continue
				}
				s := &cur.steps[len(cur.steps)-1]
				s.expected = append(s.expected, strings.TrimPrefix(strings.TrimPrefix(line, "#"), " "))
				continue
			}
			if len(cur.steps) == 0 || len(cur.steps[len(cur.steps)-1].expected) > 0 {
				cur.steps = append(cur.steps, readmeStep{})
			}
			s := &cur.steps[len(cur.steps)-1]
			s.commands = append(s.commands, line)
		case inFence:
			if strings.HasPrefix(line, "```") {
				inFence = false
			}
		case strings.HasPrefix(line, "<!-- example"):
			m := readmeMarkerRE.FindStringSubmatch(line)
			if m == nil {
				errs = append(errs, fmt.Errorf("line %d: unknown marking %q (want <!-- example -->, <!-- example: retry --> or <!-- example: not run (why) -->)", n, line))
				continue
			}
			e := readmeExample{line: n + 1, mode: "run"}
			switch {
			case m[1] == "retry":
				e.mode = "retry"
			case m[1] != "":
				e.mode, e.reason = "skip", m[2]
			}
			pending = &e
		case line == "```sh":
			if pending == nil {
				errs = append(errs, fmt.Errorf("line %d: a sh block without a marking: precede it with <!-- example --> or <!-- example: not run (why) -->", n))
				inFence = true
				continue
			}
			if pending.line != n {
				errs = append(errs, fmt.Errorf("line %d: the marking must be on the line right before its block", pending.line-1))
			}
			cur, pending = pending, nil
		case strings.HasPrefix(line, "```"):
			if pending != nil {
				errs = append(errs, fmt.Errorf("line %d: a marked block must be a sh block", n))
				pending = nil
			}
			inFence = true
		default:
			if pending != nil && strings.TrimSpace(line) != "" {
				errs = append(errs, fmt.Errorf("line %d: a marking not followed by its sh block", pending.line-1))
				pending = nil
			}
		}
	}
	if cur != nil {
		errs = append(errs, fmt.Errorf("line %d: example not closed", cur.line))
	}
	if pending != nil {
		errs = append(errs, fmt.Errorf("line %d: a marking at the end of the document", pending.line-1))
	}
	return examples, errors.Join(errs...)
}

// matchOutputLine reports whether line matches an expected output line,
// in which "…" stands for any text and everything else is literal.
func matchOutputLine(pattern, line string) bool {
	parts := strings.Split(pattern, "…")
	var re strings.Builder
	re.WriteString("^")
	for i, p := range parts {
		if i > 0 {
			re.WriteString(".*")
		}
		re.WriteString(regexp.QuoteMeta(p))
	}
	re.WriteString("$")
	return regexp.MustCompile(re.String()).MatchString(line)
}

// script is the example as one bash script that prints readmeStepMarker
// after each step, with the address and binary replaced.
func (e readmeExample) script(addr, bin string) string {
	var b strings.Builder
	for _, s := range e.steps {
		for _, c := range s.commands {
			b.WriteString(readmeSubstitute(c, addr, bin))
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "printf '\\n%s\\n'\n", readmeStepMarker)
	}
	return b.String()
}

func readmeSubstitute(s, addr, bin string) string {
	s = strings.ReplaceAll(s, readmeAddr, addr)
	return strings.ReplaceAll(s, "bin/meterline", bin)
}

// check compares the output of script with the output the example shows.
func (e readmeExample) check(out, addr, bin string) error {
	outputs := strings.Split(out, "\n"+readmeStepMarker+"\n")
	if len(outputs) != len(e.steps)+1 {
		return fmt.Errorf("the script ended after %d of %d steps", len(outputs)-1, len(e.steps))
	}
	var errs []error
	for i, s := range e.steps {
		lines := strings.Split(outputs[i], "\n")
		for _, want := range s.expected {
			want = readmeSubstitute(want, addr, bin)
			found := false
			for _, l := range lines {
				if matchOutputLine(want, strings.TrimRight(l, " ")) {
					found = true
					break
				}
			}
			if !found {
				errs = append(errs, fmt.Errorf("step %q: no output line matches %q; the output was:\n%s", s.commands[0], want, outputs[i]))
			}
		}
	}
	return errors.Join(errs...)
}

// TestREADMEExamples runs the shell examples of README.md against `meterline
// serve` with the development configuration (its tokens, catalogue and
// billing mapping) on the test broker, with a topic, consumer group and data
// directory of its own and a free port. Each example must exit 0 and print
// the output the README shows. docs/development.md describes the markings.
func TestREADMEExamples(t *testing.T) {
	brokers := testenv.KafkaBrokers(t)
	stripeMock := testenv.Require(t, "METERLINE_TEST_STRIPE_MOCK")
	root := testenv.RepoRoot()
	doc, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	examples, err := parseReadmeExamples(string(doc))
	if err != nil {
		t.Fatalf("README.md: %v", err)
	}
	runnable := 0
	for _, e := range examples {
		if e.mode != "skip" {
			runnable++
		}
	}
	if runnable == 0 {
		t.Fatal("README.md has no runnable example")
	}

	addr := "127.0.0.1:" + testenv.FreePort(t)
	topic := testenv.Unique("readme")
	cmd := exec.Command(binPath, "serve", "--config", "deploy/meterline.dev.yaml")
	cmd.Dir = root // the development configuration names its files from there
	cmd.Env = append(os.Environ(),
		"METERLINE_HTTP_ADDR="+addr,
		"METERLINE_KAFKA_BROKERS="+strings.Join(brokers, ","),
		"METERLINE_KAFKA_TOPIC="+topic,
		"METERLINE_KAFKA_DEAD_LETTER_TOPIC="+topic+".dlq",
		"METERLINE_SINK_GROUP_ID="+topic+"-sink",
		"METERLINE_CLICKHOUSE_DATA_DIR="+filepath.Join(t.TempDir(), "ch"),
		"METERLINE_BILLING_STRIPE_API_URL="+stripeMock,
	)
	logs := &testenv.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("meterline log:\n%s", logs.String())
		}
	})
	testenv.Eventually(t, 2*time.Minute, func() error {
		select {
		case <-exited:
			t.Fatalf("meterline exited early:\n%s", logs.String())
		default:
		}
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz: %s", resp.Status)
		}
		return nil
	})

	work := t.TempDir()
	run := func(e readmeExample) (string, error) {
		sh := exec.Command("bash", "-euo", "pipefail", "-c", e.script(addr, binPath))
		sh.Dir = work
		// `meterline usage` and the other clients find the server here.
		sh.Env = append(os.Environ(), "METERLINE_URL=http://"+addr)
		var stdout, stderr bytes.Buffer
		sh.Stdout, sh.Stderr = &stdout, &stderr
		if err := sh.Run(); err != nil {
			return stdout.String(), fmt.Errorf("%v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
		}
		return stdout.String(), e.check(stdout.String(), addr, binPath)
	}
	for _, e := range examples {
		if e.mode == "skip" {
			t.Logf("not run: %s: %s", e, e.reason)
			continue
		}
		if e.mode == "run" {
			if _, err := run(e); err != nil {
				t.Errorf("README.md example at %s: %v", e, err)
			}
			continue
		}
		// retry: the pipeline may not have caught up yet.
		deadline := time.Now().Add(2 * time.Minute)
		for {
			_, err := run(e)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("README.md example at %s, still failing after 2m: %v", e, err)
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
}

// TestREADMEExampleParsing checks the parser and matcher the README test
// relies on, including the markings it must refuse.
func TestREADMEExampleParsing(t *testing.T) {
	doc := "text\n<!-- example -->\n```sh\na=1\necho \"$a x\"\n# 1 …\necho two\n# two\n```\n" +
		"<!-- example: not run (needs a terminal) -->\n```sh\nmake run\n```\n" +
		"<!-- example: retry -->\n```sh\ncurl x\n```\n```\nnot a sh block\n```\n"
	ex, err := parseReadmeExamples(doc)
	if err != nil {
		t.Fatal(err)
	}
	if len(ex) != 3 || ex[0].mode != "run" || ex[1].mode != "skip" || ex[1].reason != "needs a terminal" || ex[2].mode != "retry" {
		t.Fatalf("parsed %+v", ex)
	}
	if len(ex[0].steps) != 2 || len(ex[0].steps[0].commands) != 2 || ex[0].steps[0].expected[0] != "1 …" {
		t.Fatalf("steps %+v", ex[0].steps)
	}
	out, err := exec.Command("bash", "-euo", "pipefail", "-c", ex[0].script(readmeAddr, "bin/meterline")).Output()
	if err != nil {
		t.Fatal(err)
	}
	if err := ex[0].check(string(out), readmeAddr, "bin/meterline"); err != nil {
		t.Fatal(err)
	}
	if err := ex[0].check(strings.Replace(string(out), "two", "three", 1), readmeAddr, "bin/meterline"); err == nil {
		t.Fatal("a changed output matched")
	}
	if err := ex[0].check("1 x\n", readmeAddr, "bin/meterline"); err == nil {
		t.Fatal("a truncated output matched")
	}

	for name, bad := range map[string]string{
		"unmarked sh block":        "```sh\nls\n```\n",
		"unknown marking":          "<!-- example: sometimes -->\n```sh\nls\n```\n",
		"marking without block":    "<!-- example -->\nprose\n",
		"marking before other":     "<!-- example -->\n```go\nx\n```\n",
		"output before a command":  "<!-- example -->\n```sh\n# out\nls\n```\n",
		"empty example":            "<!-- example -->\n```sh\n```\n",
		"unclosed example":         "<!-- example -->\n```sh\nls\n",
		"marking at the very end":  "<!-- example -->\n",
		"not run without a reason": "<!-- example: not run -->\n```sh\nls\n```\n",
	} {
		if _, err := parseReadmeExamples(bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}

	for _, c := range []struct {
		pattern, line string
		want          bool
	}{
		{`{"a":1,…}`, `{"a":1,"b":2}`, true},
		{`{"a":1,…}`, `x{"a":1,"b":2}`, false},
		{`…"units":1…`, `{"units":1,"x":2}`, true},
		{`a.b`, `axb`, false},
		{`403`, `403`, true},
		{`403`, `4030`, false},
	} {
		if got := matchOutputLine(c.pattern, c.line); got != c.want {
			t.Errorf("matchOutputLine(%q, %q) = %v", c.pattern, c.line, got)
		}
	}
}
