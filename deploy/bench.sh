#!/usr/bin/env bash
# `make bench`: installs what is missing, starts a Kafka broker of its own on
# free ports, builds meterline outside the repository and runs
# `meterline bench` against that broker, then stops the broker.
# Arguments go to `meterline bench` (default: --duration 60s --out .run/bench).
# Set METERLINE_BENCH_KAFKA=host:port to use a running broker instead.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_DIR"

"$DEPLOY_DIR/install.sh" kafka chdb
export CHDB_LIB_PATH="$CHDB_LIB"

state="$(mktemp -d "${TMPDIR:-/tmp}/meterline-bench.XXXXXX")"
cleanup() {
	if [[ -f "$state/kafka/kafka.pid" ]]; then
		"$DEPLOY_DIR/kafka.sh" stop --dir "$state/kafka" >/dev/null 2>&1 || true
	fi
	rm -rf "$state"
}
trap cleanup EXIT

brokers="${METERLINE_BENCH_KAFKA:-}"
# Not a setting: keep it from the child processes' configuration.
unset METERLINE_BENCH_KAFKA
if [[ -z "$brokers" ]]; then
	brokers="$("$DEPLOY_DIR/kafka.sh" start --dir "$state/kafka" --port "$(free_port)" --controller-port "$(free_port)")"
fi
log "building meterline into $state"
go build -ldflags "-X main.version=$(git describe --tags --always --dirty 2>/dev/null || echo dev)" -o "$state/meterline" ./cmd/meterline

args=("$@")
[[ ${#args[@]} -eq 0 ]] && args=(--duration 60s --out "$METERLINE_RUN/bench")
log "meterline bench --kafka-brokers $brokers ${args[*]}"
"$state/meterline" bench --kafka-brokers "$brokers" "${args[@]}"
