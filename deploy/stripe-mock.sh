#!/usr/bin/env bash
# Starts or stops stripe-mock (Stripe's OpenAPI-validating API stand-in) on 127.0.0.1.
# Usage: deploy/stripe-mock.sh start [--dir DIR] [--port PORT] | stop [--dir DIR]
# Both its HTTP and HTTPS listeners are bound to 127.0.0.1 (by default it would
# open HTTPS on every interface). start prints the HTTP base URL.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cmd="${1:-}"
shift || true
dir="$METERLINE_RUN/stripe-mock"
port="${STRIPE_MOCK_PORT:-12111}"
while [[ $# -gt 0 ]]; do
	case "$1" in
	--dir) dir="$2"; shift 2 ;;
	--port) port="$2"; shift 2 ;;
	*) die "unknown flag $1" ;;
	esac
done
pidfile="$dir/stripe-mock.pid"
running() { [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

case "$cmd" in
start)
	"$DEPLOY_DIR/install.sh" stripe-mock
	mkdir -p "$dir"
	if running; then cat "$dir/url"; exit 0; fi
	https_port="$(free_port)"
	nohup "$STRIPE_MOCK_BIN" -http-addr "127.0.0.1:$port" -https-addr "127.0.0.1:$https_port" \
		>"$dir/stripe-mock.log" 2>&1 </dev/null &
	echo $! >"$pidfile"
	wait_port 127.0.0.1 "$port" 30 || { tail "$dir/stripe-mock.log" >&2; die "stripe-mock did not start"; }
	echo "http://127.0.0.1:$port" >"$dir/url"
	cat "$dir/url"
	;;
stop)
	if running; then
		pid="$(cat "$pidfile")"
		log "stopping stripe-mock (pid $pid)"
		kill "$pid" 2>/dev/null || true
		for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$pid" 2>/dev/null || true
	fi
	rm -f "$pidfile"
	;;
*) die "usage: deploy/stripe-mock.sh start|stop [--dir DIR] [--port PORT]" ;;
esac
