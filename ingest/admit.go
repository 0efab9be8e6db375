package ingest

import (
	"errors"
	"fmt"
	"slices"

	"github.com/meterline/meterline/auth"
	"github.com/meterline/meterline/schemas"
)

// CheckOwners makes the collector refuse, one by one, the events the
// catalogue o does not let through: a customer_id that does not hold the
// key at the event's time, and (policy reject) keys that belong to nobody.
// The collector only checks; the sink sets customer_id from its own copy
// of the catalogue. Call before serving.
func (c *Collector) CheckOwners(o KeyOwners, p UnknownKeys) {
	c.owners, c.unknownKeys = o, p
}

// admit applies the token's bindings and the catalogue to one decoded
// event: a token bound to a gateway stamps it; a token bound to customers
// may only send events of their keys. The error names the event's index.
func (c *Collector) admit(ev *schemas.Event, p auth.Principal, index int) error {
	if p.Gateway != "" {
		ev.Gateway = p.Gateway
	}
	probe := *ev // the check must not fill customer_id: the sink decides
	_, err := resolveOwner(&probe, c.owners, c.unknownKeys)
	if err == nil && len(p.IngestCustomers) > 0 {
		switch {
		case probe.CustomerID == "":
			err = ownershipError("api_key_id", fmt.Sprintf("%q belongs to no customer of the catalogue at this time, and token %q may only send events of its customers' keys", ev.APIKeyID, p.Name))
		case !slices.Contains(p.IngestCustomers, probe.CustomerID):
			err = ownershipError("api_key_id", fmt.Sprintf("%q is not a key of a customer token %q may send events for", ev.APIKeyID, p.Name))
		}
	}
	var ee *schemas.EventError
	if errors.As(err, &ee) {
		ee.Index = index
	}
	return err
}
