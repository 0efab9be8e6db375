package aggregate

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Window is the granularity of usage rows.
type Window string

// The windows. Minute and hour windows are UTC windows; day and month
// windows follow UsageQuery.TZ. WindowTotal is one window over the whole
// [From, To): one row per group, its distinct client IPs counted over the
// whole range and its latency quantiles merged from every event of the
// range (not averaged over windows).
const (
	WindowMinute Window = "minute"
	WindowHour   Window = "hour"
	WindowDay    Window = "day"
	WindowMonth  Window = "month"
	WindowTotal  Window = "total"
)

// GroupByAllowed are the dimensions usage can be grouped by, as the query
// parameter names them. Each maps to a fixed column (groupColumns); no other
// name ever reaches SQL. customer_id is meant for AllCustomers queries (for
// one customer it gives that customer's single value).
var GroupByAllowed = []string{"api_key_id", "route", "method", "status_class", "gateway", "customer_id"}

// FilterAllowed are the dimensions usage can be filtered on
// (UsageQuery.Filters), as the query parameters name them; each maps to
// the same fixed column as in GroupByAllowed.
var FilterAllowed = []string{"route", "method", "status_class", "gateway", "api_key_id"}

// Query limits.
const (
	// MaxRange is the longest [From, To) of a query.
	MaxRange = 400 * 24 * time.Hour
	// MaxMinuteRange is the longest [From, To) with minute windows.
	MaxMinuteRange = 7 * 24 * time.Hour
	// MaxFilterValues bounds the values of one filter dimension.
	MaxFilterValues = 32
	// MaxRows bounds the rows of one answer, so a fine window over many
	// groups cannot make the server build an enormous result.
	MaxRows = 200_000
	// maxIDBytes matches the event contract's 128-byte ids.
	maxIDBytes = 128
)

// Times outside [minTime, maxTime) cannot be stored by the DateTime
// columns; the engine would coerce them silently rather than fail.
var (
	minTime = time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC)
	maxTime = time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)
)

// UsageQuery asks for usage rows of one customer or key, or of every
// customer.
type UsageQuery struct {
	// CustomerID and APIKeyID select whose usage: at least one is set
	// unless AllCustomers is; when both are, only the key's usage under
	// that customer is returned (none if the key is not the customer's).
	CustomerID string
	APIKeyID   string
	// AllCustomers allows CustomerID and APIKeyID both empty: the usage of
	// every customer (and of events stored without one). It must be set
	// explicitly, so that a forgotten id never widens a query; it is for
	// callers that checked the reader may see every customer.
	AllCustomers bool
	// Filters keeps only events whose dimension (a name of FilterAllowed)
	// has one of the listed values: the values of one dimension are
	// alternatives (OR), dimensions all apply (AND). Values are compared
	// exactly, bound as parameters; each is at most 128 bytes of UTF-8
	// without NUL, at most MaxFilterValues per dimension. Nil or empty:
	// no filter.
	Filters map[string][]string
	// From and To bound event time, half-open [From, To). Windows cut by
	// them count only the part inside. To-From is at most MaxRange
	// (MaxMinuteRange for minute windows).
	From, To time.Time
	// Window is the granularity of the rows; WindowTotal gives one row per
	// group for the whole range, with WindowStart = From.
	Window Window
	// GroupBy lists dimensions from GroupByAllowed, without repeats; rows
	// are per window and per combination of their values.
	GroupBy []string
	// TZ is the zone of day and month windows and of WindowStart; nil
	// means UTC.
	TZ *time.Location
	// SkipDistinctIPs leaves UsageRow.DistinctClientIPs at 0 instead of
	// merging the exact sets of client addresses, the costliest measure
	// of a read, for callers that do not show it. The zero value computes
	// it, as GET /v1/usage always does.
	SkipDistinctIPs bool
}

// ParamError is a bad query parameter.
type ParamError struct {
	// Param is the parameter's name as the HTTP API spells it:
	// customer_id, api_key_id, from, to, window, group_by, tz, or a filter
	// dimension (route, method, status_class, gateway).
	Param string
	// Message says what is wrong, for the client.
	Message string
}

