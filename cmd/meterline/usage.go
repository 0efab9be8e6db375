package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/meterline/meterline/api"
)

// runUsage prints GET /v1/usage as a table (or CSV). It goes through the
// HTTP API, so it works while `meterline serve` holds the embedded engine,
// and it is subject to the token's scopes like any other client.
func runUsage(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("usage", "usage --customer ID | --api-key ID --from TIME [flags]", stderr)
	base := fs.String("url", envOr("METERLINE_URL", "http://127.0.0.1:8080"), "Meterline API `base URL` (env METERLINE_URL)")
	token := fs.String("token", "", "API `token` with the admin, finance or customer scope (env METERLINE_TOKEN)")
	customer := fs.String("customer", "", "customer `id`")
	key := fs.String("api-key", "", "api key `id`")
	from := fs.String("from", "24h", "start: RFC 3339 time, or a duration meaning that long ago (24h, 720h)")
	to := fs.String("to", "", "end (exclusive): RFC 3339 time or a duration ago; default now")
	window := fs.String("window", "hour", "minute, hour, day or month")
	groupBy := fs.String("group-by", "", "comma-separated: api_key_id, route, method, status_class, gateway")
	tz := fs.String("tz", "", "IANA time zone of day and month windows (default UTC)")
	asCSV := fs.Bool("csv", false, "print CSV instead of a table")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *token == "" {
		*token = os.Getenv("METERLINE_TOKEN")
	}
	if *token == "" {
		fmt.Fprintln(stderr, "give --token or set METERLINE_TOKEN")
		return errUsage
	}
	if *customer == "" && *key == "" {
		fmt.Fprintln(stderr, "give --customer or --api-key")
		return errUsage
	}
	now := time.Now().UTC()
	q := url.Values{}
	for name, v := range map[string]string{"customer_id": *customer, "api_key_id": *key, "window": *window, "group_by": *groupBy, "tz": *tz} {
		if v != "" {
			q.Set(name, v)
		}
	}
	for name, v := range map[string]string{"from": *from, "to": *to} {
		if v == "" {
			continue
		}
		t, err := timeArg(v, now)
		if err != nil {
			return fmt.Errorf("--%s: %w", name, err)
		}
		q.Set(name, t.Format(time.RFC3339Nano))
	}
	req, err := http.NewRequest(http.MethodGet, strings.TrimRight(*base, "/")+"/v1/usage?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+*token)
	if *asCSV {
		req.Header.Set("Accept", "text/csv")
	}
	resp, err := (&http.Client{Timeout: 60 * time.Second}).Do(req)
	if err != nil {
		return fmt.Errorf("is meterline serving at %s? %w", *base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var eb struct{ Error string }
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(body, &eb) == nil && eb.Error != "" {
			return fmt.Errorf("%s: %s", resp.Status, eb.Error)
		}
		return fmt.Errorf("%s: %s", resp.Status, body)
	}
	if *asCSV {
		_, err := io.Copy(stdout, resp.Body)
		return err
	}
	var ur api.UsageResponse
	if err := json.NewDecoder(resp.Body).Decode(&ur); err != nil {
		return fmt.Errorf("reading the answer: %w", err)
	}
	return printUsage(stdout, ur)
}

func printUsage(w io.Writer, ur api.UsageResponse) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	head := []string{"WINDOW"}
	for _, g := range ur.GroupBy {
		head = append(head, strings.ToUpper(g))
	}
	head = append(head, "REQUESTS", "4XX", "5XX", "UNITS", "BYTES IN", "BYTES OUT", "P50 MS", "P95 MS", "P99 MS", "IPS")
	fmt.Fprintln(tw, strings.Join(head, "\t")+"\t")
	layout := "2006-01-02 15:04"
	switch ur.Window {
	case "day":
		layout = "2006-01-02"
	case "month":
		layout = "2006-01"
	}
	loc, err := time.LoadLocation(ur.TZ)
	if err != nil {
		loc = time.UTC
	}
	for _, r := range ur.Rows {
		cells := []string{r.WindowStart.In(loc).Format(layout)}
		for _, g := range ur.GroupBy {
			cells = append(cells, r.Group[g])
		}
		cells = append(cells, fmt.Sprint(r.Requests), fmt.Sprint(r.ClientErrors), fmt.Sprint(r.ServerErrors), r.Units.String(),
			fmt.Sprint(r.RequestBytes), fmt.Sprint(r.ResponseBytes),
			latencyCell(r.LatencyMS, 0), latencyCell(r.LatencyMS, 1), latencyCell(r.LatencyMS, 2), fmt.Sprint(r.DistinctClientIPs))
		fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "%d rows; %s windows in %s; rollups complete up to %s\n", len(ur.Rows), ur.Window, ur.TZ, ur.Freshness.Format(time.RFC3339))
	return nil
}

// timeArg reads an RFC 3339 time, or a duration meaning that long before now.
func timeArg(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("%q: give a positive duration (it means that long ago)", s)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither an RFC 3339 time nor a duration like 24h", s)
	}
	return t, nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// latencyCell prints quantile i (p50, p95, p99) of l, or "-" when no event
// of the window carried a latency.
func latencyCell(l *api.Latency, i int) string {
	if l == nil {
		return "-"
	}
	return fmt.Sprintf("%.1f", [...]float64{l.P50, l.P95, l.P99}[i])
}
