package ingest

import (
	"fmt"
	"time"

	"github.com/meterline/meterline/schemas"
)

// UnknownKeys is the policy for events whose api_key_id the catalogue
// gives to no customer at the event's time (events.unknown_keys).
type UnknownKeys string

// The unknown-key policies.
const (
	// UnknownKeysAccept stores such events unassigned (customer_id empty,
	// whatever the event claimed): never billed, listed for admins, and
	// attributed to the key's owner once the catalogue knows it.
	UnknownKeysAccept UnknownKeys = "accept"
	// UnknownKeysReject refuses them: a per-event rejection at the
	// collector, a dead letter at the sink.
	UnknownKeysReject UnknownKeys = "reject"
)

// Validate checks the policy's value (empty means accept).
func (u UnknownKeys) Validate() error {
	switch u {
	case "", UnknownKeysAccept, UnknownKeysReject:
		return nil
	}
	return fmt.Errorf("events.unknown_keys: %q is not accept or reject", string(u))
}

// KeyOwners tells which customer holds an API key at a given time: the
// plan catalogue (*limits.Registry). false means nobody does.
type KeyOwners interface {
	OwnerAt(apiKeyID string, t time.Time) (string, bool)
}

// DeadLetterOwnership is the dead-letter class of events refused because
// of who owns their key: a customer_id that does not hold the key, or an
// unknown key under events.unknown_keys: reject. They are replayable once
// the catalogue or the producer is fixed.
const DeadLetterOwnership = "ownership"

// resolveOwner applies the catalogue to ev: the key's owner at the event's
// time becomes its customer_id; a customer_id that names another customer
// is an error, and so is an unknown key under the reject policy. An
// unknown key under accept leaves the event unassigned (customer_id
// empty). It returns whether the key was unknown. owners nil: no
// catalogue, the event is left as it is.
func resolveOwner(ev *schemas.Event, owners KeyOwners, policy UnknownKeys) (unknown bool, err error) {
	if owners == nil {
		return false, nil
	}
	owner, ok := owners.OwnerAt(ev.APIKeyID, ev.Time)
	if ok {
		if ev.CustomerID != "" && ev.CustomerID != owner {
			// The owner is not named: a gateway must not learn who holds
			// another tenant's key by probing.
			return false, ownershipError("customer_id", fmt.Sprintf("%q does not hold api_key_id %q at %s in the catalogue; omit customer_id to bill the key's owner",
				ev.CustomerID, ev.APIKeyID, ev.Time.UTC().Format(time.RFC3339Nano)))
		}
		ev.CustomerID = owner
		return false, nil
	}
	if policy == UnknownKeysReject {
		return true, ownershipError("api_key_id", fmt.Sprintf("%q belongs to no customer of the catalogue at %s (events.unknown_keys: reject)",
			ev.APIKeyID, ev.Time.UTC().Format(time.RFC3339Nano)))
	}
	ev.CustomerID = ""
	return true, nil
}

// ownershipError is a schemas.EventError on one field, so the collector
// reports it like any other invalid field.
func ownershipError(field, msg string) error {
	return &schemas.EventError{Fields: []schemas.FieldError{{Field: field, Message: msg}}}
}
