// Package api serves the read side of the HTTP API: usage rows for
// dashboards and finance (GET /v1/usage), plan limits for gateways
// (GET /v1/limits/{api_key_id}).
//
// Access: admin and finance tokens read every customer; a customer-scoped
// token (customer:<id>) reads only its own customers' usage and keys, and
// gateways' ingest tokens may read limits. Every request parameter is
// checked against an allow-list before it reaches a query, where it is bound
// as a parameter.
package api
