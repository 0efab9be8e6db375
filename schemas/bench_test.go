package schemas

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
)

// benchEvents returns n realistic canonical events: unique ids, keys, routes,
// gateways, addresses and user agents drawn from small pools as in real
// traffic, two properties each.
func benchEvents(n int) []Event {
	routes := []string{"/v1/pets", "/v1/pets/{id}", "/v1/orders", "/v1/orders/{id}/items", "/v1/search", "/healthz"}
	uas := []string{"curl/8.5.0", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36", "okhttp/4.12.0", "python-requests/2.32.3", "Go-http-client/2.0"}
	methods := []string{"GET", "GET", "GET", "POST", "PUT", "DELETE"}
	evs := make([]Event, n)
	base := testRef.Add(-time.Minute)
	for i := range evs {
		evs[i] = Event{
			ID:            fmt.Sprintf("01JD8X3V6Q2M9T5K7N%08d", i),
			Time:          base.Add(time.Duration(i) * time.Millisecond),
			APIKeyID:      fmt.Sprintf("key_live_%03d", i%50),
			CustomerID:    fmt.Sprintf("cus_%03d", i%50),
			Gateway:       []string{"eu-west-1", "us-east-1", "ap-south-1"}[i%3],
			Method:        methods[i%len(methods)],
			Route:         routes[i%len(routes)],
			Status:        []int{200, 200, 200, 201, 404, 500}[i%6],
			LatencyMS:     float64(i%997) / 7,
			RequestBytes:  uint64(i % 4096),
			ResponseBytes: uint64(i * 37 % 65536),
			ClientIP:      fmt.Sprintf("198.51.%d.%d", i%7, i%200),
			UserAgent:     uas[i%len(uas)],
			Units:         1,
			Properties:    map[string]string{"plan": []string{"free", "pro", "enterprise"}[i%3], "sdk": "go-1.4.2"},
		}
	}
	return evs
}

func benchBodies(n int) (array, ndjson, cloudevents []byte) {
	evs := benchEvents(n)
	var a, nd, ce []byte
	a = append(a, '[')
	ce = append(ce, '[')
	for i := range evs {
		if i > 0 {
			a = append(a, ',')
			ce = append(ce, ',')
		}
		a = evs[i].AppendJSON(a)
		nd = evs[i].AppendJSON(nd)
		nd = append(nd, '\n')
		// A CloudEvent: the envelope fields moved out of data.
		e := evs[i]
		ce = fmt.Appendf(ce, `{"specversion":"1.0","type":%q,"id":%q,"source":%q,"subject":%q,"time":%q,"data":`,
			CloudEventsType, e.ID, e.Gateway, e.APIKeyID, e.Time.Format(time.RFC3339Nano))
		e.ID, e.APIKeyID, e.Gateway = "", "", ""
		data := string(e.AppendJSON(nil))
		data = strings.Replace(data, `"id":"","time":"`+e.Time.UTC().Format("2006-01-02T15:04:05.000Z")+`","api_key_id":"",`, "", 1)
		ce = append(ce, data...)
		ce = append(ce, '}')
	}
	a = append(a, ']')
	ce = append(ce, ']')
	return a, nd, ce
}

// reportPerEvent adds ns/event and allocs/event, the figures capacity
// planning uses, next to the per-batch ones.
func reportPerEvent(b *testing.B, events int, run func()) {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for b.Loop() {
		run()
	}
	b.StopTimer()
	runtime.ReadMemStats(&after)
	total := float64(b.N) * float64(events)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/total, "ns/event")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/total, "allocs/event")
	b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/total, "B/event")
}

func BenchmarkDecodeBatch(b *testing.B) {
	const n = 1000
	array, ndjson, ce := benchBodies(n)
	for _, bc := range []struct {
		name, ct string
		body     []byte
	}{
		{"json", "application/json", array},
		{"ndjson", "application/x-ndjson", ndjson},
		{"cloudevents", "application/cloudevents-batch+json", ce},
	} {
		b.Run(fmt.Sprintf("%s-%d", bc.name, n), func(b *testing.B) {
			rs, err := Options{}.DecodeBatch(bc.ct, bc.body, testRef)
			if err != nil || len(rs) != n {
				b.Fatalf("%d results, %v", len(rs), err)
			}
			for _, r := range rs {
				if r.Err != nil {
					b.Fatal(r.Err)
				}
			}
			b.SetBytes(int64(len(bc.body)))
			b.ReportAllocs()
			reportPerEvent(b, n, func() {
				_, _ = Options{}.DecodeBatch(bc.ct, bc.body, testRef)
			})
		})
	}
}

func BenchmarkDecodeEvent(b *testing.B) {
	evs := benchEvents(100)
	msgs := make([][]byte, len(evs))
	for i := range evs {
		msgs[i] = evs[i].AppendJSON(nil)
	}
	b.ReportAllocs()
	i := 0
	reportPerEvent(b, 1, func() {
		if _, err := (Options{}).DecodeEvent(msgs[i%len(msgs)], testRef); err != nil {
			b.Fatal(err)
		}
		i++
	})
}

func BenchmarkAppendJSON(b *testing.B) {
	evs := benchEvents(100)
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	i := 0
	reportPerEvent(b, 1, func() {
		buf = evs[i%len(evs)].AppendJSON(buf[:0])
		i++
	})
	b.SetBytes(int64(len(buf)))
}
