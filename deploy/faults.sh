#!/usr/bin/env bash
# `make faults`: installs what is missing (the Kafka jars, libchdb.so) and
# runs the Kafka fault test alone and verbosely: a three-node KRaft cluster
# of its own (deploy/kafka-cluster.sh, on free ports), two collector
# processes and a sink under load while nodes are killed with SIGKILL and
# restarted one by one. It prints, per fault, the time until new leaders
# and until the last 503, the events/s meanwhile against the rate before
# the fault, and the final count (sent, stored, lost, duplicates).
# `make test` runs the same test among all the others.
# Extra arguments go to `go test` (e.g. -count=3).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_DIR"

"$DEPLOY_DIR/install.sh" kafka chdb
export CHDB_LIB_PATH="$CHDB_LIB"
export METERLINE_TEST_KAFKA_LIBS="$KAFKA_LIBS"
mkdir -p "$METERLINE_RUN"
out="$METERLINE_RUN/faults.log"
log "go test: TestClusterFaultsUnderLoad (a few minutes; full output in $out)"
status=0
go test -count=1 -timeout 30m -v ./cmd/meterline -run '^TestClusterFaultsUnderLoad$' "$@" >"$out" 2>&1 || status=$?
# The figures; the processes' logs (printed on failure) stay in $out.
grep -E '^(--- |PASS|FAIL|ok |panic)|cluster_faults_test.go' "$out" || true
if [[ $status -ne 0 ]]; then
	die "the fault test failed (exit $status): see $out for the processes' logs"
fi
