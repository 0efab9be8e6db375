#!/usr/bin/env bash
# `make demo`: with `make run` going, sends realistic traffic for the
# development customers (`meterline demo`), receives their usage alerts and
# prints them. Ctrl-C (or `make stop`) ends it. Extra arguments go to
# `meterline demo` (`make demo ARGS="--rate 20"`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_DIR"

[[ -x bin/meterline ]] || { log "building meterline"; go build -o bin/meterline ./cmd/meterline; }
config="${METERLINE_CONFIG:-$DEPLOY_DIR/meterline.dev.yaml}"
# The development configuration's alert signing secret, so the demo can
# check each delivery's signature (never use that file in production).
secret="$(sed -n 's/^  webhook_secret: *\(dev-webhook[^ ]*\).*/\1/p' "$config" | head -n 1)"
mkdir -p "$METERLINE_RUN"
METERLINE_LIMITS_WEBHOOK_SECRET="$secret" bin/meterline demo \
	--url "${METERLINE_URL:-http://127.0.0.1:8080}" --token ml_dev_ingest --admin-token ml_dev_admin "$@" &
pid=$!
echo "$pid" >"$METERLINE_RUN/demo.pid"
trap 'kill -TERM $pid 2>/dev/null || true' INT TERM
status=0
wait $pid || status=$?
wait $pid 2>/dev/null || true
rm -f "$METERLINE_RUN/demo.pid"
exit $status
