package schemas

import (
	"bytes"
	_ "embed" // for the published JSON Schema
)

//go:embed event.schema.json
var eventSchema []byte

// EventSchema returns the JSON Schema (draft 2020-12) of the v1 request event,
// for serving it or publishing it with the documentation. Each call returns a
// fresh copy that the caller may keep or change.
//
// Some rules cannot be expressed in JSON Schema and are enforced by the
// decoder only: lengths in bytes (the schema's maxLength counts characters),
// the time window, duplicate keys, IP address syntax beyond the "format"
// annotation, and the rounding of units and truncation of user_agent.
func EventSchema() []byte { return bytes.Clone(eventSchema) }
