package ingest

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/store"
)

// Event identity: an event id counts once per API key, whatever its time.
//
// The raw table collapses only copies with the same sort key (customer,
// key, time, id) within one monthly partition, so a copy of an event with
// another time (a producer that re-stamps its retry) would be stored and
// counted again. The sink therefore keeps one claim per (api_key_id, id) in
// IDsTable (schemas/sql/0007_event_identity.sql): the event time of the
// copy it stored first. Before a batch is inserted, claimStored looks its
// ids up and
//
//   - drops every copy whose id is claimed with another time: the first
//     stored copy wins, later copies count in
//     meterline_sink_duplicates_stored_total;
//   - keeps a copy whose time equals its claim: it is the stored copy again
//     (a Kafka redelivery after a crash, a replay), and re-inserting it is
//     idempotent because the raw table collapses identical sort keys;
//   - claims the ids that have no claim yet, before the batch's events are
//     inserted. A crash after the claims and before the events leaves
//     claims whose copies are re-read from Kafka and then match them, so
//     the order never loses an event; the reverse order would let another
//     copy, arriving in between, be stored beside the first.
//
// The copies of one id race only when they are read by two sinks at once,
// which the public contract rules out (the message key is api_key_id, so
// one key's events stay in one partition).

// IDsTable holds the sink's claims of event ids.
const IDsTable = "event_ids"

// Positions in EventColumns of the values a claim is made of.
const (
	idColumn       = 0
	timeColumn     = 1
	apiKeyColumn   = 2
	customerColumn = 3
)

// idColumns are the columns of IDsTable the sink writes.
var idColumns = []string{"api_key_id", "id", "time", "customer_id", "claimed_at"}

// claimedSQL reads the claims of a batch's ids. The two IN lists select a
// superset of the batch's (api_key_id, id) pairs; the caller keeps exact
// pairs only. The table is sorted by (api_key_id, id), so the lookup reads
// the granules of the batch's ids, not the table.
const claimedSQL = `SELECT api_key_id, id, time
FROM event_ids
WHERE api_key_id IN {keys:Array(String)} AND id IN {ids:Array(String)}`

// withdrawSQL removes claims made by a batch for rows that were then
// dead-lettered as unstorable: the event was not stored, so a later copy
// of its id (the producer's fixed retry, with another time) must count.
// Mutations are heavy, but this runs only for rows the engine refused.
const withdrawSQL = `ALTER TABLE event_ids DELETE
WHERE api_key_id = {key:String} AND id = {id:String} AND time = {time:DateTime64(3, 'UTC')}
SETTINGS mutations_sync = 2`

// claimStored returns the rows of a batch (already free of in-batch
// repeats) that are not a later copy of a stored event, after claiming the
// ids of those that are new. It retries until it succeeds or ctx ends.
func (s *Sink) claimStored(ctx context.Context, rows []pending, token string, now time.Time) ([]pending, map[dedupKey]bool, error) {
	if len(rows) == 0 {
		return rows, nil, nil
	}
	claims, err := s.lookupClaims(ctx, rows)
	if err != nil {
		return nil, nil, err
	}
	made := map[dedupKey]bool{} // claims this batch makes
	kept := rows[:0:0]
	var fresh [][]any
	for _, p := range rows {
		k := dedupKey{p.row[apiKeyColumn].(string), p.row[idColumn].(string)}
		t := p.row[timeColumn].(time.Time)
		times, claimed := claims[k]
		switch {
		case !claimed:
			fresh = append(fresh, []any{k.apiKeyID, k.id, t, p.row[customerColumn], now})
			made[k] = true
			kept = append(kept, p)
		case containsTime(times, t):
			kept = append(kept, p)
		default:
			s.m.storedDuplicates.Inc()
		}
	}
	if len(fresh) > 0 {
		err := s.retryStalling(ctx, "claim", func() error {
			return s.db.Insert(ctx, IDsTable, idColumns, fresh, store.InsertOptions{DedupToken: token + "/ids"})
		})
		if err != nil {
			return nil, nil, err
		}
	}
	return kept, made, nil
}

// withdrawClaims removes the claims this batch made (fresh) for the rows
// whose messages were dead-lettered as unstorable. A crash before the
// batch is committed re-reads it: the row is claimed, refused and
// withdrawn again.
func (s *Sink) withdrawClaims(ctx context.Context, rows []pending, fresh map[dedupKey]bool, dead []kafka.Message) error {
	if len(dead) == 0 || len(fresh) == 0 {
		return nil
	}
	refused := make(map[string]bool, len(dead))
	for _, d := range dead {
		refused[headerValue(d, HeaderSource)] = true
	}
	for _, p := range rows {
		m := p.msg
		if !refused[m.Topic+"/"+strconv.Itoa(m.Partition)+"/"+strconv.FormatInt(m.Offset, 10)] {
			continue
		}
		k := dedupKey{p.row[apiKeyColumn].(string), p.row[idColumn].(string)}
		if !fresh[k] {
			continue
		}
		t := p.row[timeColumn].(time.Time)
		err := s.retryStalling(ctx, "claim_withdraw", func() error {
			return s.db.Exec(ctx, withdrawSQL, store.P("key", k.apiKeyID), store.P("id", k.id), store.P("time", t))
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// lookupClaims reads the claimed times of the rows' (api_key_id, id) pairs.
func (s *Sink) lookupClaims(ctx context.Context, rows []pending) (map[dedupKey][]time.Time, error) {
	keySet := map[string]struct{}{}
	ids := make([]string, 0, len(rows))
	for _, p := range rows {
		keySet[p.row[apiKeyColumn].(string)] = struct{}{}
		ids = append(ids, p.row[idColumn].(string))
	}
	keys := make([]string, 0, len(keySet))
	for k := range keySet {
		keys = append(keys, k)
	}
	var claims map[dedupKey][]time.Time
	err := s.retryStalling(ctx, "claim_lookup", func() error {
		claims = map[dedupKey][]time.Time{}
		res, err := s.db.Query(ctx, claimedSQL, store.P("keys", keys), store.P("ids", ids))
		if err != nil {
			return err
		}
		defer res.Close()
		for res.Next() {
			var k dedupKey
			var t time.Time
			if err := res.Scan(&k.apiKeyID, &k.id, &t); err != nil {
				return fmt.Errorf("reading event id claims: %w", err)
			}
			claims[k] = append(claims[k], t)
		}
		return res.Err()
	})
	return claims, err
}

func containsTime(ts []time.Time, t time.Time) bool {
	for _, x := range ts {
		if x.Equal(t) {
			return true
		}
	}
	return false
}
