// Package web serves Meterline's web interface under /ui/: sign-in with a
// Meterline token, customer portal sessions from one-time links, and
// server-rendered pages of usage and plan limits.
//
// Every number on a page comes from the same code as the HTTP API: the
// usage queries go through api.ParseUsageQuery and api.ReadUsage (the
// parameters of GET /v1/usage, checked and scoped the same way), the plan
// through the limits view that answers GET /v1/limits. The package runs no
// SQL of its own.
//
// Sessions live in the memory of the process (bounded, random 256-bit ids,
// idle and absolute expiry). Every state-changing request carries a CSRF
// token: the session's, or, for the sign-in form, a pre-session token in a
// cookie that the form must repeat (double submit). Every response carries
// a Content-Security-Policy without inline scripts or styles.
//
// The assets (templates, CSS, the chart script) are embedded at build time,
// together with the chart library uPlot when deploy/install.sh has fetched
// it into assets/static/vendor/ (git-ignored); without it pages say that
// the chart library is missing and still show every table.
package web
