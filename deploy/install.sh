#!/usr/bin/env bash
# Installs the real components of the local stack into the git-ignored cache,
# from the package registries only (Maven Central, npm, the Go module proxy):
#   kafka        Apache Kafka broker jars (KRaft, no ZooKeeper)
#   chdb         libchdb.so, the embedded ClickHouse engine
#   stripe-mock  Stripe's API validator, for billing tests
# Usage: deploy/install.sh [kafka|chdb|stripe-mock]...   (default: all)
# Each part is skipped when already installed, so a second run is instant.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need() { command -v "$1" >/dev/null || die "$1 is required to install $2 (Debian: apt-get install $3)"; }

install_kafka() {
	if [[ -f "$KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar" ]]; then return; fi
	need java "Kafka" openjdk-17-jre-headless
	need mvn "Kafka" maven
	log "installing Apache Kafka $KAFKA_VERSION jars from Maven Central into $KAFKA_LIBS"
	local tmp="$KAFKA_LIBS.tmp.$$"
	rm -rf "$tmp"
	mvn -q -B -f "$DEPLOY_DIR/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
		dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp"
	rm -rf "$KAFKA_LIBS" && mv "$tmp" "$KAFKA_LIBS"
}

install_chdb() {
	if [[ -f "$CHDB_LIB" ]]; then return; fi
	need npm "the embedded ClickHouse engine" npm
	log "installing libchdb.so (npm @chdb/lib-linux-x64-gnu@$CHDB_NPM_VERSION, ~170 MB download) into $(dirname "$CHDB_LIB")"
	local tmp
	tmp="$(mktemp -d)"
	(cd "$tmp" && npm pack --silent "@chdb/lib-linux-x64-gnu@$CHDB_NPM_VERSION" >/dev/null && tar xzf ./*.tgz package/libchdb.so)
	mkdir -p "$(dirname "$CHDB_LIB")"
	mv "$tmp/package/libchdb.so" "$CHDB_LIB.tmp" && mv "$CHDB_LIB.tmp" "$CHDB_LIB"
	rm -rf "$tmp"
}

install_stripe_mock() {
	if [[ -x "$STRIPE_MOCK_BIN" ]]; then return; fi
	need go "stripe-mock" golang
	log "installing stripe-mock $STRIPE_MOCK_VERSION into $(dirname "$STRIPE_MOCK_BIN")"
	GOBIN="$(dirname "$STRIPE_MOCK_BIN")" go install "github.com/stripe/stripe-mock@$STRIPE_MOCK_VERSION"
}

parts=("$@")
[[ ${#parts[@]} -eq 0 ]] && parts=(kafka chdb stripe-mock)
for p in "${parts[@]}"; do
	case "$p" in
	kafka) install_kafka ;;
	chdb) install_chdb ;;
	stripe-mock) install_stripe_mock ;;
	*) die "unknown part '$p' (want kafka, chdb or stripe-mock)" ;;
	esac
done
