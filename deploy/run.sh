#!/usr/bin/env bash
# `make run`: installs what is missing, starts a local Kafka broker, and runs
# `meterline serve` with every role on the embedded ClickHouse engine, in the
# foreground. Ctrl-C stops Meterline (it flushes its last batch) and the broker.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_DIR"

"$DEPLOY_DIR/install.sh" kafka chdb
export CHDB_LIB_PATH="$CHDB_LIB"
log "building meterline"
go build -o bin/meterline ./cmd/meterline

started_kafka=0
if ! "$DEPLOY_DIR/kafka.sh" status >/dev/null 2>&1; then
	"$DEPLOY_DIR/kafka.sh" start >/dev/null
	started_kafka=1
fi
cleanup() {
	if [[ $started_kafka == 1 ]]; then "$DEPLOY_DIR/kafka.sh" stop; fi
}
trap cleanup EXIT

config="${METERLINE_CONFIG:-$DEPLOY_DIR/meterline.dev.yaml}"
cat >&2 <<MSG

  Meterline is starting on http://127.0.0.1:8080 (Kafka at 127.0.0.1:9092, data in .run/).
  Local development tokens (deploy/meterline.dev.yaml): ingest ml_dev_ingest, admin ml_dev_admin.

  Send events:
    curl -sS -X POST http://127.0.0.1:8080/v1/events \\
      -H 'Authorization: Bearer ml_dev_ingest' -H 'Content-Type: application/json' \\
      -d '[{"id":"req-1","time":"'\$(date -u +%FT%T.000Z)'","api_key_id":"key_demo","customer_id":"acme","method":"GET","route":"/v1/pets/{id}","status":200,"latency_ms":12.5,"client_ip":"203.0.113.77"}]'

  See them stored (within about a second):
    curl -sS 'http://127.0.0.1:8080/v1/events/stored?api_key_id=key_demo' -H 'Authorization: Bearer ml_dev_admin'

  Metrics: http://127.0.0.1:8080/metrics     Stop: Ctrl-C

MSG
bin/meterline serve --config "$config" "$@" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true' INT TERM
status=0
wait $pid || status=$?
# wait again: the first wait returns when the signal arrives, not when the process ends
wait $pid 2>/dev/null || true
exit $status
