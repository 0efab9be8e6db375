package schemas

import (
	"mime"
	"strings"
)

// CloudEventsType is the CloudEvents "type" recommended for request events.
// Any non-empty type is accepted: the body's content type or the specversion
// member already says what the event is, and rejecting billable usage over a
// naming choice would help nobody.
const CloudEventsType = "dev.meterline.request.v1"

// CloudEvents 1.0 context attributes that the decoder reads, plus data and
// data_base64 of the JSON event format.
const (
	ceSpecVersion = iota
	ceID
	ceTime
	ceSource
	ceSubject
	ceType
	ceDataContentType
	ceDataSchema
	ceData
	ceDataBase64
	numCEAttrs
)

var ceAttrNames = [numCEAttrs]string{
	ceSpecVersion:     "specversion",
	ceID:              "id",
	ceTime:            "time",
	ceSource:          "source",
	ceSubject:         "subject",
	ceType:            "type",
	ceDataContentType: "datacontenttype",
	ceDataSchema:      "dataschema",
	ceData:            "data",
	ceDataBase64:      "data_base64",
}

func lookupCEAttr(key []byte) (int, bool) {
	switch string(key) {
	case "specversion":
		return ceSpecVersion, true
	case "id":
		return ceID, true
	case "time":
		return ceTime, true
	case "source":
		return ceSource, true
	case "subject":
		return ceSubject, true
	case "type":
		return ceType, true
	case "datacontenttype":
		return ceDataContentType, true
	case "dataschema":
		return ceDataSchema, true
	case "data":
		return ceData, true
	case "data_base64":
		return ceDataBase64, true
	}
	return 0, false
}

// ceEnvelopeFields are the v1 fields a CloudEvent carries in its envelope
// (id, time, subject, source) rather than in data.
const ceEnvelopeFields = 1<<fID | 1<<fTime | 1<<fAPIKeyID | 1<<fGateway

// cloudEvent decodes a structured-mode CloudEvent: id -> id, time -> time,
// source -> gateway, subject -> api_key_id, data -> the other v1 fields.
// Errors name the members as the sender wrote them (subject, data.status).
func (d *decoder) cloudEvent(data []byte, ms []member, ev *Event) {
	var seen, present, bad uint16
	var inner Event
	var innerPresent, innerBad uint32
	for k := range ms {
		m := &ms[k]
		a, ok := lookupCEAttr(d.key(data, m))
		if !ok {
			continue
		}
		name := ceAttrNames[a]
		bit := uint16(1) << a
		if seen&bit != 0 {
			d.fail("", name, "duplicate field")
			bad |= bit
			continue
		}
		seen |= bit
		kind := m.kind(data)
		if kind == 'n' {
			continue // the CloudEvents JSON format treats null as absent
		}
		switch a {
		case ceData:
			if kind != '{' {
				d.failType("", name, "an object holding the request fields", kind)
				bad |= bit
				continue
			}
			dms, _, tooMany, _ := d.object(data, m.valStart, d.maxMembers())
			if tooMany {
				d.fail("", name, "too many fields")
			}
			innerPresent, innerBad = d.v1(data, dms, "data.", &inner)
			present |= bit
			continue
		case ceDataBase64:
			d.fail("", name, "binary data is not supported; send data as a JSON object")
			bad |= bit
			continue
		}
		if kind != '"' {
			d.failType("", name, "a string", kind)
			bad |= bit
			continue
		}
		b := d.str(data, m)
		msg := ""
		switch a {
		case ceSpecVersion:
			if string(b) != "1.0" {
				msg = `must be "1.0"`
			}
		case ceID:
			if msg = textRule(b, 1, maxIDBytes); msg == "" {
				ev.ID = string(b)
			}
		case ceTime:
			t, ok := parseTime(b)
			if !ok {
				msg = "must be an RFC 3339 timestamp such as 2026-11-23T15:04:05.123Z"
			} else if msg = timeWindowRule(t, d.ref, d.opts.MaxPast, d.opts.MaxFuture); msg == "" {
				ev.Time = t
			}
		case ceSource:
			if msg = textRule(b, 1, maxNameBytes); msg == "" {
				ev.Gateway = d.internBytes(b)
			}
		case ceSubject:
			if msg = textRule(b, 1, maxAPIKeyIDBytes); msg == "" {
				ev.APIKeyID = d.internBytes(b)
			} else {
				msg += " (subject carries the api_key_id)"
			}
		case ceType:
			if len(b) == 0 {
				msg = "must not be empty"
			}
		case ceDataContentType:
			if !isJSONMediaType(string(b)) {
				msg = `must be "application/json"`
			}
		case ceDataSchema:
			// Informational: the v1 schema is the only one read here.
		}
		if msg != "" {
			d.fail("", name, msg)
			bad |= bit
			continue
		}
		present |= bit
	}

	judged := present | bad
	for _, a := range [...]int{ceSpecVersion, ceID, ceSource, ceType, ceData} {
		if judged&(1<<a) == 0 {
			d.fail("", ceAttrNames[a], "is required")
		}
	}
	if present&(1<<ceData) != 0 {
		d.mergeData(ev, &inner, present, judged, innerPresent, innerBad)
	}

	// Extension attributes come last so that their clashes with data's
	// properties are always reported on the extension.
	d.added = d.added[:0]
	for k := range ms {
		m := &ms[k]
		key := d.key(data, m)
		if _, ok := lookupCEAttr(key); ok {
			continue
		}
		if !validCEAttrName(key) {
			d.fail("", displayKey(key), "is not a CloudEvents attribute name (lowercase letters and digits); request fields belong in data")
			continue
		}
		if d.opts.UnknownFieldsToProperties {
			d.toProperty(data, m, key, "", ev)
		}
	}
}

