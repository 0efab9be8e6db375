#!/usr/bin/env bash
# `make run`: installs what is missing, starts a local Kafka broker and
# stripe-mock (billing reports to it), and runs `meterline serve` with every
# role on the embedded ClickHouse engine, in the foreground. Ctrl-C stops
# Meterline (it flushes its last batch), the broker and stripe-mock.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_DIR"

"$DEPLOY_DIR/install.sh" kafka chdb stripe-mock uplot
export CHDB_LIB_PATH="$CHDB_LIB"
log "building meterline"
go build -o bin/meterline ./cmd/meterline

started_kafka=0
if ! "$DEPLOY_DIR/kafka.sh" status >/dev/null 2>&1; then
	"$DEPLOY_DIR/kafka.sh" start >/dev/null
	started_kafka=1
fi
started_stripe_mock=0
if [[ ! -f "$METERLINE_RUN/stripe-mock/stripe-mock.pid" ]] || ! kill -0 "$(cat "$METERLINE_RUN/stripe-mock/stripe-mock.pid")" 2>/dev/null; then
	started_stripe_mock=1
fi
# The dev configuration bills to this stripe-mock (billing.stripe_api_url).
METERLINE_BILLING_STRIPE_API_URL="$("$DEPLOY_DIR/stripe-mock.sh" start)"
export METERLINE_BILLING_STRIPE_API_URL
cleanup() {
	rm -f "$METERLINE_RUN/meterline.pid"
	if [[ $started_kafka == 1 ]]; then "$DEPLOY_DIR/kafka.sh" stop; fi
	if [[ $started_stripe_mock == 1 ]]; then "$DEPLOY_DIR/stripe-mock.sh" stop; fi
}
trap cleanup EXIT

config="${METERLINE_CONFIG:-$DEPLOY_DIR/meterline.dev.yaml}"
cat >&2 <<MSG

  Meterline is starting on http://127.0.0.1:8080 (Kafka at 127.0.0.1:9092, data in .run/).
  Billing reports settled hours to stripe-mock at $METERLINE_BILLING_STRIPE_API_URL.
  Local development tokens (deploy/meterline.dev.yaml): ingest ml_dev_ingest, admin ml_dev_admin.

  Send events:
    curl -sS -X POST http://127.0.0.1:8080/v1/events \\
      -H 'Authorization: Bearer ml_dev_ingest' -H 'Content-Type: application/json' \\
      -d '[{"id":"req-1","time":"'\$(date -u +%FT%T.000Z)'","api_key_id":"key_demo","customer_id":"acme","method":"GET","route":"/v1/pets/{id}","status":200,"latency_ms":12.5,"client_ip":"203.0.113.77"}]'

  See them stored (within about a second):
    curl -sS 'http://127.0.0.1:8080/v1/events/stored?api_key_id=key_demo' -H 'Authorization: Bearer ml_dev_admin'

  Web interface: http://127.0.0.1:8080/ui/  (sign in with the dev admin token ml_dev_admin)
  Metrics: http://127.0.0.1:8080/metrics     Stop: Ctrl-C, or "make stop" from another terminal
  Demo traffic (two customers, a usage alert, reports to Stripe): "make demo" in another terminal

MSG
bin/meterline serve --config "$config" "$@" &
pid=$!
# `make stop` (deploy/stop.sh) finds it here.
mkdir -p "$METERLINE_RUN"
echo "$pid" >"$METERLINE_RUN/meterline.pid"
trap 'kill -TERM $pid 2>/dev/null || true' INT TERM
status=0
wait $pid || status=$?
# wait again: the first wait returns when the signal arrives, not when the process ends
wait $pid 2>/dev/null || true
exit $status
