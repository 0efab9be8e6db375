// Package httpmeter meters a Go net/http service into Meterline: a
// middleware turns every request it answers into one v1 request event and
// sends the events to the collector's POST /v1/events in gzip NDJSON
// batches, from a goroutine of its own.
//
// It never slows or fails the request it meters. The middleware records the
// status and body bytes the handler wrote, the latency around the handler,
// the request body's size (Content-Length, or the bytes the handler read of
// a chunked upload), the client's address (RemoteAddr; the collector
// anonymises it) and the route template, and puts the event in a bounded
// queue without blocking; when the queue is full the event is dropped and
// counted. No request header is sent unless Config.SendUserAgent asks for
// the User-Agent.
//
//	m, err := httpmeter.New(httpmeter.Config{
//		Endpoint: "https://meterline.internal:8080",
//		Token:    os.Getenv("METERLINE_INGEST_TOKEN"),
//		KeyFunc: func(r *http.Request) (apiKeyID, customerID string) {
//			return r.Header.Get("X-Api-Key-Id"), ""
//		},
//	})
//	...
//	http.ListenAndServe(":8081", m.Middleware(mux))
//	...
//	m.Close(ctx) // at shutdown: sends what is held, until ctx ends
//
// Routes: under Go's ServeMux the template is the matched pattern
// (r.Pattern, without its method and host), read after the handler
// returned; ServeMux sets it on the request it was given, so put the
// middleware directly around the mux (a middleware in between that replaces
// the request, as r.WithContext does, hides the pattern). Other routers name it through Config.RouteFunc (chi:
// chi.RouteContext(r.Context()).RoutePattern()) or from inside the handler
// with SetRoute (gin: c.FullPath(); echo: c.Path()), which finds the
// middleware's writer under the router's own through the Unwrap method
// those writers have for http.ResponseController. SetUnits sets
// the billable units of a request (default 1), SetProperty adds up to four
// event properties (gateway/httplimit names a refusal's reason with it). The wrapped writer keeps
// http.Flusher and http.Hijacker exactly when the server's writer has them,
// io.ReaderFrom (sendfile), and Unwrap for http.ResponseController. A
// handler that wrote nothing is metered as 200, as net/http answers it; a
// hijacked connection as 101 unless a status was written before.
//
// Each event has a random 128-bit id (32 hex digits) and the request's start
// time in UTC. A batch is posted when it holds Config.BatchSize events or
// Config.MaxBatchBytes of NDJSON, or Config.FlushInterval after its first
// event. Network errors, 429 and 5xx are retried with exponential backoff
// and full jitter, never sooner than the collector's Retry-After, for up to
// Config.MaxRetryTime; a retried batch is stored once, because the pipeline
// deduplicates by event id. Another 4xx drops the batch (logged, counted). A
// 413 splits the batch in halves. Events the collector rejects one by one
// (an invalid field, such as a key id over 128 bytes from KeyFunc) are
// counted and logged with the collector's reason, and not retried; the other
// events of their batch are stored.
//
// Defaults (each stated on its Config field): Token none, RouteFunc
// r.Pattern, Gateway the token's name, SendUserAgent false, QueueSize 10000,
// BatchSize 1000, MaxBatchBytes 1 MiB, FlushInterval 1s, RequestTimeout 10s,
// MinBackoff 100ms, MaxBackoff 30s, MaxRetryTime 1m, Client a client of its
// own, Registerer none, Logger slog.Default().
//
// Metrics (on Config.Registerer): meterline_client_events_enqueued_total,
// meterline_client_events_sent_total, meterline_client_events_rejected_total,
// meterline_client_retries_total,
// meterline_client_events_dropped_total{reason} (queue_full, refused,
// retries_exhausted, unsent, closed), meterline_client_queue_depth and
// meterline_client_queue_capacity. Meter.Stats reports the same counts.
//
// The package imports the standard library, the Prometheus client and
// Meterline's event contract (package schemas, standard library only), so
// the binary it goes into carries no Kafka client or ClickHouse engine.
package httpmeter
