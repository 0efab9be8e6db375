package bench

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/meterline/meterline/schemas"
)

// Traffic shapes the generated gateway traffic. The zero value of a field
// takes the default named in its comment.
type Traffic struct {
	// Customers is how many customers send traffic; their shares follow a
	// Zipf law (a few large customers, a long tail). Default 1000.
	Customers int
	// KeysPerCustomer is how many API keys each customer has; a customer's
	// keys are Zipf-distributed too. Default 10.
	KeysPerCustomer int
	// ErrorRate is the share of requests answered 4xx or 5xx (3:1). Default 0.02.
	ErrorRate float64
	// DupRate is the share of sends that repeat an event sent shortly
	// before, byte for byte, as a retrying gateway does. Default 0.05; set
	// a negative value for none.
	DupRate float64
	// LateRate is the share of events whose time lies Lateness or more in
	// the past (a gateway that buffered them). Default 0.05; negative for none.
	LateRate float64
	// Lateness is the minimum age of a late event; late events are spread
	// over [Lateness, 2*Lateness). Default 5m (beyond the aggregator's
	// default overlap of 2m, so they land in windows already rolled up).
	Lateness time.Duration
	// Prefix starts every customer and event id, so that one run's events
	// can be told from another's in a shared table. Required.
	Prefix string
}

// WithDefaults fills unset fields.
func (t Traffic) WithDefaults() Traffic {
	if t.Customers == 0 {
		t.Customers = 1000
	}
	if t.KeysPerCustomer == 0 {
		t.KeysPerCustomer = 10
	}
	if t.ErrorRate == 0 {
		t.ErrorRate = 0.02
	}
	if t.DupRate == 0 {
		t.DupRate = 0.05
	}
	if t.LateRate == 0 {
		t.LateRate = 0.05
	}
	if t.Lateness == 0 {
		t.Lateness = 5 * time.Minute
	}
	return t
}

// route is one endpoint of the simulated API with its share of traffic and
// the shape of its latency and bodies.
type route struct {
	method, path string
	weight       float64
	latencyMS    float64 // median
	reqBytes     float64 // median; 0 for bodiless requests
	respBytes    float64 // median
	units        float64
}

var routes = []route{
	{"GET", "/v1/pets", 22, 35, 0, 4200, 1},
	{"GET", "/v1/pets/{id}", 30, 12, 0, 850, 1},
	{"POST", "/v1/pets", 6, 48, 620, 900, 1},
	{"PUT", "/v1/pets/{id}", 3, 40, 540, 880, 1},
	{"DELETE", "/v1/pets/{id}", 1, 25, 0, 0, 1},
	{"GET", "/v1/orders", 8, 60, 0, 9600, 1},
	{"GET", "/v1/orders/{id}", 9, 18, 0, 1500, 1},
	{"POST", "/v1/orders", 4, 95, 1400, 1700, 2},
	{"GET", "/v1/search", 11, 140, 0, 15000, 5},
	{"POST", "/v1/images/resize", 2, 420, 250000, 90000, 10},
	{"GET", "/v1/me", 4, 6, 0, 300, 0},
}

var userAgents = []string{
	"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
	"Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
	"okhttp/4.12.0", "python-requests/2.32.3", "Go-http-client/2.0", "curl/8.5.0", "axios/1.7.7", "petstore-sdk-js/3.1.0",
}

var (
	gateways = []string{"eu-west-1", "us-east-1", "ap-south-1"}
	plans    = []string{"free", "pro", "pro", "enterprise"}
	regions  = []string{"eu", "us", "us", "apac"}
	sdks     = []string{"js-3.1.0", "python-2.4.1", "go-1.9.0", "none"}
)

// Generator produces gateway events. It is not safe for concurrent use:
// give each sender its own, with its own stream id.
type Generator struct {
	t        Traffic
	rng      *rand.Rand
	custZipf *rand.Zipf
	keyZipf  *rand.Zipf
	routeCum []float64
	custIDs  []string
	keyIDs   [][]string
	stream   string
	seq      uint64

	recent     []sent // ring of recently sent events, for duplicates
	recentNext int
	ev         schemas.Event
	props      [3]map[string]string

	// Counters of what was generated.
	Events, Dups, Late, Errors int64
}

const recentRing = 4096

// sent is an event as it was sent: its Kafka key and encoded form.
type sent struct {
	key string
	enc []byte
}

// NewGenerator returns a generator for stream (a short name unique among
// the generators of a run: it makes event ids unique) seeded with seed.
func NewGenerator(t Traffic, stream string, seed uint64) *Generator {
	t = t.WithDefaults()
	rng := rand.New(rand.NewPCG(seed, 0x6d65746572))
	g := &Generator{t: t, rng: rng, stream: stream}
	g.custZipf = rand.NewZipf(rng, 1.1, 1, uint64(t.Customers-1))
	if t.KeysPerCustomer > 1 {
		g.keyZipf = rand.NewZipf(rng, 1.5, 1, uint64(t.KeysPerCustomer-1))
	}
	var sum float64
	for _, r := range routes {
		sum += r.weight
		g.routeCum = append(g.routeCum, sum)
	}
	g.custIDs = make([]string, t.Customers)
	g.keyIDs = make([][]string, t.Customers)
	for c := range g.custIDs {
		g.custIDs[c] = fmt.Sprintf("%s-cus-%04d", t.Prefix, c)
		g.keyIDs[c] = make([]string, t.KeysPerCustomer)
		for k := range g.keyIDs[c] {
			g.keyIDs[c][k] = fmt.Sprintf("%s-key-%04d-%02d", t.Prefix, c, k)
		}
	}
	for i := range g.props {
		g.props[i] = map[string]string{}
	}
	return g
}

