#!/usr/bin/env bash
# `make test`: installs what is missing (deploy/install.sh, the Helm chart's
# tools among it, and its gateway and browser parts: nginx, HAProxy and Caddy
# for the gateway tests, chromium for the browser tests; promtool for the
# alert rules' tests), starts the shared servers once (a
# Kafka broker on free ports, stripe-mock), runs go vet, the gofmt check and
# every test (unit and integration) against them, then stops them.
# Extra arguments go to `go test` (default: ./...).
# Set METERLINE_TEST_CLICKHOUSE_ADDR=host:9000 to also run the store tests
# against a ClickHouse server, and METERLINE_TEST_CLICKHOUSE_CLUSTER=name to
# run the cluster test on that server's cluster (docs/cluster.md).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_DIR"

"$DEPLOY_DIR/install.sh"
export CHDB_LIB_PATH="$CHDB_LIB"
export METERLINE_TEST_SCHEMATHESIS="$SCHEMATHESIS_BIN"
# The three-node cluster of the Kafka fault test runs from the same jars.
export METERLINE_TEST_KAFKA_LIBS="$KAFKA_LIBS"
# The Helm chart's tests (deploy/install.sh helm, part of the default install).
export METERLINE_TEST_HELM="$HELM_BIN"
export METERLINE_TEST_KUBECONFORM="$KUBECONFORM_BIN"
export METERLINE_TEST_K8S_SCHEMAS="$K8S_SCHEMAS_DIR"
# The gateway tests need Debian's nginx (with its Lua module and Lua Kafka
# producer), HAProxy and Caddy: without them (no apt-get, no root) they are
# skipped, except in CI.
if "$DEPLOY_DIR/install.sh" gateway; then
	export METERLINE_TEST_NGINX METERLINE_TEST_HAPROXY METERLINE_TEST_CADDY
	METERLINE_TEST_NGINX="$(PATH="$PATH:/usr/sbin:/sbin" command -v nginx)"
	METERLINE_TEST_HAPROXY="$(PATH="$PATH:/usr/sbin:/sbin" command -v haproxy)"
	METERLINE_TEST_CADDY="$(PATH="$PATH:/usr/sbin:/sbin" command -v caddy)"
elif [[ -n "${CI:-}" ]]; then
	die "the gateway packages are required in CI"
else
	log "warning: the gateway packages could not be installed; the gateway tests will be skipped"
fi
# The web interface's browser tests drive Debian's chromium headless: without
# it they are skipped, except in CI.
if "$DEPLOY_DIR/install.sh" browser; then
	export METERLINE_TEST_CHROMIUM=/usr/bin/chromium
elif [[ -n "${CI:-}" ]]; then
	die "chromium is required in CI"
else
	log "warning: chromium could not be installed; the browser tests will be skipped"
fi
# The alert rules' tests run Debian's promtool: without it they are
# skipped, except in CI.
if "$DEPLOY_DIR/install.sh" promtool; then
	export METERLINE_TEST_PROMTOOL=/usr/bin/promtool
elif [[ -n "${CI:-}" ]]; then
	die "promtool is required in CI"
else
	log "warning: promtool could not be installed; the alert rules' tests will be skipped"
fi

state="$(mktemp -d "${TMPDIR:-/tmp}/meterline-test.XXXXXX")"
cleanup() {
	"$DEPLOY_DIR/kafka.sh" stop --dir "$state/kafka" || true
	"$DEPLOY_DIR/stripe-mock.sh" stop --dir "$state/stripe-mock" || true
	rm -rf "$state"
}
trap cleanup EXIT

kport="$(free_port)"
cport="$(free_port)"
export METERLINE_TEST_KAFKA
METERLINE_TEST_KAFKA="$("$DEPLOY_DIR/kafka.sh" start --dir "$state/kafka" --port "$kport" --controller-port "$cport")"
export METERLINE_TEST_STRIPE_MOCK
METERLINE_TEST_STRIPE_MOCK="$("$DEPLOY_DIR/stripe-mock.sh" start --dir "$state/stripe-mock" --port "$(free_port)")"
log "Kafka at $METERLINE_TEST_KAFKA, stripe-mock at $METERLINE_TEST_STRIPE_MOCK"

log "go vet and gofmt"
go vet ./...
unformatted="$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.cache/*'))"
[[ -z "$unformatted" ]] || die "gofmt needed on: $unformatted"

log "go test"
args=("$@")
[[ ${#args[@]} -eq 0 ]] && args=(./...)
go test -count=1 -timeout 45m "${args[@]}"
