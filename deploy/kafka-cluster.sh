#!/usr/bin/env bash
# Starts, stops and breaks a three-node Apache Kafka cluster (KRaft) on
# 127.0.0.1, from the same jars as deploy/kafka.sh: each node is a combined
# controller and broker (process.roles=broker,controller), the three form
# one controller quorum, and topics default to replication factor 3 with
# min.insync.replicas=2, as docs/kafka.md recommends for production.
#
# Usage:
#   deploy/kafka-cluster.sh start   [--dir DIR] [--ports P1,P2,P3] [--controller-ports C1,C2,C3]
#   deploy/kafka-cluster.sh start   --node N [--dir DIR]   start one stopped node again
#   deploy/kafka-cluster.sh stop    [--node N] [--dir DIR]  SIGTERM (controlled shutdown), SIGKILL after 30 s
#   deploy/kafka-cluster.sh kill    --node N [--dir DIR]    SIGKILL at once (a crash)
#   deploy/kafka-cluster.sh status  [--dir DIR]
#
# DIR (default .run/kafka-cluster) holds DIR/nodeN/ (config, data, log, pid)
# for N = 1, 2, 3 and DIR/bootstrap. Without --ports, free ports are picked
# on first start; ports are fixed when DIR is first written and reused by
# later starts (remove DIR to change them). start prints the bootstrap
# addresses, comma-separated, once every started node logged that it is up.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

nodes=3
cmd="${1:-}"
shift || true
dir="$METERLINE_RUN/kafka-cluster"
node=""
ports=""
cports=""
usage="usage: deploy/kafka-cluster.sh start|stop|kill|status [--dir DIR] [--node 1-3] [--ports P1,P2,P3] [--controller-ports C1,C2,C3]"
while [[ $# -gt 0 ]]; do
	[[ $# -ge 2 ]] || die "flag $1 needs a value; $usage"
	case "$1" in
	--dir) dir="$2" ;;
	--node) node="$2" ;;
	--ports) ports="$2" ;;
	--controller-ports) cports="$2" ;;
	*) die "unknown flag $1; $usage" ;;
	esac
	shift 2
done
if [[ -n $node ]] && ! [[ $node =~ ^[1-3]$ ]]; then
	die "--node: $node is not a node of the cluster (1, 2 or 3)"
fi

