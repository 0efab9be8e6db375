#!/usr/bin/env bash
# Installs the real components of the local stack into the git-ignored cache,
# from the package registries only (Maven Central, npm, the Go module proxy):
#   kafka        Apache Kafka broker jars (KRaft, no ZooKeeper)
#   chdb         libchdb.so, the embedded ClickHouse engine
#   stripe-mock  Stripe's API validator, for billing tests
#   schemathesis the OpenAPI fuzzer (PyPI, in a virtualenv), for the API
#                conformance test
#   uplot        the web interface's chart library (npm, MIT), checked
#                against its pinned integrity, into web/assets/static/vendor/
#                (git-ignored; embedded by the next go build)
#   helm         the Helm chart's tools: helm and kubeconform (built from
#                their Go modules), the Kubernetes JSON schemas of the PyPI
#                package kubernetes-validate (checked against its pinned
#                sha256) and the ServiceMonitor CRD from prometheus-operator's
#                Go module
# and, only when named, from Debian's packages (apt-get, as root or via sudo):
#   gateway      nginx with the Lua module and lua-nginx-kafka, HAProxy and
#                Caddy, for the example gateways in deploy/nginx,
#                deploy/haproxy and deploy/caddy and their tests (the
#                services the packages start, where an init system runs,
#                are stopped and disabled again: the tests run their own)
#   browser      chromium, the headless browser of the web interface's tests
#   promtool     Prometheus's promtool (package prometheus), which checks and
#                unit-tests the alert rules in deploy/prometheus; the
#                Prometheus server the package brings is left stopped
# Usage: deploy/install.sh [kafka|chdb|stripe-mock|schemathesis|uplot|helm|gateway|browser|promtool]...
#        (default: kafka chdb stripe-mock schemathesis uplot helm)
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

install_schemathesis() {
	if [[ -x "$SCHEMATHESIS_BIN" ]]; then return; fi
	need python3 "schemathesis" "python3 python3-venv"
	local venv
	venv="$(dirname "$(dirname "$SCHEMATHESIS_BIN")")"
	log "installing schemathesis $SCHEMATHESIS_VERSION from PyPI into $venv"
	# bin/st appears last, so an interrupted install is redone from scratch.
	python3 -m venv --clear "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
	"$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" ||
		{ rm -rf "$venv"; die "pip could not install schemathesis $SCHEMATHESIS_VERSION"; }
}

# uPlot, pinned by version and by the sha512 that `npm view uplot@<version>
# dist.integrity` answers; a tarball with another digest is refused.
UPLOT_VERSION="1.6.32"
UPLOT_INTEGRITY="sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="
UPLOT_DIR="$REPO_DIR/web/assets/static/vendor/uplot"

install_uplot() {
	if [[ -f "$UPLOT_DIR/uPlot.iife.min.js" && "$(cat "$UPLOT_DIR/VERSION" 2>/dev/null)" == "$UPLOT_VERSION" ]]; then return; fi
	need npm "the chart library uPlot" npm
	need openssl "the chart library uPlot (integrity check)" openssl
	log "installing uPlot $UPLOT_VERSION (npm, MIT) into $UPLOT_DIR"
	local tmp got
	tmp="$(mktemp -d)"
	(cd "$tmp" && npm pack --silent "uplot@$UPLOT_VERSION" >/dev/null)
	got="sha512-$(openssl dgst -sha512 -binary "$tmp"/uplot-"$UPLOT_VERSION".tgz | base64 -w0)"
	if [[ "$got" != "$UPLOT_INTEGRITY" ]]; then
		rm -rf "$tmp"
		die "uplot-$UPLOT_VERSION.tgz has integrity $got, want $UPLOT_INTEGRITY: refusing it"
	fi
	tar xzf "$tmp/uplot-$UPLOT_VERSION.tgz" -C "$tmp" package/dist/uPlot.iife.min.js package/dist/uPlot.min.css package/LICENSE
	rm -rf "$UPLOT_DIR.tmp" && mkdir -p "$UPLOT_DIR.tmp"
	cp "$tmp/package/dist/uPlot.iife.min.js" "$tmp/package/dist/uPlot.min.css" "$tmp/package/LICENSE" "$UPLOT_DIR.tmp/"
	echo "$UPLOT_VERSION" >"$UPLOT_DIR.tmp/VERSION"
	rm -rf "$UPLOT_DIR" && mv "$UPLOT_DIR.tmp" "$UPLOT_DIR"
	rm -rf "$tmp"
}

# The chart's tools. Helm and kubeconform are Go programs: `go install` at a
# pinned version builds them from the Go module proxy (helm takes a few
# minutes on two cores). kubeconform would fetch its schemas from GitHub
# at run time; instead it reads, from the cache, the schemas that
# kubernetes-validate ships in its wheel, in their strict form (unknown
# fields refused) for the oldest Kubernetes the chart supports and the
# newest the package has. Those schemas name themselves by https:// ids and
# point at one _definitions.json by an absolute path; the ids are removed
# and the references made relative, so that they resolve beside each file.
K8S_SCHEMAS_WHEEL_SHA256=85136d018a27b50ec7fc049d902bfa5193f5976807e6c0f408e3ab6fe078cad9
K8S_SCHEMA_VERSIONS=(v1.29.0 "v$K8S_SCHEMAS_VERSION")

