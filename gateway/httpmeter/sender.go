package httpmeter

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/meterline/meterline/schemas"
)

// maxLoggedRejections bounds the log lines of one batch's rejections (a
// KeyFunc gone wrong would otherwise log every request); the rest are
// counted and summed up in one line.
const maxLoggedRejections = 10

// maxAnswerBytes bounds how much of the collector's answer is read: room
// for a rejection of each of 10,000 events (under 512 bytes each).
const maxAnswerBytes = 16 << 20

// run is the sender: it posts each batch the queue fills, the partial
// batch every FlushInterval, and everything at Close.
func (m *Meter) run() {
	defer close(m.done)
	tick := time.NewTicker(m.cfg.FlushInterval)
	defer tick.Stop()
	var batches [][]record
	for {
		partial := false
		select {
		case <-m.queue.ready:
		case <-tick.C:
			partial = true
		case <-m.closing:
			m.drain()
			return
		}
		batches = m.queue.take(partial, batches[:0])
		for _, b := range batches {
			m.send(b)
			m.queue.done(b)
		}
		clear(batches)
	}
}

// drain sends everything held, until nothing is left or Close's context
// ended; what is left then is counted as unsent.
func (m *Meter) drain() {
	var batches [][]record
	for {
		batches = m.queue.take(true, batches[:0])
		if len(batches) == 0 {
			return
		}
		for _, b := range batches {
			if m.stopCtx.Err() != nil {
				m.stats.droppedUnsent.Add(uint64(len(b)))
			} else {
				m.send(b)
			}
			m.queue.done(b)
		}
		clear(batches)
	}
}

// encoder holds the sender's buffers, reused from batch to batch.
type encoder struct {
	raw  bytes.Buffer // NDJSON of the post being built
	gz   bytes.Buffer // its gzip
	zw   *gzip.Writer
	line []byte
	ids  []string // event ids of the post, by index, for the logs
	hex  []byte   // the batch's ids, converted to one string
}

// send encodes batch as gzip NDJSON in posts of at most MaxBatchBytes and
// posts each.
func (m *Meter) send(batch []record) {
	e := &m.enc
	e.raw.Reset()
	e.ids = e.ids[:0]
	// One string holds every id of the batch: one allocation, not one per
	// event.
	e.hex = e.hex[:0]
	for i := range batch {
		e.hex = batch[i].appendID(e.hex)
	}
	allIDs := string(e.hex)
	for i := range batch {
		ev, err := batch[i].event(m.cfg.Gateway, allIDs[32*i:32*i+32])
		if err != nil {
			m.stats.rejected.Add(1)
			m.cfg.Logger.Warn("meterline event not sent: it cannot be encoded", "id", ev.ID, "err", err)
			continue
		}
		e.line = ev.AppendJSON(e.line[:0])
		e.line = append(e.line, '\n')
		if e.raw.Len() > 0 && e.raw.Len()+len(e.line) > m.cfg.MaxBatchBytes {
			_, _, _ = m.post(m.stopCtx, e.raw.Bytes(), e.ids) // counted and logged
			e.raw.Reset()
			e.ids = e.ids[:0]
		}
		e.raw.Write(e.line)
		e.ids = append(e.ids, ev.ID)
	}
	if e.raw.Len() > 0 {
		_, _, _ = m.post(m.stopCtx, e.raw.Bytes(), e.ids)
	}
}

// appendID appends the record's id as 32 hex digits.
func (r *record) appendID(dst []byte) []byte {
	var id [16]byte
	for i := range 8 {
		id[i] = byte(r.id[0] >> (8 * i))
		id[8+i] = byte(r.id[1] >> (8 * i))
	}
	return hex.AppendEncode(dst, id[:])
}

