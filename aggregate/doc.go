// Package aggregate keeps the usage rollups (per minute, hour, day and
// month) and answers usage queries from them.
//
// # Why re-aggregation and not a materialized view
//
// The raw table holds physical duplicates of an event until its parts merge
// (a gateway retry, a Kafka redelivery): see schemas/sql/0001_events.sql. A
// materialized view sees every inserted copy and would count each. The
// rollups are therefore recomputed from deduplicated input ("events FINAL"),
// driven by a watermark on ingested_at, the time the sink stamped on each
// row when it inserted it:
//
//   - Every Config.Interval the Aggregator takes a bound B = now -
//     Config.Settle (so that an insert in flight has landed) and the
//     watermark W that the last tick saved, and finds the dirty groups: the
//     distinct (customer_id, api_key_id, minute) of the rows ingested in
//     (W - Config.Overlap, B]. The overlap re-does a little work to cover
//     clock skew between sink and aggregator and inserts slower than Settle.
//   - In ClickHouse (INSERT ... SELECT; no row passes through Go) it
//     recomputes usage_minute for exactly those groups from events FINAL,
//     usage_hour for their hours from usage_minute FINAL (merging the
//     quantile and distinct-IP states), usage_day from usage_hour FINAL and
//     usage_month from usage_day FINAL (UTC days and months).
//   - It recomputes the narrow rollups (per customer, key and window only;
//     see Reading) of the same windows, each level right after the wide one.
//   - Only after all levels succeeded does it save W = B, so a crash
//     re-does the tick; a tick is idempotent.
//
// Every rollup table is a ReplacingMergeTree versioned by computed_at, which
// the INSERT ... SELECT sets to now64(3): a recomputed window replaces its
// earlier row, so a window rolled up twice never counts twice, and a late
// event (any age the ingest accepts, 35 days by default) simply makes its old
// window dirty again. Duplicates never count because the input is FINAL.
//
// One aggregator per deployment is expected. Two at once are still correct:
// each computation reads the state at its start and stamps the engine's
// now64(3) (one clock, the engine's), so the computation that started last,
// which saw the most data, wins; every change to a lower level is followed
// in the same tick by a recomputation of the levels above it; and a
// watermark that moves back when the slower one saves it only causes
// re-work. Clocks of sink and aggregator machines should agree within
// Config.Overlap.
//
// A tick works in slices of consecutive UTC days holding at most about half
// a million dirty groups (a day with more is split by a hash of customer and
// key), so the memory of one statement stays bounded after a backfill; a
// slice holds whole days of a key, which keeps the levels above consistent.
// The cost of a tick follows the raw rows in its dirty minutes: about
// Overlap + Interval + Settle (plus a minute) of ingest in steady state, and
// about 2 minutes for the first tick over 10 million events on 2 cores.
//
// # Reading
//
// Querier.Usage reads rollups for closed windows and the raw table only for
// the open edge. With T the minute of the watermark, rows come from the
// rollup table of the requested granularity for windows that end by the
// start of the window holding T, from usage_minute up to T, and from events
// FINAL aggregated on the fly from T on. Ranges that do not start or end on
// a window boundary are clipped exactly: the partial windows come from finer
// rollups, and seconds from raw. Every instant of the range comes from
// exactly one source, so nothing counts twice whatever the aggregator is
// doing meanwhile.
//
// Every level has a narrow table beside the wide one (usage_key_minute,
// usage_key_hour, usage_key_day, usage_key_month: customer, key and window
// only). The tick writes each narrow level right after the wide level of
// the same windows, for the same dirty groups (narrow minutes from the wide
// minutes, each narrow level above from the narrow level below), so a
// narrow row is the sum of the wide rows of its cell; the watermark moves
// after both. A query that neither groups nor filters by route, method,
// status_class or gateway reads the narrow tables, with the same plan, if
// it skips distinct IPs (UsageQuery.SkipDistinctIPs) or is WindowTotal:
// per-window distinct IPs merge faster from the many small address sets of
// the wide rows than from the narrow rows' few large ones.
//
// The watermark is read once per query (Querier.UsageFresh returns it with
// the rows), and from memory when the process's aggregator saved one
// (Querier.SetLocalAggregator).
//
// Day and month windows follow UsageQuery.TZ. They cannot come from UTC day
// rows unless the zone is UTC; they come from hour rows when every local
// midnight in the range falls on a UTC hour (whole-hour offsets, DST
// included). Otherwise hour rows serve the inside of each local day and
// minute rows the hour around its midnight, or, when that would cut the
// range into too many pieces, minute rows serve it all. Minute and hour
// windows are UTC windows (in a zone such as Asia/Kolkata, +05:30, hours
// start at :30 local time).
//
// Staleness: a late event (time before T) is counted from the tick after it
// was ingested, at most Interval + Settle later (plus the time a tick takes);
// it may show earlier, since a tick recomputing its minute reads every row
// stored by then. Events at or after T are read from raw and count as soon
// as they are stored. Freshness returns the watermark. Note that once the
// copies of a re-sent event merge, the row kept carries the re-send's
// ingested_at, so ingested_at cannot tell when an event was first stored
// (it only re-dirties the window, which is harmless).
//
// # Filters, all customers, whole-range rows
//
// UsageQuery.Filters keeps events whose route, method, status class,
// gateway or key is one of the listed values. Every rollup row carries all
// five dimensions, so a filter is a condition on every source (the raw
// table computes the status class from the status) and filtered figures
// are as exact as unfiltered ones. UsageQuery.AllCustomers drops the
// customer condition (for staff, never implied by missing ids), and
// customer_id is then a group_by dimension.
//
// WindowTotal answers one row per group for the whole [From, To), served
// like any window: the coarsest rollups that fit inside the range, finer
// ones at cut edges, raw after the watermark. Requests, errors, units and
// bytes are sums and exact. Distinct client IPs are exact too: the
// uniqExact states of the windows are merged, so an address seen in many
// windows counts once. Latency quantiles merge the windows' t-digest
// states: the answer estimates the quantiles of every event of the range
// (not an average of per-window quantiles), with t-digest's usual error
// (the tests hold it within 5 quantile levels of the exact value); an
// exact quantile would need every latency kept, which the rollups do not
// store.
//
// Every value of a query reaches SQL as a bound {name:Type} parameter;
// group_by and filter names are mapped through a fixed allow-list to fixed
// SQL identifiers.
package aggregate