// mergeData takes the v1 fields of data into ev. data may repeat an envelope
// value (senders that build the v1 object first and wrap it) but must not
// contradict it: which of the two to bill would be a guess.
func (d *decoder) mergeData(ev, inner *Event, present, judged uint16, innerPresent, innerBad uint32) {
	in := func(f fieldID) bool { return innerPresent&(1<<f) != 0 }
	innerJudged := innerPresent | innerBad
	if in(fID) && present&(1<<ceID) != 0 && inner.ID != ev.ID {
		d.fail("data.", "id", "does not match the envelope's id")
	}
	switch {
	case in(fTime) && present&(1<<ceTime) != 0:
		if !inner.Time.Equal(ev.Time) {
			d.fail("data.", "time", "does not match the envelope's time")
		}
	case in(fTime) && judged&(1<<ceTime) == 0:
		ev.Time = inner.Time
	case judged&(1<<ceTime) == 0 && innerJudged&(1<<fTime) == 0:
		d.fail("", "time", "is required")
	}
	switch {
	case in(fAPIKeyID) && present&(1<<ceSubject) != 0:
		if inner.APIKeyID != ev.APIKeyID {
			d.fail("data.", "api_key_id", "does not match the envelope's subject")
		}
	case in(fAPIKeyID) && judged&(1<<ceSubject) == 0:
		ev.APIKeyID = inner.APIKeyID
	case judged&(1<<ceSubject) == 0 && innerJudged&(1<<fAPIKeyID) == 0:
		d.fail("", "subject", "is required (it carries the api_key_id)")
	}
	if in(fGateway) && present&(1<<ceSource) != 0 && inner.Gateway != ev.Gateway {
		d.fail("data.", "gateway", "does not match the envelope's source")
	}
	for f := range numFields {
		bit := uint32(1) << f
		if requiredMask&^ceEnvelopeFields&bit != 0 && innerJudged&bit == 0 {
			d.fail("data.", v1Fields[f].name, "is required")
		}
	}
	ev.CustomerID = inner.CustomerID
	ev.Method = inner.Method
	ev.Route = inner.Route
	ev.Status = inner.Status
	ev.LatencyMS = inner.LatencyMS
	ev.RequestBytes = inner.RequestBytes
	ev.ResponseBytes = inner.ResponseBytes
	ev.Absent = inner.Absent
	ev.ClientIP = inner.ClientIP
	ev.UserAgent = inner.UserAgent
	ev.Units = inner.Units
	ev.Properties = inner.Properties
}

// validCEAttrName follows CloudEvents 1.0: attribute names MUST be lowercase
// ASCII letters and digits. The spec's 20-character limit is only a SHOULD,
// so longer names are accepted.
func validCEAttrName(k []byte) bool {
	if len(k) == 0 {
		return false
	}
	for _, c := range k {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func isJSONMediaType(s string) bool {
	if s == "application/json" {
		return true
	}
	mt, params, err := mime.ParseMediaType(s)
	if err != nil || mt != "application/json" {
		return false
	}
	cs, ok := params["charset"]
	return !ok || strings.EqualFold(cs, "utf-8")
}
