package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/internal/retry"
)

const demoSynopsis = `demo [flags]

Sends realistic traffic for the development catalogue's customers
(deploy/catalogue.dev.yaml: acme on the starter plan with keys key_demo and
key_acme_2, globex on the pro plan with key_globex) to a running Meterline,
as a gateway would: first the past --history (hours that are already settled,
so the billing worker reports them to Stripe at its next run), then live
traffic at --rate events per second. acme's history takes it just past 80 %
of its 1,000 included units, so the first usage alert is sent within a minute
and the live traffic crosses 100 % and then the hard limit (1,200) in a few
minutes; past the hard limit the demo refuses acme's requests as a gateway
would (status 429, no units). The demo listens for the alert webhook on
--alerts-listen (the catalogue's alert_webhook), checks each delivery's
signature and prints it. Every 15 s it prints each customer's usage of the
month from GET /v1/limits. Stops on Ctrl-C or after --duration; events are
posted in batches and retried on 503, and ids are unique per run, so running
it twice adds twice the traffic and never doubles an event.`

// demoCustomer is one customer of the development catalogue as the demo
// plays it.
type demoCustomer struct {
	id      string
	keys    []string // the first takes most of the traffic
	share   float64  // of the live rate
	history float64  // units sent for the past --history
}

var demoCustomers = []demoCustomer{
	{id: "acme", keys: []string{"key_demo", "key_acme_2"}, share: 0.35, history: 850},
	{id: "globex", keys: []string{"key_globex"}, share: 0.65, history: 3000},
}

// demoRoute is a route template with its traffic share and unit cost.
type demoRoute struct {
	method, route string
	weight        int
	units         int
}

var demoRoutes = []demoRoute{
	{"GET", "/v1/pets/{id}", 40, 1},
	{"GET", "/v1/pets", 20, 1},
	{"POST", "/v1/orders", 10, 2},
	{"GET", "/v1/orders/{id}", 15, 1},
	{"GET", "/v1/search", 10, 3},
	{"DELETE", "/v1/pets/{id}", 5, 1},
}

type demoEvent struct {
	ID            string  `json:"id"`
	Time          string  `json:"time"`
	APIKeyID      string  `json:"api_key_id"`
	CustomerID    string  `json:"customer_id"`
	Gateway       string  `json:"gateway"`
	Method        string  `json:"method"`
	Route         string  `json:"route"`
	Status        int     `json:"status"`
	LatencyMS     float64 `json:"latency_ms"`
	RequestBytes  int     `json:"request_bytes"`
	ResponseBytes int     `json:"response_bytes"`
	ClientIP      string  `json:"client_ip"`
	UserAgent     string  `json:"user_agent"`
	Units         float64 `json:"units"`
}

// demo is one run's state.
type demo struct {
	base, token, adminToken string
	client                  *http.Client
	rng                     *rand.Rand
	prefix                  string // of event ids: unique per run
	seq                     int
	stdout, stderr          io.Writer
	out                     sync.Mutex // stdout and stderr lines

	mu      sync.Mutex
	blocked map[string]bool // customers over their hard limit
	sent    map[string]int  // accepted events per customer
}

