#!/usr/bin/env bash
# Starts or stops a single-node Apache Kafka broker (KRaft mode) on 127.0.0.1.
# Usage:
#   deploy/kafka.sh start [--dir DIR] [--port PORT] [--controller-port PORT]
#   deploy/kafka.sh stop  [--dir DIR]
#   deploy/kafka.sh status [--dir DIR]
# DIR (default .run/kafka) holds the broker's config, data, log and pid file.
# Defaults: port 9092, controller port 9093. start prints the bootstrap address.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cmd="${1:-}"
shift || true
dir="$METERLINE_RUN/kafka"
port="${KAFKA_PORT:-9092}"
cport="${KAFKA_CONTROLLER_PORT:-9093}"
while [[ $# -gt 0 ]]; do
	case "$1" in
	--dir) dir="$2"; shift 2 ;;
	--port) port="$2"; shift 2 ;;
	--controller-port) cport="$2"; shift 2 ;;
	*) die "unknown flag $1" ;;
	esac
done
pidfile="$dir/kafka.pid"

running() { [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

start() {
	"$DEPLOY_DIR/install.sh" kafka
	mkdir -p "$dir/data"
	if running; then
		log "Kafka already running (pid $(cat "$pidfile")) at $(cat "$dir/bootstrap")"
		cat "$dir/bootstrap"
		return
	fi
	# Reuse the address of an existing data dir: the broker's identity lives in it.
	if [[ -f "$dir/server.properties" ]]; then
		port="$(sed -n 's#^listeners=PLAINTEXT://127.0.0.1:\([0-9]*\),.*#\1#p' "$dir/server.properties")"
		cport="$(sed -n 's#^controller.quorum.voters=1@127.0.0.1:\([0-9]*\)#\1#p' "$dir/server.properties")"
	else
		cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
log.flush.interval.messages=9223372036854775807
PROPS
	fi
	local cp="$KAFKA_LIBS/*"
	local java_opts=(-Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true
		"-Dlog4j.configuration=file:$DEPLOY_DIR/kafka/log4j.properties")
	if [[ ! -f "$dir/data/meta.properties" ]]; then
		local id
		id="$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)"
		java "${java_opts[@]}" -cp "$cp" kafka.tools.StorageTool format -t "$id" -c "$dir/server.properties" >"$dir/format.log" 2>&1 ||
			{ cat "$dir/format.log" >&2; die "formatting Kafka storage in $dir failed"; }
	fi
	log "starting Kafka $KAFKA_VERSION on 127.0.0.1:$port (log: $dir/kafka.log)"
	nohup java "${java_opts[@]}" -cp "$cp" kafka.Kafka "$dir/server.properties" >>"$dir/kafka.log" 2>&1 </dev/null &
	echo $! >"$pidfile"
	if ! wait_port 127.0.0.1 "$port" 60; then
		tail -20 "$dir/kafka.log" >&2
		die "Kafka did not open 127.0.0.1:$port within 60 s"
	fi
	echo "127.0.0.1:$port" >"$dir/bootstrap"
	echo "127.0.0.1:$port"
}

stop() {
	if ! running; then rm -f "$pidfile"; return; fi
	local pid
	pid="$(cat "$pidfile")"
	log "stopping Kafka (pid $pid)"
	kill "$pid" 2>/dev/null || true
	for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	kill -9 "$pid" 2>/dev/null || true
	rm -f "$pidfile"
}

case "$cmd" in
start) start ;;
stop) stop ;;
status) if running; then echo "running at $(cat "$dir/bootstrap")"; else echo stopped; exit 1; fi ;;
*) die "usage: deploy/kafka.sh start|stop|status [--dir DIR] [--port PORT] [--controller-port PORT]" ;;
esac