install_helm() {
	need go "helm and kubeconform" golang
	if [[ ! -x "$HELM_BIN" ]]; then
		log "building helm $HELM_VERSION from its Go module into $(dirname "$HELM_BIN") (a few minutes)"
		GOBIN="$(dirname "$HELM_BIN")" go install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
	fi
	if [[ ! -x "$KUBECONFORM_BIN" ]]; then
		log "building kubeconform $KUBECONFORM_VERSION from its Go module into $(dirname "$KUBECONFORM_BIN")"
		GOBIN="$(dirname "$KUBECONFORM_BIN")" go install "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
	fi
	if [[ -f "$K8S_SCHEMAS_DIR/monitoring.coreos.com_servicemonitors.yaml" ]]; then return; fi
	need python3 "the Kubernetes JSON schemas" "python3 python3-pip"
	log "installing the Kubernetes JSON schemas (PyPI kubernetes-validate $K8S_SCHEMAS_VERSION) and the ServiceMonitor CRD (prometheus-operator $PROMETHEUS_OPERATOR_VERSION) into $K8S_SCHEMAS_DIR"
	local tmp crd_dir
	tmp="$(mktemp -d)"
	python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: -d "$tmp" "kubernetes-validate==$K8S_SCHEMAS_VERSION" ||
		{ rm -rf "$tmp"; die "pip could not download kubernetes-validate $K8S_SCHEMAS_VERSION"; }
	rm -rf "$K8S_SCHEMAS_DIR.tmp" && mkdir -p "$K8S_SCHEMAS_DIR.tmp"
	python3 - "$tmp"/kubernetes_validate-*.whl "$K8S_SCHEMAS_WHEEL_SHA256" "$K8S_SCHEMAS_DIR.tmp" "${K8S_SCHEMA_VERSIONS[@]}" <<'PY' || { rm -rf "$tmp" "$K8S_SCHEMAS_DIR.tmp"; die "the Kubernetes JSON schemas could not be installed"; }
import hashlib, json, os, sys, zipfile
wheel, want, out, versions = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
got = hashlib.sha256(open(wheel, "rb").read()).hexdigest()
if got != want:
    sys.exit(f"{os.path.basename(wheel)} has sha256 {got}, want {want}: refusing it")
with zipfile.ZipFile(wheel) as z:
    for v in versions:
        prefix = f"kubernetes_validate/kubernetes-json-schema/{v}-local-strict/"
        dest = os.path.join(out, f"{v}-standalone-strict")
        os.makedirs(dest)
        names = [n for n in z.namelist() if n.startswith(prefix) and n.endswith(".json")]
        if not names:
            sys.exit(f"the wheel has no schemas for Kubernetes {v}")
        for n in names:
            schema = json.loads(z.read(n))
            schema.pop("$id", None)
            text = json.dumps(schema).replace('"/api/_definitions.json#', '"_definitions.json#')
            with open(os.path.join(dest, os.path.basename(n)), "w") as f:
                f.write(text)
PY
	crd_dir="$(go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" |
		python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')" ||
		{ rm -rf "$tmp" "$K8S_SCHEMAS_DIR.tmp"; die "go mod download of prometheus-operator $PROMETHEUS_OPERATOR_VERSION failed"; }
	cp "$crd_dir/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" "$K8S_SCHEMAS_DIR.tmp/"
	rm -rf "$K8S_SCHEMAS_DIR" && mv "$K8S_SCHEMAS_DIR.tmp" "$K8S_SCHEMAS_DIR"
	rm -rf "$tmp"
}

# apt_install WHAT PACKAGE...: installs Debian packages with apt-get (as
# root, or through sudo), updating the package lists once if the first try
# fails; WHAT names what needs them in the messages. The caller has checked
# that apt-get exists. Sets SUDO (empty or "sudo") for later commands.
SUDO=()
apt_install() {
	local what=$1
	shift
	SUDO=()
	if [[ $(id -u) -ne 0 ]]; then
		command -v sudo >/dev/null || die "installing $* needs root: run 'apt-get install $*' as root"
		SUDO=(sudo)
	fi
	log "installing $* with apt-get${what:+ ($what)}"
	local apt=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)
	if ! "${apt[@]}" install -y --no-install-recommends "$@"; then
		log "apt-get install failed; updating the package lists and trying again"
		"${apt[@]}" update || die "apt-get update failed: cannot install $*"
		"${apt[@]}" install -y --no-install-recommends "$@" || die "apt-get could not install $*"
	fi
}

