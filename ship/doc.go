// Package ship turns a gateway's access log into Meterline v1 request
// events and posts them to the collector: `meterline ship caddy` reads
// Caddy's JSON access log, from a file it follows (with a position file, so
// that a restart neither loses nor repeats a line) or from a TCP listener
// that Caddy's `output net` writes to.
//
// Each log line becomes at most one event (see Mapper for the field
// mapping). A line that is not JSON, not an access log entry, over the
// size limit or with values the event cannot carry is counted
// (meterline_ship_lines_skipped_total{reason}), logged without its content
// and skipped; the lines around it are shipped. Events go to the collector
// through httpmeter.Poster (gzip NDJSON, retries honouring Retry-After).
// In file mode the position advances only past lines whose events the
// collector answered, and every event's id is derived from its line (the
// request id Caddy logged, else a hash of the line), so a line read twice
// after a crash is stored once.
package ship
