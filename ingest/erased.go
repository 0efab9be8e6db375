package ingest

import "github.com/meterline/meterline/schemas"

// ErasedKeys is implemented by an ErasedCustomers that also knows the API
// keys of the erased customers: the sink then drops those keys' events
// whatever customer_id they carry, or none (a key whose catalogue entry
// was removed with the customer resolves to no customer).
type ErasedKeys interface {
	KeyErased(apiKeyID string) bool
}

// erasedEvent tells whether ev belongs to an erased customer: by the
// customer it carries (named by the event before resolution, the key's
// owner after), or, for an event that belongs to no customer (its key
// resolves to none: the catalogue entry went with the customer), by its
// API key. A key recorded with an erasure that the catalogue now gives to
// another customer bills that customer: its events are theirs.
func (s *Sink) erasedEvent(ev *schemas.Event) bool {
	if s.erased == nil {
		return false
	}
	if ev.CustomerID != "" {
		return s.erased.Erased(ev.CustomerID)
	}
	k, ok := s.erased.(ErasedKeys)
	return ok && k.KeyErased(ev.APIKeyID)
}