// Error implements error.
func (e *ParamError) Error() string { return e.Param + ": " + e.Message }

func paramErr(param, format string, args ...any) error {
	return &ParamError{Param: param, Message: fmt.Sprintf(format, args...)}
}

// echo quotes client input for a message, cut short: a message repeats
// what was wrong, not a megabyte of it.
func echo(s string) string {
	const limit = 64
	if len(s) > limit {
		cut := limit
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "..."
	}
	return strconv.Quote(s)
}

// Validate reports every bad parameter of q, each as a *ParamError (joined
// with errors.Join; errors.As finds the first). From and To need not be
// aligned to windows.
func (q UsageQuery) Validate() error {
	var errs []error
	if q.CustomerID == "" && q.APIKeyID == "" && !q.AllCustomers {
		errs = append(errs, paramErr("customer_id", "customer_id or api_key_id is required"))
	}
	if err := validID("customer_id", q.CustomerID); err != nil {
		errs = append(errs, err)
	}
	if err := validID("api_key_id", q.APIKeyID); err != nil {
		errs = append(errs, err)
	}
	if rangeErrs := validRange(q.From, q.To); len(rangeErrs) > 0 {
		errs = append(errs, rangeErrs...)
	} else if q.Window == WindowMinute && q.To.Sub(q.From) > MaxMinuteRange {
		errs = append(errs, paramErr("to", "the range is %s long; with window=minute it may be at most 7 days", q.To.Sub(q.From)))
	}
	switch q.Window {
	case WindowMinute, WindowHour, WindowDay, WindowMonth, WindowTotal:
	case "":
		errs = append(errs, paramErr("window", "window is required: minute, hour, day, month or total"))
	default:
		errs = append(errs, paramErr("window", "unknown window %s: use minute, hour, day, month or total", echo(string(q.Window))))
	}
	if q.TZ != nil {
		// The zone reaches the engine by name: a fixed or local zone has
		// no name it would know.
		if name := q.TZ.String(); name == "Local" {
			errs = append(errs, paramErr("tz", "the server's local zone is not accepted; name an IANA zone"))
		} else if _, err := time.LoadLocation(name); err != nil {
			errs = append(errs, paramErr("tz", "zone %s is not an IANA zone name", echo(name)))
		}
	}
	seen := map[string]bool{}
	for _, g := range q.GroupBy {
		if _, ok := groupColumns[g]; !ok {
			errs = append(errs, paramErr("group_by", "unknown dimension %s: allowed are %s", echo(g), strings.Join(GroupByAllowed, ", ")))
			continue
		}
		if seen[g] {
			errs = append(errs, paramErr("group_by", "%s is repeated", echo(g)))
		}
		seen[g] = true
	}
	errs = append(errs, validFilters(q.Filters)...)
	return errors.Join(errs...)
}

// validFilters checks the filter dimensions and their values, in
// FilterAllowed order so that messages come out the same every time.
func validFilters(f map[string][]string) []error {
	var errs []error
	names := make([]string, 0, len(f))
	for name := range f {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if !slices.Contains(FilterAllowed, name) {
			errs = append(errs, paramErr("filter", "unknown dimension %s: filters are %s", echo(name), strings.Join(FilterAllowed, ", ")))
		}
	}
	for _, name := range FilterAllowed {
		vals, ok := f[name]
		if !ok {
			continue
		}
		if len(vals) > MaxFilterValues {
			errs = append(errs, paramErr(name, "%d values; at most %d", len(vals), MaxFilterValues))
			continue
		}
		seen := map[string]bool{}
		for _, v := range vals {
			switch {
			case v == "":
				errs = append(errs, paramErr(name, "an empty value"))
			case len(v) > maxIDBytes:
				errs = append(errs, paramErr(name, "a value longer than %d bytes", maxIDBytes))
			case !utf8.ValidString(v):
				errs = append(errs, paramErr(name, "a value that is not valid UTF-8"))
			case strings.IndexByte(v, 0) >= 0:
				errs = append(errs, paramErr(name, "a value with a NUL byte"))
			case seen[v]:
				errs = append(errs, paramErr(name, "%s is repeated", echo(v)))
			}
			seen[v] = true
		}
	}
	return errs
}

