#!/usr/bin/env bash
# Starts or stops a single-node Apache Kafka broker (KRaft mode) on 127.0.0.1.
# Usage:
#   deploy/kafka.sh start [--dir DIR] [--port PORT] [--controller-port PORT] [--secure-port PORT]
#   deploy/kafka.sh stop  [--dir DIR]
#   deploy/kafka.sh status [--dir DIR]
# DIR (default .run/kafka) holds the broker's config, data, log and pid file.
# Defaults: port 9092, controller port 9093. start prints the PLAINTEXT
# bootstrap address.
#
# --secure-port adds a SASL_SSL listener on 127.0.0.1:PORT (dev and tests
# only), with SASL mechanisms PLAIN and SCRAM-SHA-512 for the user
# "meterline". The PLAINTEXT and controller listeners stay as they are. On
# first start it writes to DIR/tls/:
#   ca.pem             the self-signed CA that signed the broker certificate
#                      (SAN ip:127.0.0.1, dns:localhost): give it to clients
#   broker.p12         the broker's PKCS12 keystore
#   keystore-password  its password (generated, dev-only)
#   sasl-password      the password of the SASL user "meterline" (generated)
# Ports and secrets are fixed when DIR/server.properties is first written;
# later starts reuse them (remove DIR to change them).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cmd="${1:-}"
shift || true
dir="$METERLINE_RUN/kafka"
port="${KAFKA_PORT:-9092}"
cport="${KAFKA_CONTROLLER_PORT:-9093}"
sport=""
while [[ $# -gt 0 ]]; do
	case "$1" in
	--dir) dir="$2"; shift 2 ;;
	--port) port="$2"; shift 2 ;;
	--controller-port) cport="$2"; shift 2 ;;
	--secure-port) sport="$2"; shift 2 ;;
	*) die "unknown flag $1" ;;
	esac
done
pidfile="$dir/kafka.pid"

sasl_user=meterline

running() { [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

# random_secret: print a random 32-hex-digit string.
random_secret() { head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# make_tls DIR: create the dev CA, the broker's PKCS12 keystore and the
# secrets of the SASL_SSL listener in DIR (keytool comes with the JDK).
make_tls() {
	local tdir=$1 pw
	mkdir -p "$tdir"
	chmod 700 "$tdir"
	pw="$(random_secret)"
	(
		umask 077
		echo "$pw" >"$tdir/keystore-password"
		random_secret >"$tdir/sasl-password"
		cd "$tdir"
		local kt=(keytool -noprompt -storetype PKCS12 -storepass "$pw")
		"${kt[@]}" -genkeypair -alias ca -keyalg EC -groupname secp256r1 -validity 3650 \
			-dname "CN=Meterline dev CA" -ext bc:c -ext KU=keyCertSign,cRLSign -keystore ca.p12
		"${kt[@]}" -exportcert -rfc -alias ca -keystore ca.p12 -file ca.pem
		"${kt[@]}" -genkeypair -alias broker -keyalg EC -groupname secp256r1 -validity 825 \
			-dname "CN=localhost" -keystore broker.p12
		"${kt[@]}" -certreq -alias broker -keystore broker.p12 -file broker.csr
		"${kt[@]}" -gencert -rfc -alias ca -keystore ca.p12 -infile broker.csr -outfile broker.pem -validity 825 \
			-ext SAN=ip:127.0.0.1,dns:localhost -ext KU=digitalSignature,keyEncipherment -ext EKU=serverAuth
		"${kt[@]}" -importcert -alias ca -keystore broker.p12 -file ca.pem
		"${kt[@]}" -importcert -alias broker -keystore broker.p12 -file broker.pem
		chmod 644 ca.pem
		rm -f broker.csr
	) >"$tdir/keytool.log" 2>&1 || { cat "$tdir/keytool.log" >&2; die "creating the TLS files in $tdir failed"; }
}

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
		local old_sport
		old_sport="$(sed -n 's#^listeners=.*,SASL_SSL://127.0.0.1:\([0-9]*\).*#\1#p' "$dir/server.properties")"
		if [[ -n $sport && $sport != "$old_sport" ]]; then
			log "ignoring --secure-port $sport: $dir/server.properties is already written (remove $dir to change it)"
		fi
		sport="$old_sport"
	else
		local listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
		local advertised="PLAINTEXT://127.0.0.1:$port"
		local protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
		if [[ -n $sport ]]; then
			make_tls "$dir/tls"
			listeners+=",SASL_SSL://127.0.0.1:$sport"
			advertised+=",SASL_SSL://127.0.0.1:$sport"
			protocols+=",SASL_SSL:SASL_SSL"
		fi
		cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
listener.security.protocol.map=$protocols
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
		if [[ -n $sport ]]; then
			local kpw spw
			kpw="$(cat "$dir/tls/keystore-password")"
			spw="$(cat "$dir/tls/sasl-password")"
			chmod 600 "$dir/server.properties" # it holds the dev secrets
			cat >>"$dir/server.properties" <<PROPS
# SASL_SSL listener (dev-only secrets, see $dir/tls/)
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$sasl_user="$spw";
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=$dir/tls/broker.p12
listener.name.sasl_ssl.ssl.keystore.password=$kpw
listener.name.sasl_ssl.ssl.key.password=$kpw
PROPS
		fi
	fi
	local cp="$KAFKA_LIBS/*"
	local java_opts=(-Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true
		"-Dlog4j.configuration=file:$DEPLOY_DIR/kafka/log4j.properties")
	if [[ ! -f "$dir/data/meta.properties" ]]; then
		local id scram=()
		id="$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)"
		# SCRAM credentials live in the cluster metadata: KRaft adds them at format time.
		if [[ -n $sport ]]; then
			scram=(--add-scram "SCRAM-SHA-512=[name=$sasl_user,password=$(cat "$dir/tls/sasl-password")]")
		fi
		java "${java_opts[@]}" -cp "$cp" kafka.tools.StorageTool format -t "$id" -c "$dir/server.properties" "${scram[@]}" >"$dir/format.log" 2>&1 ||
			{ cat "$dir/format.log" >&2; die "formatting Kafka storage in $dir failed"; }
	fi
	log "starting Kafka $KAFKA_VERSION on 127.0.0.1:$port${sport:+ (SASL_SSL on 127.0.0.1:$sport)} (log: $dir/kafka.log)"
	nohup java "${java_opts[@]}" -cp "$cp" kafka.Kafka "$dir/server.properties" >>"$dir/kafka.log" 2>&1 </dev/null &
	echo $! >"$pidfile"
	if ! wait_port 127.0.0.1 "$port" 60; then
		tail -20 "$dir/kafka.log" >&2
		die "Kafka did not open 127.0.0.1:$port within 60 s"
	fi
	if [[ -n $sport ]] && ! wait_port 127.0.0.1 "$sport" 30; then
		tail -20 "$dir/kafka.log" >&2
		die "Kafka did not open its SASL_SSL listener 127.0.0.1:$sport within 30 s"
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
*) die "usage: deploy/kafka.sh start|stop|status [--dir DIR] [--port PORT] [--controller-port PORT] [--secure-port PORT]" ;;
esac
