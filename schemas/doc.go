// Package schemas defines the v1 request event that gateways send to
// Meterline, its validation, its canonical JSON encoding and its published
// JSON Schema (event.schema.json).
//
// Every path into the pipeline (HTTP batches at the collector, messages
// produced straight to Kafka and read by the sink) goes through the same
// decoder, so an event is judged by one set of rules wherever it enters. The
// decoder is hand-written over the raw bytes rather than built on
// encoding/json because it sits on the hot path (about 100k events/s per
// collector) and because the rules need things encoding/json hides:
// duplicate keys, the exact JSON type and text of numbers, and per-event
// errors inside a batch that is otherwise fine.
//
// The canonical JSON produced by [Event.AppendJSON] is the Kafka message
// value; decoding it again yields an identical [Event].
package schemas
