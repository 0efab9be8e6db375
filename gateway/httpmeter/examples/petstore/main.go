// Command petstore is a small API metered into Meterline with
// gateway/httpmeter: every request that carries X-Api-Key-Id becomes an
// event posted to the collector.
//
//	METERLINE_INGEST_TOKEN=ml_dev_ingest go run ./gateway/httpmeter/examples/petstore -collector http://127.0.0.1:8080
//	curl -H 'X-Api-Key-Id: key_demo' http://127.0.0.1:8081/v1/pets/7
//	curl -H 'X-Api-Key-Id: key_demo' 'http://127.0.0.1:8081/v1/pets?limit=25'   # 25 units
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meterline/meterline/gateway/httpmeter"
)

func main() {
	collector := flag.String("collector", "http://127.0.0.1:8080", "the Meterline collector's base URL")
	listen := flag.String("listen", "127.0.0.1:8081", "address of the pet API")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(*collector, *listen, os.Getenv("METERLINE_INGEST_TOKEN"), log); err != nil {
		log.Error("petstore", "err", err)
		os.Exit(1)
	}
}

func run(collector, listen, token string, log *slog.Logger) error {
	reg := prometheus.NewRegistry()
	m, err := httpmeter.New(httpmeter.Config{
		Endpoint: collector,
		Token:    token,
		KeyFunc: func(r *http.Request) (string, string) {
			// A real service takes the key from its own authentication.
			return r.Header.Get("X-Api-Key-Id"), ""
		},
		Gateway:    "petstore",
		Registerer: reg,
		Logger:     log,
	})
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/pets/{id}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":%q,"name":"rex"}`+"\n", r.PathValue("id"))
	})
	mux.HandleFunc("GET /v1/pets", func(w http.ResponseWriter, r *http.Request) {
		limit, err := strconv.Atoi(r.URL.Query().Get("limit"))
		if err != nil || limit < 1 || limit > 100 {
			limit = 10
		}
		httpmeter.SetUnits(w, float64(limit)) // a listing bills one unit per pet
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"pets":%d}`+"\n", limit)
	})
	root := http.NewServeMux()
	root.Handle("/v1/", m.Middleware(mux))
	root.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Addr: listen, Handler: root, ReadHeaderTimeout: 10 * time.Second}

	stop, cancelStop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancelStop()
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	log.Info("petstore listening", "addr", listen, "collector", collector)
	select {
	case err := <-errc:
		return err
	case <-stop.Done():
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("shutdown", "err", err)
	}
	return m.Close(ctx)
}