# check_ports NAME LIST: LIST must be three distinct TCP ports.
check_ports() {
	local name=$1 list=$2 p
	IFS=, read -r -a arr <<<"$list"
	[[ ${#arr[@]} -eq $nodes ]] || die "$name: want $nodes comma-separated ports, got \"$list\""
	for p in "${arr[@]}"; do
		[[ $p =~ ^[0-9]+$ ]] && ((p >= 1 && p <= 65535)) || die "$name: \"$p\" is not a TCP port (1-65535)"
	done
	[[ $(printf '%s\n' "${arr[@]}" | sort -u | wc -l) -eq $nodes ]] || die "$name: the ports must differ: \"$list\""
}

node_dir() { echo "$dir/node$1"; }
pid_of() { cat "$(node_dir "$1")/kafka.pid" 2>/dev/null; }
# running N: node N's pid file names a live process that runs this node's
# configuration (a pid reused by another process is not the node).
running() {
	local pid cmdline
	pid="$(pid_of "$1")" && [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
		cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" &&
		[[ $cmdline == *"$(node_dir "$1")/server.properties"* ]]
}
node_port() { sed -n 's#^listeners=PLAINTEXT://127.0.0.1:\([0-9]*\),.*#\1#p' "$(node_dir "$1")/server.properties"; }

java_opts=(-Xms128m -Xmx512m -XX:+UseG1GC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true
	"-Dlog4j.configuration=file:$DEPLOY_DIR/kafka/log4j.properties")

# cluster_id: print a new KRaft cluster id (what StorageTool random-uuid
# prints: 16 random bytes in unpadded base64url, never starting with "-"),
# without starting a JVM for it.
cluster_id() {
	python3 -c '
import base64, os
while True:
    s = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
    if not s.startswith("-") and s != "AAAAAAAAAAAAAAAAAAAAAA":
        print(s)
        break
'
}

# configure: write the three nodes' configs and format their storage with
# one cluster id (first start of DIR only).
configure() {
	if [[ -z $ports ]]; then ports="$(free_port),$(free_port),$(free_port)"; fi
	if [[ -z $cports ]]; then cports="$(free_port),$(free_port),$(free_port)"; fi
	check_ports --ports "$ports"
	check_ports --controller-ports "$cports"
	IFS=, read -r -a bp <<<"$ports"
	IFS=, read -r -a cp <<<"$cports"
	local all
	all="$(printf '%s\n' "${bp[@]}" "${cp[@]}" | sort -u | wc -l)"
	[[ $all -eq $((2 * nodes)) ]] || die "--ports and --controller-ports must not share a port"
	local voters="" i
	for ((i = 1; i <= nodes; i++)); do voters+="${voters:+,}$i@127.0.0.1:${cp[i - 1]}"; done
	mkdir -p "$dir"
	local id
	id="$(cluster_id)"
	echo "$id" >"$dir/cluster-id"
	for ((i = 1; i <= nodes; i++)); do
		local nd
		nd="$(node_dir "$i")"
		mkdir -p "$nd/data"
		cat >"$nd/server.properties" <<PROPS
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:${bp[i - 1]},CONTROLLER://127.0.0.1:${cp[i - 1]}
advertised.listeners=PLAINTEXT://127.0.0.1:${bp[i - 1]}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$nd/data
auto.create.topics.enable=false
num.partitions=6
default.replication.factor=3
min.insync.replicas=2
unclean.leader.election.enable=false
offsets.topic.replication.factor=3
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
group.initial.rebalance.delay.ms=0
# A follower that has not caught up for this long leaves the ISR; a killed
# node is dropped at once (its session with the controller ends).
replica.lag.time.max.ms=10000
broker.session.timeout.ms=6000
broker.heartbeat.interval.ms=1000
controlled.shutdown.enable=true
# Replicas come back in the ISR with what they had fsynced or what they
# copy from the leader: durability rests on replication, as in production.
log.flush.interval.messages=9223372036854775807
PROPS
	done
	# Formatting starts a JVM per node: in parallel.
	local pids=() failed=""
	for ((i = 1; i <= nodes; i++)); do
		java "${java_opts[@]}" -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool format -t "$id" \
			-c "$(node_dir "$i")/server.properties" >"$(node_dir "$i")/format.log" 2>&1 &
		pids+=($!)
	done
	for ((i = 1; i <= nodes; i++)); do
		wait "${pids[i - 1]}" || failed+=" $i"
	done
	if [[ -n $failed ]]; then
		for i in $failed; do cat "$(node_dir "$i")/format.log" >&2; done
		rm -f "$dir/bootstrap"
		die "formatting the Kafka storage of node(s)$failed in $dir failed"
	fi
	printf '127.0.0.1:%s,127.0.0.1:%s,127.0.0.1:%s\n' "${bp[@]}" >"$dir/bootstrap"
}

# launch N: start node N in the background (no wait).
launch() {
	local i=$1 nd
	nd="$(node_dir "$i")"
	if running "$i"; then
		log "node $i already running (pid $(pid_of "$i"))"
		return
	fi
	log "starting Kafka $KAFKA_VERSION node $i on 127.0.0.1:$(node_port "$i") (log: $nd/kafka.log)"
	# The marker tells this start's "started" line from an earlier one.
	echo "=== meterline start $(date -u +%FT%TZ) ===" >>"$nd/kafka.log"
	nohup java "${java_opts[@]}" -cp "$KAFKA_LIBS/*" kafka.Kafka "$nd/server.properties" >>"$nd/kafka.log" 2>&1 </dev/null &
	echo $! >"$nd/kafka.pid"
}

# wait_up N: wait until node N logged that it started in this run (the
# broker then serves requests) or exited.
wait_up() {
	local i=$1 nd t
	nd="$(node_dir "$i")"
	for ((t = 0; t < 1200; t++)); do
		if awk '/^=== meterline start/ { up = 0 } /Kafka Server started/ { up = 1 } END { exit !up }' "$nd/kafka.log"; then
			return 0
		fi
		if ! running "$i"; then
			tail -20 "$nd/kafka.log" >&2
			grep -q 'Address already in use' "$nd/kafka.log" && die "node $i: Address already in use"
			die "node $i exited during start-up (log: $nd/kafka.log)"
		fi
		sleep 0.1
	done
	tail -20 "$nd/kafka.log" >&2
	die "node $i did not start within 120 s (log: $nd/kafka.log)"
}

start() {
	"$DEPLOY_DIR/install.sh" kafka
	if [[ ! -f $dir/bootstrap ]]; then
		[[ -z $node ]] || die "--node $node: $dir holds no cluster yet; start the whole cluster first"
		configure
	elif [[ -n $ports || -n $cports ]]; then
		log "ignoring --ports/--controller-ports: $dir is already configured (remove it to change them)"
	fi
	local list i
	if [[ -n $node ]]; then list=("$node"); else list=(1 2 3); fi
	# All at once: a node's broker waits for the controller quorum, which
	# needs two of the three.
	for i in "${list[@]}"; do launch "$i"; done
	for i in "${list[@]}"; do wait_up "$i"; done
	cat "$dir/bootstrap"
}

# stop_node N SIGNAL: send SIGNAL to node N and wait for it to be gone.
stop_node() {
	local i=$1 sig=$2 pid t
	running "$i" || { rm -f "$(node_dir "$i")/kafka.pid"; return 0; }
	pid="$(pid_of "$i")"
	log "stopping node $i (pid $pid, $sig)"
	kill "-$sig" "$pid" 2>/dev/null || true
	for ((t = 0; t < 300; t++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	if kill -0 "$pid" 2>/dev/null; then
		log "node $i still running 30 s after $sig: SIGKILL"
		kill -9 "$pid" 2>/dev/null || true
		while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
	fi
	rm -f "$(node_dir "$i")/kafka.pid"
}

stop() {
	local i
	if [[ -n $node ]]; then stop_node "$node" TERM; return; fi
	# In parallel: a node stopping alone waits for a quorum that the others
	# would no longer form once they are gone.
	for i in 1 2 3; do stop_node "$i" TERM & done
	wait
}

status() {
	[[ -f $dir/bootstrap ]] || { echo "no cluster in $dir"; exit 1; }
	local i up=0
	for i in 1 2 3; do
		if running "$i"; then
			echo "node $i: running (pid $(pid_of "$i")) at 127.0.0.1:$(node_port "$i")"
			up=$((up + 1))
		else
			echo "node $i: stopped"
		fi
	done
	echo "bootstrap: $(cat "$dir/bootstrap")"
	[[ $up -gt 0 ]]
}

case "$cmd" in
start) start ;;
stop) stop ;;
kill)
	[[ -n $node ]] || die "kill needs --node N"
	stop_node "$node" KILL
	;;
status) status ;;
*) die "$usage" ;;
esac