func runDemo(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", demoSynopsis, stderr)
	base := fs.String("url", envOr("METERLINE_URL", "http://127.0.0.1:8080"), "Meterline's `base URL` (env METERLINE_URL)")
	token := fs.String("token", "", "ingest `token` for POST /v1/events (env METERLINE_INGEST_TOKEN)")
	adminToken := fs.String("admin-token", "", "admin `token` for GET /v1/limits (env METERLINE_TOKEN); without it no usage lines are printed and the hard limit is not enforced")
	listen := fs.String("alerts-listen", "127.0.0.1:8099", "`address` to receive usage alerts on (the catalogue's alert_webhook); empty: none")
	secretEnv := fs.String("webhook-secret-env", "METERLINE_LIMITS_WEBHOOK_SECRET", "environment `variable` holding limits.webhook_secret, to check each alert's signature; unset: alerts are printed unchecked")
	history := fs.Duration("history", 6*time.Hour, "how far back the first traffic goes (at most 720h)")
	rate := fs.Float64("rate", 4, "live events per second, all customers together (0: history only)")
	duration := fs.Duration("duration", 0, "stop after this long (0: until Ctrl-C)")
	seed := fs.Uint64("seed", 0, "random seed (0: a new one each run)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := noArgs(fs, stderr); err != nil {
		return err
	}
	if *token == "" {
		*token = os.Getenv("METERLINE_INGEST_TOKEN")
	}
	if *adminToken == "" {
		*adminToken = os.Getenv("METERLINE_TOKEN")
	}
	var bad []string
	if *token == "" {
		bad = append(bad, "give --token (an ingest token) or set METERLINE_INGEST_TOKEN; `make demo` passes the development one")
	}
	if *history < time.Minute || *history > 720*time.Hour {
		bad = append(bad, fmt.Sprintf("--history %s: want 1m to 720h", *history))
	}
	if *rate < 0 || *rate > 1000 || math.IsNaN(*rate) {
		bad = append(bad, fmt.Sprintf("--rate %g: want 0 to 1000 events per second", *rate))
	}
	if *duration < 0 {
		bad = append(bad, "--duration: negative")
	}
	if len(bad) > 0 {
		fmt.Fprintln(stderr, strings.Join(bad, "\n"))
		return errUsage
	}
	s := *seed
	if s == 0 {
		s = rand.Uint64()
	}
	d := &demo{
		base: strings.TrimRight(*base, "/"), token: *token, adminToken: *adminToken,
		client: &http.Client{Timeout: 30 * time.Second},
		rng:    rand.New(rand.NewPCG(s, s^0x9e3779b97f4a7c15)),
		prefix: fmt.Sprintf("demo-%08x", rand.Uint32()),
		stdout: stdout, stderr: stderr,
		blocked: map[string]bool{}, sent: map[string]int{},
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	if *listen != "" {
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			return fmt.Errorf("--alerts-listen %s: %w (another demo running? `make stop` ends it)", *listen, err)
		}
		srv := &http.Server{Handler: d.alertReceiver(os.Getenv(*secretEnv)), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		d.say("receiving usage alerts on http://%s/alerts", ln.Addr())
	}

	if err := d.sendHistory(ctx, *history); err != nil {
		return err
	}
	if *adminToken != "" {
		go d.watchLimits(ctx)
	}
	if *rate > 0 {
		d.say("live traffic: %g events per second; Ctrl-C stops", *rate)
		if err := d.sendLive(ctx, *rate); err != nil {
			return err
		}
	} else {
		<-ctx.Done()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.say("stopped; events accepted: acme %d, globex %d", d.sent["acme"], d.sent["globex"])
	d.say("look at %s/ui/overview, %s/ui/customers/acme and %s/ui/finance (sign in with the admin token)", d.base, d.base, d.base)
	return nil
}

func (d *demo) say(format string, a ...any) {
	d.out.Lock()
	defer d.out.Unlock()
	fmt.Fprintf(d.stdout, "demo: "+format+"\n", a...)
}

// event draws one request of customer c at time t.
func (d *demo) event(c demoCustomer, t time.Time) demoEvent {
	w := 0
	for _, r := range demoRoutes {
		w += r.weight
	}
	pick, r := d.rng.IntN(w), demoRoutes[0]
	for _, x := range demoRoutes {
		if pick < x.weight {
			r = x
			break
		}
		pick -= x.weight
	}
	key := c.keys[0]
	if len(c.keys) > 1 && d.rng.IntN(4) == 0 {
		key = c.keys[1+d.rng.IntN(len(c.keys)-1)]
	}
	status := 200
	switch p := d.rng.IntN(100); {
	case r.method == "POST" && p < 90:
		status = 201
	case p < 4:
		status = 404
	case p < 6:
		status = 400
	case p < 7:
		status = 500
	}
	d.seq++
	units := float64(r.units)
	if status >= 400 {
		units = 0 // the plans bill successful requests only
	}
	return demoEvent{
		ID: fmt.Sprintf("%s-%d", d.prefix, d.seq), Time: t.UTC().Format(time.RFC3339Nano),
		APIKeyID: key, CustomerID: c.id, Gateway: "demo-gateway", Method: r.method, Route: r.route, Status: status,
		LatencyMS:     math.Round(math.Exp(math.Log(25)+0.7*d.rng.NormFloat64())*10) / 10,
		RequestBytes:  200 + d.rng.IntN(800),
		ResponseBytes: 500 + d.rng.IntN(20000),
		ClientIP:      fmt.Sprintf("203.0.113.%d", 1+d.rng.IntN(250)),
		UserAgent:     "meterline-demo/1",
		Units:         units,
	}
}

// sendHistory sends each customer's history: units up to its target,
// spread over the past span, oldest first.
func (d *demo) sendHistory(ctx context.Context, span time.Duration) error {
	now := time.Now()
	var evs []demoEvent
	for _, c := range demoCustomers {
		var units float64
		for units < c.history {
			e := d.event(c, now.Add(-time.Duration(d.rng.Int64N(int64(span-time.Minute)))-time.Minute))
			if units+e.Units > c.history {
				continue
			}
			units += e.Units
			evs = append(evs, e)
		}
		d.say("history: %s, %.0f units over the past %s", c.id, units, span)
	}
	for len(evs) > 0 {
		n := min(500, len(evs))
		if err := d.post(ctx, evs[:n]); err != nil {
			return err
		}
		evs = evs[n:]
	}
	return nil
}

// sendLive sends rate events per second, in batches every 500 ms, until ctx
// ends.
func (d *demo) sendLive(ctx context.Context, rate float64) error {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	var owed float64
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		owed += rate / 2
		var evs []demoEvent
		now := time.Now()
		for ; owed >= 1; owed-- {
			c := demoCustomers[len(demoCustomers)-1]
			p := d.rng.Float64()
			for _, x := range demoCustomers {
				if p < x.share {
					c = x
					break
				}
				p -= x.share
			}
			e := d.event(c, now)
			d.mu.Lock()
			if d.blocked[c.id] {
				// What a gateway does past the hard limit: refuse, and
				// still report the request, without units.
				e.Status, e.Units, e.LatencyMS = 429, 0, 0.4
			}
			d.mu.Unlock()
			evs = append(evs, e)
		}
		if len(evs) > 0 {
			if err := d.post(ctx, evs); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		}
	}
}

// post sends one batch, retrying while the collector answers 503 or cannot
// be reached; per-event rejections are printed, not retried.
func (d *demo) post(ctx context.Context, evs []demoEvent) error {
	body, err := json.Marshal(evs)
	if err != nil {
		return err
	}
	b := retry.NewBackoff(200*time.Millisecond, 5*time.Second)
	for attempt := 1; ; attempt++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.base+"/v1/events", bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+d.token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := d.client.Do(req)
		wait := b.Next()
		if err == nil {
			ans, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			switch {
			case resp.StatusCode == http.StatusAccepted || resp.StatusCode == http.StatusOK:
				return d.accepted(evs, ans)
			case resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusTooManyRequests:
				if ra := retry.ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now(), 30*time.Second); ra > 0 {
					wait = ra
				}
			case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
				return fmt.Errorf("POST /v1/events: %s: is --token an ingest token of this server? %s", resp.Status, retry.CleanText(string(ans), 300))
			default:
				return fmt.Errorf("POST /v1/events: %s: %s", resp.Status, retry.CleanText(string(ans), 300))
			}
		} else if ctx.Err() != nil {
			return ctx.Err()
		} else if attempt == 1 {
			d.say("cannot reach %s (%v); is `make run` going? retrying", d.base, err)
		}
		if !retry.Sleep(ctx, wait) {
			return ctx.Err()
		}
	}
}