// validID checks an optional customer or key id.
func validID(param, v string) error {
	switch {
	case len(v) > maxIDBytes:
		return paramErr(param, "longer than %d bytes", maxIDBytes)
	case !utf8.ValidString(v):
		return paramErr(param, "not valid UTF-8")
	case strings.IndexByte(v, 0) >= 0:
		return paramErr(param, "contains a NUL byte")
	}
	return nil
}

// validRange checks [from, to) against the stored time range and MaxRange.
func validRange(from, to time.Time) []error {
	var errs []error
	if from.IsZero() {
		errs = append(errs, paramErr("from", "from is required"))
	} else if from.Before(minTime) || !from.Before(maxTime) {
		errs = append(errs, paramErr("from", "%s is outside 1970-2099", from.Format(time.RFC3339)))
	}
	if to.IsZero() {
		errs = append(errs, paramErr("to", "to is required"))
	} else if to.Before(minTime) || to.After(maxTime) {
		errs = append(errs, paramErr("to", "%s is outside 1970-2099", to.Format(time.RFC3339)))
	}
	if len(errs) > 0 {
		return errs
	}
	switch {
	case to.Equal(from):
		errs = append(errs, paramErr("to", "the range is empty: to must be after from"))
	case to.Before(from):
		errs = append(errs, paramErr("to", "to (%s) is before from (%s)", to.Format(time.RFC3339Nano), from.Format(time.RFC3339Nano)))
	case to.Sub(from) > MaxRange:
		errs = append(errs, paramErr("to", "the range is %d days long; at most %d days", int(to.Sub(from).Hours()/24), int(MaxRange.Hours()/24)))
	}
	return errs
}

// ParseTZ resolves an IANA zone name for UsageQuery.TZ; "" is UTC. It
// refuses "Local" (the server's own zone is no answer for a client) and
// reports a bad name as a *ParamError for tz.
func ParseTZ(name string) (*time.Location, error) {
	if name == "" || name == "UTC" {
		return time.UTC, nil
	}
	if name == "Local" || len(name) > 64 || strings.ContainsAny(name, "\x00\\") || strings.Contains(name, "..") {
		return nil, paramErr("tz", "unknown time zone %s", echo(name))
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, paramErr("tz", "unknown time zone %s", echo(name))
	}
	return loc, nil
}

// UsageRow is one window (and group) of usage.
type UsageRow struct {
	// WindowStart is the start of the window, in the query's TZ. A window
	// cut by From or To still starts where the whole window would; with
	// WindowTotal it is From.
	WindowStart time.Time
	// Group holds the values of the query's GroupBy dimensions, by name.
	Group map[string]string
	// Requests counts distinct events; ClientErrors those with status
	// 4xx, ServerErrors 5xx.
	Requests, ClientErrors, ServerErrors uint64
	// Units is the sum of billable units. It is summed exactly as a decimal
	// by the engine and converted to float64 last; UnitsText is the exact
	// decimal text.
	Units     float64
	UnitsText string
	// RequestBytes and ResponseBytes are summed body sizes.
	RequestBytes, ResponseBytes uint64
	// LatencyP50, LatencyP95 and LatencyP99 are latency quantiles in
	// milliseconds, t-digest estimates over the events that carried a
	// latency (0 when there are no requests or none of them did). Coarse
	// windows merge the stored t-digests of their parts: they estimate
	// the quantiles of all the window's events, which averaging the
	// parts' quantiles would not.
	LatencyP50, LatencyP95, LatencyP99 float64
	// LatencyMeasured tells whether any event of the window carried a
	// latency_ms, that is whether the quantiles mean anything.
	LatencyMeasured bool
	// DistinctClientIPs counts distinct anonymised client addresses (events
	// without an address are not counted), exactly, over the whole window.
	DistinctClientIPs uint64
}
