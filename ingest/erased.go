package ingest

import "github.com/meterline/meterline/schemas"

// ErasedKeys is implemented by an ErasedCustomers that also knows the API
// keys of the erased customers: the sink then drops those keys' events
// whatever customer_id they carry, or none (a key whose catalogue entry
// was removed with the customer resolves to no customer).
type ErasedKeys interface {
	KeyErased(apiKeyID string) bool
}

// erasedEvent tells whether ev belongs to an erased customer, by its
// customer_id or by its API key.
func (s *Sink) erasedEvent(ev *schemas.Event) bool {
	if s.erased == nil {
		return false
	}
	if ev.CustomerID != "" && s.erased.Erased(ev.CustomerID) {
		return true
	}
	k, ok := s.erased.(ErasedKeys)
	return ok && k.KeyErased(ev.APIKeyID)
}