// event converts a record into the v1 event with the given id. An id that
// is not valid UTF-8, or units that are not a finite number, cannot be
// written as JSON without changing them, so such an event is refused here
// rather than sent for another key or another quantity.
func (r *record) event(gateway, id string) (schemas.Event, error) {
	ev := schemas.Event{
		ID:            id,
		Time:          r.start.UTC(),
		APIKeyID:      r.apiKeyID,
		CustomerID:    r.customerID,
		Gateway:       gateway,
		Method:        r.method,
		Route:         r.route,
		Status:        r.status,
		LatencyMS:     float64(r.latency.Microseconds()) / 1000,
		RequestBytes:  uint64(max(r.requestBytes, 0)),
		ResponseBytes: uint64(max(r.respBytes, 0)),
		ClientIP:      clientIP(r.remoteAddr),
		UserAgent:     r.userAgent,
		Units:         1,
	}
	if r.hasUnits {
		ev.Units = r.units
	}
	if r.nprops > 0 {
		ev.Properties = make(map[string]string, r.nprops)
		for _, p := range r.props[:r.nprops] {
			ev.Properties[p[0]] = p[1]
		}
	}
	if math.IsNaN(ev.Units) || math.IsInf(ev.Units, 0) {
		// JSON has no such number: it would be sent as null, which the
		// collector takes for the default of 1 unit.
		return ev, fmt.Errorf("field \"units\": %v is not a finite number", ev.Units)
	}
	for _, f := range [...]struct{ name, v string }{{"api_key_id", ev.APIKeyID}, {"customer_id", ev.CustomerID}, {"route", ev.Route}} {
		if !utf8.ValidString(f.v) {
			return ev, fmt.Errorf("field %q: must be valid UTF-8", f.name)
		}
	}
	return ev, nil
}

// clientIP returns the address of a RemoteAddr ("203.0.113.7:5123",
// "[2001:db8::1]:443"), or "" when it holds none (a Unix socket). The
// address's own text is kept when it is already plain (no zone, not an
// IPv4-mapped IPv6), which saves an allocation per event.
func clientIP(remoteAddr string) string {
	host := remoteAddr
	if ap, err := netip.ParseAddrPort(remoteAddr); err == nil {
		host = strings.TrimPrefix(remoteAddr[:strings.LastIndexByte(remoteAddr, ':')], "[")
		host = strings.TrimSuffix(host, "]")
		if a := ap.Addr(); a.Zone() != "" || a.Is4In6() {
			return a.WithZone("").Unmap().String()
		}
		return host
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return ""
	}
	if a.Zone() != "" || a.Is4In6() {
		return a.WithZone("").Unmap().String()
	}
	return host
}

// answer is the collector's 202 body.
type answer struct {
	Accepted int `json:"accepted"`
	Rejected []struct {
		Index int    `json:"index"`
		Error string `json:"error"`
	} `json:"rejected"`
}

// post sends one body until the collector answers it, retrying network
// errors, 5xx and 429 with backoff, until ctx ends. ids are the events' ids
// in order. It returns the events accepted and rejected one by one, and
// why the others were not sent: ErrRefused, ErrRetriesExhausted or ctx's
// error. Every outcome is also counted in the meter's stats and logged.
func (m *Meter) post(ctx context.Context, raw []byte, ids []string) (accepted, rejected int, err error) {
	e := &m.enc
	e.gz.Reset()
	if e.zw == nil {
		e.zw, _ = gzip.NewWriterLevel(&e.gz, gzip.BestSpeed) // a valid level: no error
	} else {
		e.zw.Reset(&e.gz)
	}
	_, _ = e.zw.Write(raw)
	_ = e.zw.Close()
	// The halves of a split batch are compressed into the same buffer, so
	// this post's body is a copy.
	body := bytes.Clone(e.gz.Bytes())
	n := len(ids)

	var deadline time.Time
	for attempt := 0; ; attempt++ {
		code, retryAfter, ans, err := m.attempt(ctx, body)
		if ctx.Err() != nil && (err != nil || code != http.StatusAccepted) {
			m.stats.droppedUnsent.Add(uint64(n))
			m.cfg.Logger.Warn("meterline events not sent before the deadline", "events", n)
			return 0, 0, ctx.Err()
		}
		switch {
		case err == nil && code == http.StatusAccepted:
			m.accepted(ans, ids)
			return ans.Accepted, len(ans.Rejected), nil
		case err == nil && code == http.StatusRequestEntityTooLarge && n > 1:
			// A collector with smaller limits than the meter's: halve.
			m.cfg.Logger.Info("meterline collector refused a batch as too large; sending it in halves", "events", n, "bytes", len(raw))
			cut := cutLine(raw, n/2)
			a1, r1, err1 := m.post(ctx, raw[:cut], ids[:n/2])
			a2, r2, err2 := m.post(ctx, raw[cut:], ids[n/2:])
			return a1 + a2, r1 + r2, errors.Join(err1, err2)
		case err == nil && code != http.StatusTooManyRequests && code < 500:
			m.stats.droppedRefused.Add(uint64(n))
			m.cfg.Logger.Error("meterline collector refused a batch; its events are dropped", "status", code, "answer", ans.text, "events", n)
			return 0, 0, fmt.Errorf("%w: status %d: %s", ErrRefused, code, ans.text)
		}
		now := time.Now()
		if attempt == 0 {
			deadline = now.Add(m.cfg.MaxRetryTime)
		}
		wait := backoff(m.cfg.MinBackoff, m.cfg.MaxBackoff, attempt)
		wait = max(wait, retryAfter)
		if now.Add(wait).After(deadline) {
			m.stats.droppedGave.Add(uint64(n))
			m.cfg.Logger.Error("meterline collector unreachable; events dropped after retrying", "events", n, "attempts", attempt+1, "status", code, "err", errText(err))
			return 0, 0, fmt.Errorf("%w (%d attempts; last: status %d %s)", ErrRetriesExhausted, attempt+1, code, errText(err))
		}
		m.cfg.Logger.Debug("meterline batch retried", "events", n, "status", code, "err", errText(err), "wait", wait)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			m.stats.droppedUnsent.Add(uint64(n))
			m.cfg.Logger.Warn("meterline events not sent before the deadline", "events", n)
			return 0, 0, ctx.Err()
		}
		m.stats.retries.Add(1)
	}
}

