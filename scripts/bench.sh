#!/usr/bin/env bash
# `make bench`: release builds of the mesh under `make dev`, the load generator on
# the same machine (loopback), and docs/benchmarks.md rewritten with the results.
set -euo pipefail
cd "$(dirname "$0")/.."

MESH=
# The mesh in the background (release binaries, no rate limit in the way, and
# one client may hold section 6's thousand watches);
# $1 non-empty: every gRPC hop in plaintext, for section 7's comparison; then
# settings for every process (NAME=value).
start_mesh() {
    env "${@:2}" SHOPMESH_BENCH_PLAINTEXT="$1" SHOPMESH_BUILD_PROFILE=release RATE_LIMIT_PER_SEC=1000000 \
        RATE_LIMIT_BURST=1000000 RUST_LOG=warn \
        MAX_WATCHES_PER_USER=1000 MAX_INFLIGHT_REQUESTS_PER_CLIENT=4096 scripts/dev.sh 2>.dev-bench.log &
    MESH=$!
    for _ in $(seq 1 300); do
        grep -q "Ctrl-C stops everything" .dev-bench.log 2>/dev/null && return 0
        sleep 0.5
    done
    echo "the mesh did not start; see .dev-bench.log" >&2
    exit 1
}
stop_mesh() {
    [ -n "$MESH" ] || return 0
    kill -TERM "$MESH" 2>/dev/null || true
    wait "$MESH" 2>/dev/null || true
    MESH=
}
# grpc-gateway, section 8's peer.
PEER_PORT=8090
PEER=
stop_peer() {
    [ -n "$PEER" ] || return 0
    kill "$PEER" 2>/dev/null || true
    wait "$PEER" 2>/dev/null || true
    PEER=
}
trap 'stop_peer; stop_mesh' EXIT
# grpc-gateway in front of the running mesh's plaintext inventory service.
start_peer() {
    "$PEER_BIN" -backend 127.0.0.1:50052 -listen "127.0.0.1:$PEER_PORT" 2>>.dev-bench.log &
    PEER=$!
    for _ in $(seq 1 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PEER_PORT") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "grpc-gateway did not start; see .dev-bench.log" >&2
    exit 1
}

CONCURRENCY=${BENCH_CONCURRENCY:-16}
SECONDS_PER_ROUND=${BENCH_SECONDS:-5}
ROUNDS=${BENCH_ROUNDS:-3}
BENCH=target/release/shop-bench
if [ -z "${SHOPMESH_BENCH_MESH:-}" ]; then
    cargo build --release --workspace --bins
    start_mesh ""
fi
mkdir -p docs
report=$($BENCH report "$CONCURRENCY" "$SECONDS_PER_ROUND" "$ROUNDS")
# Sections 7 and 8 restart the mesh in plaintext, so only on a mesh this script started.
if [ -z "${SHOPMESH_BENCH_MESH:-}" ]; then
    tls_on=$($BENCH tls-cost "$CONCURRENCY" "$SECONDS_PER_ROUND" "$ROUNDS")
    stop_mesh
    start_mesh 1
    tls_off=$($BENCH tls-cost "$CONCURRENCY" "$SECONDS_PER_ROUND" "$ROUNDS" plaintext)
    report+=$'\n\n'$($BENCH tls-report "$tls_on" "$tls_off")
    if PEER_BIN=$(scripts/grpc-gateway-peer.sh); then
        start_peer
        no_io=$($BENCH peer "$CONCURRENCY" "$SECONDS_PER_ROUND" "$ROUNDS" "127.0.0.1:$PEER_PORT")
        stop_peer
        stop_mesh
        start_mesh 1 PRODUCT_CACHE_TTL_MS=0
        start_peer
        database=$($BENCH peer "$CONCURRENCY" "$SECONDS_PER_ROUND" "$ROUNDS" "127.0.0.1:$PEER_PORT")
        stop_peer
        report+=$'\n\n'$($BENCH peer-report "$no_io" "$database")
    else
        report+=$'\n\n## 8. Against grpc-gateway\n\nNot measured: grpc-gateway could not be built here (scripts/grpc-gateway-peer.sh needs Debian'"'"'s Go packages).'
    fi
    stop_mesh
else
    report+=$'\n\n## 7. What mutual TLS costs\n\nNot measured: SHOPMESH_BENCH_MESH names a mesh this run did not start, so it cannot restart it in plaintext.'
    report+=$'\n\n## 8. Against grpc-gateway\n\nNot measured, for the same reason.'
fi
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
cat > docs/benchmarks.md <<REPORT
# Benchmarks

Written by \`make bench\` on $(date -u +%Y-%m-%d): $(nproc) cores ($cpu), $(free -g | awk '/Mem:/{print $2}') GiB.
Release builds of the mesh run as \`make dev\` runs them (throwaway PostgreSQL and tansu broker),
and the load generator (\`$BENCH report $CONCURRENCY $SECONDS_PER_ROUND $ROUNDS\`, then \`tls-cost\` and \`peer\` for sections 7 and 8,
the project's own Rust client) shares the same $(nproc) cores over loopback: the figures compare paths
measured in one run; they are not capacity figures for a real deployment.

$report

Every figure above is from this run alone, on the machine named at the top; what earlier changes
bought, with before and after figures, is in this file's history (\`git log -p docs/benchmarks.md\`).
REPORT
echo "wrote docs/benchmarks.md" >&2
cat docs/benchmarks.md