// accepted counts a batch's accepted events per customer and prints its
// rejections.
func (d *demo) accepted(evs []demoEvent, ans []byte) error {
	var r struct {
		Accepted int `json:"accepted"`
		Rejected []struct {
			Index int    `json:"index"`
			Error string `json:"error"`
		} `json:"rejected"`
	}
	if err := json.Unmarshal(ans, &r); err != nil {
		return fmt.Errorf("POST /v1/events: unreadable answer: %w", err)
	}
	refused := map[int]bool{}
	for _, x := range r.Rejected {
		refused[x.Index] = true
		d.say("event %d rejected: %s", x.Index, retry.CleanText(x.Error, 300))
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, e := range evs {
		if !refused[i] {
			d.sent[e.CustomerID]++
		}
	}
	return nil
}

// watchLimits prints every customer's usage of the month every 15 s (the
// first at once) and marks the ones over their hard limit.
func (d *demo) watchLimits(ctx context.Context) {
	tick := time.NewTicker(15 * time.Second)
	defer tick.Stop()
	for {
		var parts []string
		for _, c := range demoCustomers {
			l, err := d.limits(ctx, c.keys[0])
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				parts = append(parts, c.id+": "+err.Error())
				continue
			}
			hard := "no hard limit"
			if l.HardLimit != nil {
				hard = fmt.Sprintf("hard limit %g", *l.HardLimit)
			}
			parts = append(parts, fmt.Sprintf("%s %g of %g units (%s)", c.id, l.Used, l.Included, hard))
			d.mu.Lock()
			if l.OverHardLimit && !d.blocked[c.id] {
				d.say("%s is over its hard limit: its requests are now refused (status 429), as a gateway enforcing GET /v1/limits would", c.id)
			}
			d.blocked[c.id] = l.OverHardLimit
			d.mu.Unlock()
		}
		d.say("usage this month: %s", strings.Join(parts, "; "))
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (d *demo) limits(ctx context.Context, key string) (*limits.Limit, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.base+"/v1/limits/"+key, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+d.adminToken)
	resp, err := d.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("GET /v1/limits/%s: %s %s", key, resp.Status, retry.CleanText(string(b), 200))
	}
	var l limits.Limit
	if err := json.NewDecoder(resp.Body).Decode(&l); err != nil {
		return nil, err
	}
	return &l, nil
}