// collectorAnswer is a parsed answer; text keeps an error body for the logs.
type collectorAnswer struct {
	answer
	text string
}

// attempt posts body once. It returns the status, the Retry-After the
// collector asked for (0 when none) and its parsed 202 answer.
func (m *Meter) attempt(ctx context.Context, body []byte) (int, time.Duration, collectorAnswer, error) {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, m.url, bytes.NewReader(body))
	if err != nil {
		return 0, 0, collectorAnswer{}, err
	}
	req.Header.Set("Content-Type", "application/x-ndjson")
	req.Header.Set("Content-Encoding", "gzip")
	if m.cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+m.cfg.Token)
	}
	resp, err := m.cfg.Client.Do(req)
	if err != nil {
		return 0, 0, collectorAnswer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes))
	if err != nil {
		return 0, 0, collectorAnswer{}, fmt.Errorf("reading the collector's answer: %w", err)
	}
	var ans collectorAnswer
	if resp.StatusCode == http.StatusAccepted {
		if err := json.Unmarshal(b, &ans.answer); err != nil {
			// Not the collector's answer (a proxy's page?): the events may
			// not have been accepted; retry them, the ids deduplicate.
			return resp.StatusCode, 0, ans, fmt.Errorf("202 answer is not the collector's: %v", err)
		}
	} else {
		ans.text = strings.TrimSpace(string(b[:min(len(b), 512)]))
	}
	return resp.StatusCode, retryAfter(resp.Header.Get("Retry-After"), time.Now()), ans, nil
}

// accepted counts a 202 answer and logs its rejections.
func (m *Meter) accepted(ans collectorAnswer, ids []string) {
	m.stats.sent.Add(uint64(ans.Accepted))
	m.stats.rejected.Add(uint64(len(ans.Rejected)))
	for i, rj := range ans.Rejected {
		if i == maxLoggedRejections {
			m.cfg.Logger.Warn("meterline events rejected by the collector (not logged one by one)", "more", len(ans.Rejected)-i)
			break
		}
		id := ""
		if rj.Index >= 0 && rj.Index < len(ids) {
			id = ids[rj.Index]
		}
		m.cfg.Logger.Warn("meterline event rejected by the collector", slog.Int("index", rj.Index), slog.String("id", id), slog.String("reason", rj.Error))
	}
}

// cutLine returns the offset just after the n-th newline of raw.
func cutLine(raw []byte, n int) int {
	off := 0
	for range n {
		i := bytes.IndexByte(raw[off:], '\n')
		if i < 0 {
			return len(raw)
		}
		off += i + 1
	}
	return off
}

// backoff is the wait before retry number attempt+1: full jitter over an
// exponential ceiling from min, capped at max, never below min.
func backoff(minWait, maxWait time.Duration, attempt int) time.Duration {
	ceil := maxWait
	if attempt < 30 {
		ceil = min(maxWait, minWait<<attempt)
	}
	return minWait + rand.N(max(ceil-minWait, 0)+1)
}

// maxRetryAfter bounds what a collector (or something posing as one) can
// make the meter wait.
const maxRetryAfter = 5 * time.Minute

// retryAfter parses a Retry-After header: delay seconds or an HTTP date.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	var d time.Duration
	if s, err := strconv.ParseUint(v, 10, 32); err == nil {
		d = time.Duration(s) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), maxRetryAfter)
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "request timed out: " + err.Error()
	}
	return err.Error()
}
