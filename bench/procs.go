package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// child is one meterline process of the pipeline under test.
type child struct {
	name      string // collector, sink
	addr      string // HTTP address
	pprofAddr string
	cmd       *exec.Cmd
	logPath   string
	exited    chan struct{}
}

// freeAddr returns a loopback address with a port that is free right now.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// childEnv is the environment of a child: the bench's own, minus the
// settings the bench decides for each child. Other METERLINE_* variables
// (e.g. METERLINE_SINK_BATCH_SIZE) reach the children on purpose.
func childEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "METERLINE_CONFIG", "METERLINE_HTTP_ADDR", "METERLINE_KAFKA_TOPIC", "METERLINE_KAFKA_DEAD_LETTER_TOPIC",
			"METERLINE_KAFKA_BROKERS", "METERLINE_CLICKHOUSE_DATA_DIR", "METERLINE_CLICKHOUSE_ADDR", "METERLINE_SINK_GROUP_ID", "METERLINE_AUTH_TOKENS":
			continue
		}
		out = append(out, kv)
	}
	return out
}

// startChild runs `meterline serve` with the given roles and waits until
// its /healthz answers.
func startChild(ctx context.Context, bin, dir, name, cfgPath, roles string, pprof bool) (*child, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	c := &child{name: name, addr: addr, logPath: filepath.Join(dir, name+".log"), exited: make(chan struct{})}
	args := []string{"serve", "--config", cfgPath, "--roles", roles, "--http-addr", addr}
	if pprof {
		if c.pprofAddr, err = freeAddr(); err != nil {
			return nil, err
		}
		args = append(args, "--pprof-addr", c.pprofAddr)
	}
	logf, err := os.Create(c.logPath)
	if err != nil {
		return nil, err
	}
	c.cmd = exec.Command(bin, args...)
	c.cmd.Env = childEnv()
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	if err := c.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() { _ = c.cmd.Wait(); logf.Close(); close(c.exited) }()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		select {
		case <-c.exited:
			return nil, fmt.Errorf("%s exited at start-up:\n%s", name, c.logTail(20))
		case <-ctx.Done():
			c.kill()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return c, nil
			}
		}
		if time.Now().After(deadline) {
			c.kill()
			return nil, fmt.Errorf("%s did not answer /healthz within 2 minutes:\n%s", name, c.logTail(20))
		}
	}
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) alive() bool {
	select {
	case <-c.exited:
		return false
	default:
		return true
	}
}

// stop asks the child to stop (SIGTERM: it flushes) and kills it after a minute.
func (c *child) stop() {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(time.Minute):
		c.kill()
	}
}

func (c *child) kill() {
	_ = c.cmd.Process.Kill()
	<-c.exited
}

// logTail returns the last n lines of the child's log.
func (c *child) logTail(n int) string {
	b, _ := os.ReadFile(c.logPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + strings.Join(lines, "\n  ")
}

// procStat is what /proc tells about a process.
type procStat struct {
	CPUSeconds float64 // user + system
	RSSBytes   int64   // VmRSS
	HWMBytes   int64   // VmHWM: peak resident set
}

// clockTick is USER_HZ, which Linux fixes at 100 for /proc/PID/stat.
const clockTick = 100

// readProc reads /proc/PID/stat and /proc/PID/status.
func readProc(pid int) (procStat, error) {
	var st procStat
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return st, err
	}
	// The command name (field 2) may hold spaces; fields after ")" are fixed.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return st, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return st, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	// After ")": state(3) ppid ... utime is field 14, stime 15 (1-based over the whole line).
	ut, _ := strconv.ParseFloat(f[11], 64)
	stt, _ := strconv.ParseFloat(f[12], 64)
	st.CPUSeconds = (ut + stt) / clockTick
	sf, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return st, err
	}
	defer sf.Close()
	sc := bufio.NewScanner(sf)
	for sc.Scan() {
		line := sc.Text()
		for _, k := range []struct {
			prefix string
			dst    *int64
		}{{"VmRSS:", &st.RSSBytes}, {"VmHWM:", &st.HWMBytes}} {
			if rest, ok := strings.CutPrefix(line, k.prefix); ok {
				fs := strings.Fields(rest)
				if len(fs) > 0 {
					kb, _ := strconv.ParseInt(fs[0], 10, 64)
					*k.dst = kb << 10
				}
			}
		}
	}
	return st, nil
}

// scrape reads a Prometheus text exposition and sums the samples of each
// metric name (labels dropped).
func scrape(ctx context.Context, client *http.Client, url string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	return parseMetrics(resp.Body)
}

func parseMetrics(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name := line
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name = line[:i]
		}
		j := strings.LastIndexByte(line, ' ')
		if j < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[j+1:], 64)
		if err != nil {
			continue
		}
		out[name] += v
	}
	return out, sc.Err()
}

// fetch saves url's body to path.
func fetch(ctx context.Context, url, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: %s %s", url, resp.Status, b)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
