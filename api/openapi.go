package api

import (
	_ "embed"
	"net/http"

	"github.com/meterline/meterline/internal/httpx"
)

// OpenAPI is this server's HTTP API as an OpenAPI 3.1 document. The test
// suite checks the running server against it (schemathesis).
//
//go:embed openapi.yaml
var OpenAPI []byte

// NewOpenAPIHandler serves OpenAPI at GET /v1/openapi.yaml, without a token:
// it describes the API, it holds no data.
func NewOpenAPIHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			httpx.MethodNotAllowed(w, http.MethodGet)
			return
		}
		w.Header().Set("Content-Type", "application/yaml")
		_, _ = w.Write(OpenAPI)
	})
}
