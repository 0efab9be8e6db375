#!/usr/bin/env bash
# `make stop`: stops everything `make run` and `make demo` started, in the
# order that loses nothing: the demo (its traffic and alert receiver), then
# `meterline serve` (SIGTERM: it flushes its last batch), then stripe-mock
# and the Kafka broker (and a deploy/kafka-cluster.sh cluster in .run/). Each is found by its pid file under .run/
# ($METERLINE_RUN); what is not running is skipped, so a second `make stop`
# does nothing and succeeds.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# stop_pid NAME PIDFILE WORD SECONDS: SIGTERM the process of PIDFILE when it
# still runs a command line containing WORD (a reused pid is left alone),
# wait up to SECONDS for it to exit, then SIGKILL it.
stop_pid() {
	local name=$1 pidfile=$2 word=$3 secs=$4 pid
	[[ -f "$pidfile" ]] || return 0
	pid="$(cat "$pidfile")"
	if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$word"; then
		log "stopping $name (pid $pid)"
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < secs * 10; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		if kill -0 "$pid" 2>/dev/null; then
			log "$name did not stop within ${secs}s; killing it"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	rm -f "$pidfile"
}

stop_pid "the demo" "$METERLINE_RUN/demo.pid" demo 15
stop_pid "meterline" "$METERLINE_RUN/meterline.pid" serve 40
"$DEPLOY_DIR/stripe-mock.sh" stop
"$DEPLOY_DIR/kafka.sh" stop
# A cluster started by hand with deploy/kafka-cluster.sh in its default folder.
if [[ -f "$METERLINE_RUN/kafka-cluster/bootstrap" ]]; then
	"$DEPLOY_DIR/kafka-cluster.sh" stop
fi
