// Package ingest moves request events from gateways into ClickHouse.
//
// The Collector is the HTTP front door (POST /v1/events): it authenticates
// the gateway, decodes and validates each event with package schemas,
// anonymises the client IP, and produces the accepted events to the Kafka
// events topic, answering 202 only once Kafka has acknowledged every one
// (acks=all).
//
// The Sink is a Kafka consumer group that validates every message with the
// same code (gateways may produce to the topic directly), sends what can
// never be stored to the dead-letter topic with the reason, writes batches to
// the raw events table and commits offsets only after the insert succeeded.
// A crash at any instant therefore re-delivers, never loses; re-delivered
// events are stored once because the raw table collapses rows with the same
// id (see schemas/sql/0001_events.sql) and a retried batch carries the same
// insert deduplication token.
package ingest