# What deploy/nginx/meterline.conf.tmpl loads, and the packages that hold it
# (Debian 12's nginx-light is nginx plus the echo module; nginx is enough);
# lua-cjson decodes Meterline's GET /v1/limits in meterline_limits.lua;
# HAProxy 2.6 (Lua 5.3 built in) for deploy/haproxy, Caddy 2.6 for
# deploy/caddy.
GATEWAY_PACKAGES=(nginx libnginx-mod-http-lua lua-nginx-kafka lua-cjson haproxy caddy)
GATEWAY_BINS=(nginx haproxy caddy)
GATEWAY_SERVICES=(nginx haproxy caddy)
GATEWAY_FILES=(
	/usr/lib/nginx/modules/ndk_http_module.so
	/usr/lib/nginx/modules/ngx_http_lua_module.so
	/usr/share/lua/5.1/nginx/kafka/producer.lua
)

gateway_missing() {
	local b f
	for b in "${GATEWAY_BINS[@]}"; do PATH="$PATH:/usr/sbin:/sbin" command -v "$b" >/dev/null || return 0; done
	for f in "${GATEWAY_FILES[@]}"; do [[ -f "$f" ]] || return 0; done
	# lua-cjson's module sits under the architecture's directory.
	compgen -G "/usr/lib/*/lua/5.1/cjson.so" >/dev/null || return 0
	return 1
}

install_gateway() {
	if ! gateway_missing; then return; fi
	command -v apt-get >/dev/null || die "the gateways need Debian's packages ${GATEWAY_PACKAGES[*]}, and apt-get is not here: install them (or nginx with ngx_http_lua_module and lua-nginx-kafka 0.07, HAProxy 2.6+ with Lua, Caddy 2.6+) by hand"
	local active=() s
	if command -v systemctl >/dev/null; then
		for s in "${GATEWAY_SERVICES[@]}"; do
			if systemctl is-active --quiet "$s" 2>/dev/null; then active+=("$s"); fi
		done
	fi
	apt_install "the gateways' own services are left stopped; the gateways and their tests run their own" "${GATEWAY_PACKAGES[@]}"
	if command -v systemctl >/dev/null; then
		for s in "${GATEWAY_SERVICES[@]}"; do
			if [[ " ${active[*]} " != *" $s "* ]] && systemctl is-active --quiet "$s" 2>/dev/null; then
				log "stopping and disabling the $s service the package started"
				"${SUDO[@]}" systemctl disable --now "$s" || log "warning: could not stop the $s service: stop it with 'systemctl disable --now $s'"
			fi
		done
	fi
	if gateway_missing; then
		die "${GATEWAY_PACKAGES[*]} are installed, yet one of ${GATEWAY_BINS[*]} or ${GATEWAY_FILES[*]} is missing"
	fi
}

# Debian's chromium: browser downloads from elsewhere (Playwright's, Chrome
# for Testing) fail on machines without internet; the Debian package does not.
BROWSER_PACKAGES=(chromium)
BROWSER_BIN=/usr/bin/chromium

install_browser() {
	if [[ -x "$BROWSER_BIN" ]]; then return; fi
	command -v apt-get >/dev/null || die "the browser tests need Debian's ${BROWSER_PACKAGES[*]}, and apt-get is not here: install chromium by hand"
	apt_install "" "${BROWSER_PACKAGES[@]}"
	[[ -x "$BROWSER_BIN" ]] || die "${BROWSER_PACKAGES[*]} is installed, yet $BROWSER_BIN is missing"
}

# Debian's prometheus package, for its promtool. Its postinst starts and
# enables a Prometheus server where an init system runs: only promtool is
# wanted, so a server the install started is stopped and disabled again.
PROMTOOL_PACKAGES=(prometheus)
PROMTOOL_BIN=/usr/bin/promtool

install_promtool() {
	if [[ -x "$PROMTOOL_BIN" ]]; then return; fi
	command -v apt-get >/dev/null || die "the alert rules' tests need promtool from Debian's ${PROMTOOL_PACKAGES[*]}, and apt-get is not here: install promtool (Prometheus 2.x) by hand"
	local was_active=0
	if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then was_active=1; fi
	apt_install "for promtool" "${PROMTOOL_PACKAGES[@]}"
	if [[ $was_active -eq 0 ]] && command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
		log "stopping and disabling the prometheus service the package started (only promtool is used)"
		"${SUDO[@]}" systemctl disable --now prometheus || log "warning: could not stop the prometheus service: stop it with 'systemctl disable --now prometheus'"
	fi
	[[ -x "$PROMTOOL_BIN" ]] || die "${PROMTOOL_PACKAGES[*]} is installed, yet $PROMTOOL_BIN is missing"
}

parts=("$@")
[[ ${#parts[@]} -eq 0 ]] && parts=(kafka chdb stripe-mock schemathesis uplot helm)
for p in "${parts[@]}"; do
	case "$p" in
	kafka) install_kafka ;;
	chdb) install_chdb ;;
	stripe-mock) install_stripe_mock ;;
	schemathesis) install_schemathesis ;;
	uplot) install_uplot ;;
	helm) install_helm ;;
	gateway) install_gateway ;;
	browser) install_browser ;;
	promtool) install_promtool ;;
	*) die "unknown part '$p' (want kafka, chdb, stripe-mock, schemathesis, uplot, helm, gateway, browser or promtool)" ;;
	esac
done