// CustomerPrefix is what every customer id of the traffic starts with.
func (t Traffic) CustomerPrefix() string { return t.Prefix + "-cus-" }

// Append appends one encoded event (canonical v1 JSON) to dst. key is its
// api_key_id (the Kafka message key); dup reports whether it repeats an
// earlier event of this generator (same bytes).
func (g *Generator) Append(dst []byte, now time.Time) (out []byte, key string, dup bool) {
	if g.t.DupRate > 0 && g.Events > 0 && g.rng.Float64() < g.t.DupRate {
		old := &g.recent[g.rng.IntN(len(g.recent))]
		g.Dups++
		g.Events++
		return append(dst, old.enc...), old.key, true
	}
	start := len(dst)
	e := g.next(now)
	dst = e.AppendJSON(dst)
	enc := dst[start:]
	if len(g.recent) < recentRing {
		g.recent = append(g.recent, sent{e.APIKeyID, append([]byte(nil), enc...)})
	} else {
		r := &g.recent[g.recentNext]
		r.key, r.enc = e.APIKeyID, append(r.enc[:0], enc...)
		g.recentNext = (g.recentNext + 1) % recentRing
	}
	g.Events++
	return dst, e.APIKeyID, false
}

// next fills the generator's event with a new request. The event and its
// properties map are reused by the next call.
func (g *Generator) next(now time.Time) *schemas.Event {
	g.seq++
	c := int(g.custZipf.Uint64())
	k := 0
	if g.keyZipf != nil {
		k = int(g.keyZipf.Uint64())
	}
	r := &routes[g.pickRoute()]
	e := &g.ev
	*e = schemas.Event{Properties: e.Properties}
	e.ID = g.t.Prefix + "-" + g.stream + "-" + strconv.FormatUint(g.seq, 36)
	// Most events are a few ms to 2 s old when they arrive; late ones were
	// held back by the gateway.
	age := time.Duration(g.rng.ExpFloat64() * float64(300*time.Millisecond))
	if g.t.LateRate > 0 && g.rng.Float64() < g.t.LateRate {
		age = g.t.Lateness + time.Duration(g.rng.Float64()*float64(g.t.Lateness))
		g.Late++
	}
	e.Time = now.Add(-age).UTC().Truncate(time.Millisecond)
	e.APIKeyID = g.keyIDs[c][k]
	e.CustomerID = g.custIDs[c]
	e.Gateway = gateways[c%len(gateways)]
	e.Method = r.method
	e.Route = r.path
	e.Status = 200
	if r.method == "POST" {
		e.Status = 201
	}
	if g.rng.Float64() < g.t.ErrorRate {
		g.Errors++
		if g.rng.IntN(4) == 0 {
			e.Status = []int{500, 502, 503, 504}[g.rng.IntN(4)]
		} else {
			e.Status = []int{400, 401, 403, 404, 409, 422, 429}[g.rng.IntN(7)]
		}
	}
	e.LatencyMS = math.Round(lognormal(g.rng, r.latencyMS, 0.7)*1000) / 1000
	if r.reqBytes > 0 {
		e.RequestBytes = uint64(lognormal(g.rng, r.reqBytes, 0.5))
	}
	if r.respBytes > 0 && e.Status < 400 {
		e.ResponseBytes = uint64(lognormal(g.rng, r.respBytes, 0.8))
	} else if e.Status >= 400 {
		e.ResponseBytes = uint64(80 + g.rng.IntN(200))
	}
	e.ClientIP = "198.51." + strconv.Itoa(c%256) + "." + strconv.Itoa(1+g.rng.IntN(254))
	e.UserAgent = userAgents[(c+k)%len(userAgents)]
	e.Units = r.units
	p := g.props[c%len(g.props)]
	p["plan"] = plans[c%len(plans)]
	p["region"] = regions[c%len(regions)]
	p["sdk"] = sdks[(c+k)%len(sdks)]
	e.Properties = p
	return e
}

func (g *Generator) pickRoute() int {
	x := g.rng.Float64() * g.routeCum[len(g.routeCum)-1]
	for i, c := range g.routeCum {
		if x < c {
			return i
		}
	}
	return len(g.routeCum) - 1
}

// lognormal draws from a log-normal distribution with the given median.
func lognormal(rng *rand.Rand, median, sigma float64) float64 {
	return median * math.Exp(sigma*rng.NormFloat64())
}

// AppendBatch appends n events as a JSON array (the collector's
// application/json body) and returns the buffer and how many of the n were
// duplicates.
func (g *Generator) AppendBatch(dst []byte, n int, now time.Time) ([]byte, int) {
	dups := 0
	dst = append(dst, '[')
	for i := 0; i < n; i++ {
		if i > 0 {
			dst = append(dst, ',')
		}
		var dup bool
		dst, _, dup = g.Append(dst, now)
		if dup {
			dups++
		}
	}
	return append(dst, ']'), dups
}
