package ingest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterline/meterline/api"
	"github.com/meterline/meterline/internal/testenv"
)

// TestStoredHandler stores events through the sink and reads them back
// through GET /v1/events/stored.
func TestStoredHandler(t *testing.T) {
	db := requireDB(t)
	f := newSinkFixture(t)
	key := testenv.Unique("key")
	var values [][]byte
	for i := 0; i < 5; i++ {
		values = append(values, eventJSON(t, fmt.Sprintf("s-%d", i), key))
	}
	f.produce(t, key, values...)
	stop := f.run(t, db, prometheus.NewRegistry())
	waitStored(t, db, key, 5)
	_ = stop()

	srv := httptest.NewServer(api.NewStoredHandler(db, testTokens(t)))
	defer srv.Close()
	get := func(token, query string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v1/events/stored?"+query, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	q := "api_key_id=" + url.QueryEscape(key)
	for _, c := range []struct {
		token, query string
		code         int
		msg          string
	}{
		{"", q, 401, "missing bearer token"},
		{tokIngest, q, 403, "one of: admin"},
		{tokAdmin, "", 400, "at least one of"},
		{tokAdmin, q + "&limit=0", 400, "limit"},
		{tokAdmin, q + "&limit=abc", 400, "limit"},
		{tokAdmin, q + "&group_by=" + url.QueryEscape("route);DROP TABLE events"), 400, "unknown parameter"},
		{tokAdmin, "api_key_id=" + strings.Repeat("x", 129), 400, "longer than 128"},
		{tokAdmin, "api_key_id=" + url.QueryEscape("k' OR 1=1 --"), 200, `"events":[]`},
	} {
		code, body := get(c.token, c.query)
		if code != c.code || !strings.Contains(body, c.msg) {
			t.Errorf("%q: %d %s; want %d containing %q", c.query, code, body, c.code, c.msg)
		}
	}
	code, body := get(tokAdmin, q+"&limit=3")
	var out struct {
		Events []map[string]any `json:"events"`
	}
	if err := json.Unmarshal([]byte(body), &out); code != 200 || err != nil || len(out.Events) != 3 {
		t.Fatalf("%d %s", code, body)
	}
	if out.Events[0]["client_ip"] != "203.0.113.0" || out.Events[0]["api_key_id"] != key || out.Events[0]["properties"].(map[string]any)["plan"] != "pro" {
		t.Errorf("stored event: %v", out.Events[0])
	}
	// The table is intact after the injection attempts.
	if _, final, _ := countStored(t, db, key); final != 5 {
		t.Fatalf("%d rows after injection attempts, want 5", final)
	}
}
