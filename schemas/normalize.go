package schemas

import (
	"strconv"
	"time"
)

// Normalize validates an Event built in Go (by a gateway middleware, a
// backfill tool) with the same rules as the decoder, and brings it to the
// canonical form the decoder returns: time in UTC truncated to the
// millisecond, method upper-cased, client_ip in canonical text, user_agent
// sanitised and truncated, units rounded to 6 decimal places. ref is the
// reference time of the time window; the zero time disables the check.
//
// It returns nil or an *EventError (Index 0) listing every bad field. e is
// normalised in place even when it is invalid. Units is taken as is: unlike
// the JSON decoder, Normalize cannot tell an absent 0 from a deliberate one.
// A decoded event passes Normalize unchanged.
func (o Options) Normalize(e *Event, ref time.Time) error {
	o = o.withDefaults()
	var errs []FieldError
	fail := func(f fieldID, msg string) {
		errs = append(errs, FieldError{Field: v1Fields[f].name, Message: msg})
	}
	if msg := textRule([]byte(e.ID), 1, maxIDBytes); msg != "" {
		fail(fID, msg)
	}
	e.Time = normTime(e.Time)
	if y := e.Time.Year(); y < 0 || y > 9999 {
		fail(fTime, "must be a time between the years 0000 and 9999")
	} else if msg := timeWindowRule(e.Time, ref, o.MaxPast, o.MaxFuture); msg != "" {
		fail(fTime, msg)
	}
	if msg := textRule([]byte(e.APIKeyID), 1, maxAPIKeyIDBytes); msg != "" {
		fail(fAPIKeyID, msg)
	}
	if msg := textRule([]byte(e.CustomerID), 0, maxNameBytes); msg != "" {
		fail(fCustomerID, msg)
	}
	if msg := textRule([]byte(e.Gateway), 0, maxNameBytes); msg != "" {
		fail(fGateway, msg)
	}
	if e.Method != "" {
		var buf [maxMethodLen]byte
		if up, msg := methodRule(&buf, []byte(e.Method)); msg != "" {
			fail(fMethod, msg)
		} else if string(up) != e.Method {
			e.Method = string(up)
		}
	}
	if msg := textRule([]byte(e.Route), 0, maxRouteBytes); msg != "" {
		fail(fRoute, msg)
	}
	if msg := statusRule(int64(e.Status)); msg != "" {
		fail(fStatus, msg)
	}
	if msg := latencyRule(e.LatencyMS); msg != "" {
		fail(fLatencyMS, msg)
	} else {
		e.LatencyMS += 0 // -0 to 0
	}
	if e.RequestBytes > maxByteCount {
		fail(fRequestBytes, bytesRuleMsg)
	}
	if e.ResponseBytes > maxByteCount {
		fail(fResponseBytes, bytesRuleMsg)
	}
	// An absent measurement has no value: keep equal events equal.
	if !e.Has(MeasureLatency) {
		e.LatencyMS = 0
	}
	if !e.Has(MeasureRequestBytes) {
		e.RequestBytes = 0
	}
	if !e.Has(MeasureResponseBytes) {
		e.ResponseBytes = 0
	}
	if e.ClientIP != "" {
		if a, msg := clientIPRule(e.ClientIP); msg != "" {
			fail(fClientIP, msg)
		} else if s := a.String(); s != e.ClientIP {
			e.ClientIP = s
		}
	}
	if ua, changed := sanitizeUserAgent(nil, []byte(e.UserAgent)); changed {
		e.UserAgent = string(ua)
	}
	if u, msg := unitsRule(e.Units); msg != "" {
		fail(fUnits, msg)
	} else {
		e.Units = u
	}
	if len(e.Properties) > o.MaxProperties {
		fail(fProperties, "must have at most "+strconv.Itoa(o.MaxProperties)+" entries")
	}
	for k, v := range e.Properties {
		if msg := propertyKeyRule([]byte(k)); msg != "" {
			errs = append(errs, FieldError{Field: "properties." + displayKey([]byte(k)), Message: msg})
		} else if msg := propertyValueRule([]byte(v)); msg != "" {
			errs = append(errs, FieldError{Field: "properties." + k, Message: msg})
		}
	}
	if len(e.Properties) == 0 {
		e.Properties = nil
	}
	if len(errs) > 0 {
		return &EventError{Fields: errs}
	}
	return nil
}