// alertReceiver prints each usage alert, after checking its signature when
// the secret is known. It answers 204 for a good delivery and 401 for a bad
// signature (the sender then retries and finally records the failure).
func (d *demo) alertReceiver(secret string) http.Handler {
	var seen sync.Map // delivery ids: a delivery may arrive twice
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST alerts here", http.StatusMethodNotAllowed)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, "unreadable body", http.StatusBadRequest)
			return
		}
		checked := "signature not checked (no secret given)"
		if secret != "" {
			if err := limits.VerifySignature(secret, r.Header.Get(limits.HeaderSignature), body, 0); err != nil {
				d.say("alert refused: %v", err)
				http.Error(w, "bad signature", http.StatusUnauthorized)
				return
			}
			checked = "signature good"
		}
		id := r.Header.Get(limits.HeaderDelivery)
		if _, dup := seen.LoadOrStore(id, true); dup && id != "" {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		var ev limits.AlertEvent
		if err := json.Unmarshal(body, &ev); err != nil {
			d.say("alert with an unreadable body: %v", err)
			http.Error(w, "unreadable alert", http.StatusBadRequest)
			return
		}
		d.say("ALERT %s: %s crossed %.0f %% of its %g included units (used %g; delivery %s; %s)",
			ev.Type, ev.CustomerID, ev.Threshold*100, ev.Included, ev.Used, id, checked)
		w.WriteHeader(http.StatusNoContent)
	})
}
