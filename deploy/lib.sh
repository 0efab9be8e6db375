# Shared settings of the deploy scripts. Sourced, not run.
# Every download goes to $METERLINE_CACHE (default: .cache/ in the repository, git-ignored).

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$DEPLOY_DIR/.." && pwd)"
METERLINE_CACHE="${METERLINE_CACHE:-$REPO_DIR/.cache}"
METERLINE_RUN="${METERLINE_RUN:-$REPO_DIR/.run}"

# Pinned versions. Kafka 3.9 is the last line that still accepts the oldest
# Produce versions (v0-v2) that some gateway producers speak; see docs/kafka.md.
KAFKA_VERSION="${KAFKA_VERSION:-3.9.1}"
# libchdb's version lives in store/chdb.version, read by the Go code too
# (the binary looks for the library where this installs it).
CHDB_NPM_VERSION="${CHDB_NPM_VERSION:-$(<"$REPO_DIR/store/chdb.version")}"
STRIPE_MOCK_VERSION="${STRIPE_MOCK_VERSION:-v0.190.0}"

KAFKA_LIBS="$METERLINE_CACHE/kafka/$KAFKA_VERSION/libs"
CHDB_LIB="$METERLINE_CACHE/chdb/$CHDB_NPM_VERSION/libchdb.so"
STRIPE_MOCK_BIN="$METERLINE_CACHE/stripe-mock/$STRIPE_MOCK_VERSION/stripe-mock"
SCHEMATHESIS_VERSION=4.32.5
SCHEMATHESIS_BIN="$METERLINE_CACHE/schemathesis/$SCHEMATHESIS_VERSION/bin/st"
# The Helm chart's tools (deploy/install.sh helm): Helm and kubeconform built
# from their Go modules, the Kubernetes JSON schemas that the PyPI package
# kubernetes-validate ships, and the ServiceMonitor CRD of prometheus-operator's
# Go module (kubeconform's own schemas are on GitHub, out of reach here).
HELM_VERSION=v4.3.2
KUBECONFORM_VERSION=v0.8.0
K8S_SCHEMAS_VERSION=1.37.0
PROMETHEUS_OPERATOR_VERSION=v0.85.0
HELM_BIN="$METERLINE_CACHE/helm/$HELM_VERSION/helm"
KUBECONFORM_BIN="$METERLINE_CACHE/kubeconform/$KUBECONFORM_VERSION/kubeconform"
K8S_SCHEMAS_DIR="$METERLINE_CACHE/k8s-schemas/$K8S_SCHEMAS_VERSION-po-$PROMETHEUS_OPERATOR_VERSION"

log() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# wait_port HOST PORT SECONDS: wait until a TCP port accepts connections.
wait_port() {
	local host=$1 port=$2 secs=$3 i
	for ((i = 0; i < secs * 10; i++)); do
		if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	return 1
}

# free_port: print a TCP port that is free on 127.0.0.1 right now, taken
# from the 12,000 ports below the kernel's ephemeral range: a port in that
# range can be handed to an outgoing connection between the pick and the
# server's bind (the Kafka clients of a test run open many).
free_port() {
	python3 - <<'PY'
import random, socket
lo, hi = 20000, 32000
try:
    elo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    if elo >= 13024:
        lo, hi = elo - 12000, elo
except (OSError, ValueError, IndexError):
    pass
for _ in range(200):
    p = random.randrange(lo, hi)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
else:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
PY
}
