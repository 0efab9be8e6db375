package httpmeter_test

import (
	"context"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterline/meterline/gateway/httpmeter"
)

// A service on Go's ServeMux: routes are the patterns it matched, the key
// comes from a header the service's own authentication set, and Close sends
// what is held when the service stops.
func Example() {
	m, err := httpmeter.New(httpmeter.Config{
		Endpoint: "http://127.0.0.1:8080", // the collector
		Token:    os.Getenv("METERLINE_INGEST_TOKEN"),
		KeyFunc: func(r *http.Request) (apiKeyID, customerID string) {
			return r.Header.Get("X-Api-Key-Id"), ""
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/pets/{id}", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"id":"`+r.PathValue("id")+`"}`) // metered as route /v1/pets/{id}
	})
	srv := &http.Server{Addr: ":8081", Handler: m.Middleware(mux)}
	go func() {
		if err := srv.ListenAndServe(); err != http.ErrServerClosed {
			log.Fatal(err)
		}
	}()

	stop, _ := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	<-stop.Done()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = srv.Shutdown(ctx) // the last requests end first
	if err := m.Close(ctx); err != nil {
		log.Print(err) // "httpmeter: N events not sent before the close deadline: ..."
	}
}

// Billable units other than one per request: the handler says how many.
func ExampleSetUnits() {
	handler := func(w http.ResponseWriter, r *http.Request) {
		rows := 250 // what this request returned
		httpmeter.SetUnits(w, float64(rows))
		_, _ = io.WriteString(w, strconv.Itoa(rows)+" rows")
	}
	_ = handler
}

// Routers whose template only the handler knows name it with SetRoute. It
// finds the middleware's writer under the router's own (gin's, echo's)
// through their Unwrap method:
//
//	// gin: engine.Use(func(c *gin.Context) { c.Next(); httpmeter.SetRoute(c.Writer, c.FullPath()) })
//	// echo: e.Use(func(next echo.HandlerFunc) echo.HandlerFunc { return func(c echo.Context) error {
//	//           httpmeter.SetRoute(c.Response(), c.Path()); return next(c) } })
//	http.ListenAndServe(":8081", m.Middleware(engine))
func ExampleSetRoute() {
	handler := func(w http.ResponseWriter, r *http.Request) {
		httpmeter.SetRoute(w, "/v1/orders/{id}")
		w.WriteHeader(http.StatusNoContent)
	}
	_ = handler
}

// Routers that keep the template in the request's context name it through
// RouteFunc, which runs after the handler returned, for example chi:
//
//	RouteFunc: func(r *http.Request) string { return chi.RouteContext(r.Context()).RoutePattern() },
func ExampleConfig_routeFunc() {
	type routeKey struct{}
	cfg := httpmeter.Config{
		Endpoint: "http://127.0.0.1:8080",
		KeyFunc:  func(r *http.Request) (string, string) { return r.Header.Get("X-Api-Key-Id"), "" },
		RouteFunc: func(r *http.Request) string {
			route, _ := r.Context().Value(routeKey{}).(*string)
			if route == nil {
				return ""
			}
			return *route
		},
	}
	_ = cfg
}

// The meterline_client_* metrics go to the registry the service already
// exposes.
func ExampleConfig_registerer() {
	reg := prometheus.NewRegistry()
	m, err := httpmeter.New(httpmeter.Config{
		Endpoint:   "http://127.0.0.1:8080",
		KeyFunc:    func(r *http.Request) (string, string) { return r.Header.Get("X-Api-Key-Id"), "" },
		Registerer: reg,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close(context.Background())
}
