package api

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/auth"
)

// ParseUsageQuery turns a request carrying GET /v1/usage's parameters into
// a query principal p may run, with the HTTP status to answer when it may
// not (400 for a bad parameter, 403 for another customer). The web
// interface builds its queries with it, so pages and the API accept and
// refuse the same things.
func ParseUsageQuery(req *http.Request, p auth.Principal, now time.Time) (aggregate.UsageQuery, int, error) {
	return parseUsage(req, p, now)
}

// freshUsageReader is a UsageReader that reads the watermark once for
// both the rows and the freshness it reports (aggregate.Querier).
type freshUsageReader interface {
	UsageFresh(ctx context.Context, q aggregate.UsageQuery) ([]aggregate.UsageRow, time.Time, error)
}

// ReadUsage runs uq as GET /v1/usage does, in the response shape of the
// endpoint: the rows include at least what the reported freshness
// promises. A reader with UsageFresh reads the watermark once, for both;
// another reader is asked for its freshness first, then for the rows.
func ReadUsage(ctx context.Context, r UsageReader, uq aggregate.UsageQuery) (UsageResponse, error) {
	var (
		fresh time.Time
		rows  []aggregate.UsageRow
		err   error
	)
	if fr, ok := r.(freshUsageReader); ok {
		rows, fresh, err = fr.UsageFresh(ctx, uq)
	} else if fresh, err = r.Freshness(ctx); err == nil {
		rows, err = r.Usage(ctx, uq)
	}
	if err != nil {
		return UsageResponse{}, err
	}
	resp := UsageResponse{
		CustomerID: uq.CustomerID, APIKeyID: uq.APIKeyID, From: uq.From, To: uq.To,
		Window: string(uq.Window), TZ: uq.TZ.String(), GroupBy: uq.GroupBy, Freshness: fresh,
		Rows: make([]UsageRow, len(rows)),
	}
	if resp.GroupBy == nil {
		resp.GroupBy = []string{}
	}
	for i, row := range rows {
		resp.Rows[i] = UsageRow{
			WindowStart: row.WindowStart, Group: row.Group, Requests: row.Requests,
			ClientErrors: row.ClientErrors, ServerErrors: row.ServerErrors, Units: json.Number(row.UnitsText),
			RequestBytes: row.RequestBytes, ResponseBytes: row.ResponseBytes,
			DistinctClientIPs: row.DistinctClientIPs,
		}
		if row.LatencyMeasured {
			resp.Rows[i].LatencyMS = &Latency{P50: row.LatencyP50, P95: row.LatencyP95, P99: row.LatencyP99}
		}
	}
	return resp, nil
}

// WriteUsageCSV writes resp as GET /v1/usage answers `Accept: text/csv`.
func WriteUsageCSV(w http.ResponseWriter, resp UsageResponse) { writeUsageCSV(w, resp) }

// WriteQueryError answers err of ReadUsage as GET /v1/usage does.
func WriteQueryError(w http.ResponseWriter, err error) { writeQueryError(w, err) }
