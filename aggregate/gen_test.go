package aggregate_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// generator makes random request events over a few customers, with keys
// drawn from a Zipf distribution (a few keys carry most of the traffic).
type generator struct {
	r         *rand.Rand
	prefix    string
	customers []string
	keys      []string // keys[i] belongs to customers[i % len(customers)]
	zipf      *rand.Zipf
	n         int
}

func newGenerator(seed uint64, prefix string, customers, keys int) *generator {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	g := &generator{r: r, prefix: prefix}
	for i := range customers {
		g.customers = append(g.customers, fmt.Sprintf("%s-cust-%d", prefix, i))
	}
	for i := range keys {
		g.keys = append(g.keys, fmt.Sprintf("%s-key-%d", prefix, i))
	}
	g.zipf = rand.NewZipf(r, 1.3, 1, uint64(keys-1))
	return g
}

var (
	genRoutes   = []string{"/v1/pets", "/v1/pets/{id}", "/v1/orders", "/v1/orders/{id}/items", "/v1/search", ""}
	genMethods  = []string{"GET", "GET", "GET", "POST", "PUT", "DELETE", ""}
	genStatuses = []int{200, 200, 200, 200, 201, 204, 101, 301, 304, 400, 401, 404, 404, 429, 500, 502, 503}
	genGateways = []string{"edge-eu", "edge-us", "edge-ap", ""}
)

// event returns a new event (fresh id) at time at.
func (g *generator) event(at time.Time) testEvent {
	g.n++
	k := int(g.zipf.Uint64())
	r := g.r
	e := testEvent{
		ID:        fmt.Sprintf("%s-ev-%d", g.prefix, g.n),
		Key:       g.keys[k],
		Customer:  g.customers[k%len(g.customers)],
		Gateway:   genGateways[r.IntN(len(genGateways))],
		Method:    genMethods[r.IntN(len(genMethods))],
		Route:     genRoutes[r.IntN(len(genRoutes))],
		Status:    genStatuses[r.IntN(len(genStatuses))],
		Time:      at.UTC().Truncate(time.Millisecond),
		LatencyMS: math.Round(math.Exp(r.NormFloat64()*1.2+3)*1000) / 1000, // log-normal, ~20 ms median
		ReqBytes:  uint64(r.IntN(5000)),
		RespBytes: uint64(r.IntN(200_000)),
		Units:     fmt.Sprintf("%d.%06d", r.IntN(100), r.IntN(1_000_000)),
	}
	switch x := r.IntN(10); {
	case x < 6: // anonymised IPv4: /24 kept
		e.IP = fmt.Sprintf("203.0.%d.0", r.IntN(40))
	case x < 8: // anonymised IPv6: /48 kept
		e.IP = fmt.Sprintf("2001:db8:%x::", r.IntN(30))
	}
	return e
}

// between returns a random time in [a, b).
func (g *generator) between(a, b time.Time) time.Time {
	return a.Add(time.Duration(g.r.Int64N(int64(b.Sub(a)))))
}
