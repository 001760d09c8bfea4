#!/usr/bin/env bash
# `make dev`: the mesh natively, in the foreground, on the ports in the README.
# Uses DATABASE_URL / KAFKA_BROKERS / REDIS_URL when set, otherwise a throwaway
# PostgreSQL, tansu broker and Redis (scripts/with-infra.sh). Ctrl-C or SIGTERM stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${SHOPMESH_INFRA_READY:-}" ]; then
    exec scripts/with-infra.sh env SHOPMESH_INFRA_READY=1 "$0" "$@"
fi

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
BIN=${CARGO_TARGET_DIR:-target}/${SHOPMESH_BUILD_PROFILE:-debug}
DEV=.dev
mkdir -p "$DEV"

# Development keys: each pair generated once, kept out of git (.dev/ is ignored).
"$BIN/user-service" generate-keys "$DEV/keys" 2>/dev/null

# One database per service on the server DATABASE_URL names.
server_url=$DATABASE_URL
db_url() { python3 - "$server_url" "$1" <<'PY'
import sys, urllib.parse as u
url = u.urlsplit(sys.argv[1])
print(u.urlunsplit(url._replace(path="/" + sys.argv[2])))
PY
}
for db in shop_user shop_inventory shop_order; do
    psql "$server_url" -qtAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
        || psql "$server_url" -qc "CREATE DATABASE $db" >/dev/null
done

export APP_ENV=development
# The README's ports unless set (the same names docker-compose.yml reads).
GATEWAY_PORT=${GATEWAY_PORT:-8080}
USER_GRPC_PORT=${USER_GRPC_PORT:-50051}
INVENTORY_GRPC_PORT=${INVENTORY_GRPC_PORT:-50052}
ORDER_GRPC_PORT=${ORDER_GRPC_PORT:-50053}
USER_ADMIN_PORT=${USER_ADMIN_PORT:-9101}
INVENTORY_ADMIN_PORT=${INVENTORY_ADMIN_PORT:-9102}
ORDER_ADMIN_PORT=${ORDER_ADMIN_PORT:-9103}
export BIND_HOST=${BIND_HOST:-127.0.0.1}
# Every copy shares rate limits and revoked tokens through this Redis.
export REDIS_URL
export RUST_LOG=${RUST_LOG:-info}
SERVICE_PUBLIC_KEY=$(cat "$DEV/keys/service.pub")
export SERVICE_PUBLIC_KEY
ADMIN_EMAIL=${BOOTSTRAP_ADMIN_EMAIL:-admin@shopmesh.dev}
ADMIN_PASSWORD=${BOOTSTRAP_ADMIN_PASSWORD:-dev-admin-password}

pids=()
stop() {
    # Ignored from here on, not reset: a second signal (with-infra.sh passes its
    # own on) must not end this script before it has stopped every service.
    trap '' INT TERM
    log "stopping"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    exit 0
}
trap stop INT TERM

# Each service signs its events with its own key; user and inventory apply only
# events the order service signed.
ORDER_EVENTS_PUBLIC_KEY=$(cat "$DEV/keys/events-order.pub")

# Mutual TLS on every gRPC hop: each process presents its own certificate from the
# development CA ($DEV/keys/tls, made by generate-keys) and names its peers by https.
PKI="$PWD/$DEV/keys/tls"
tls() { echo "TLS_CERT_FILE=$PKI/$1.crt TLS_KEY_FILE=$PKI/$1.key TLS_CA_FILE=$PKI/ca.pem"; }
SCHEME=https
GRPCURL_TLS=(-cacert "$PKI/ca.pem" -cert "$PKI/you.crt" -key "$PKI/you.key")
# SHOPMESH_BENCH_PLAINTEXT=1: every gRPC hop in plaintext, for `make bench` alone,
# which measures what mutual TLS costs against this. Nothing else sets it.
if [ -n "${SHOPMESH_BENCH_PLAINTEXT:-}" ]; then
    log "SHOPMESH_BENCH_PLAINTEXT: gRPC hops in plaintext (benchmark comparison only)"
    tls() { :; }
    SCHEME=http
    GRPCURL_TLS=(-plaintext)
fi
# REPLICAS=N (default 1) runs N copies of each service and of the gateway. Copy k
# (from 0) listens on the README's port + 10k (gateway: + k), and every caller
# names all copies of a peer in one comma-separated address, which its channel
# balances over as it would over the addresses a DNS name resolves to (compose's
# and Kubernetes' headless services).
REPLICAS=${REPLICAS:-1}
[[ "$REPLICAS" =~ ^[1-9]$ ]] || { log "REPLICAS must be 1 to 9, not '$REPLICAS'"; exit 2; }
copies() { # base-port step -> every copy's port
    for ((k = 0; k < REPLICAS; k++)); do echo $(($1 + k * $2)); done
}
addresses() { # base-port -> https://127.0.0.1:p,... for every copy
    local list=() port
    for port in $(copies "$1" 10); do list+=("$SCHEME://127.0.0.1:$port"); done
    (IFS=,; echo "${list[*]}")
}
# KAFKA_GROUP_SUFFIX gives the consumer groups names of their own (tests that run
# several meshes on one broker keep each mesh's groups apart).
GROUP_SUFFIX=${KAFKA_GROUP_SUFFIX:-}
INVENTORY_PEERS="INVENTORY_SERVICE_ADDR=$(addresses "$INVENTORY_GRPC_PORT")"
# Every verifier but the user service fetches the access token keys it publishes.
export AUTH_KEYS_ADDR
AUTH_KEYS_ADDR=$(addresses "$USER_GRPC_PORT")

for ((k = 0; k < REPLICAS; k++)); do
    env -u AUTH_KEYS_ADDR $(tls user-service) DATABASE_URL=$(db_url shop_user) \
        GRPC_PORT=$((USER_GRPC_PORT + 10 * k)) ADMIN_PORT=$((USER_ADMIN_PORT + 10 * k)) \
        AUTH_PRIVATE_KEY="$(cat "$DEV/keys/auth.key")" \
        EVENT_SIGNING_KEY="$(cat "$DEV/keys/events-user.key")" EVENT_PUBLIC_KEYS="$ORDER_EVENTS_PUBLIC_KEY" \
        BOOTSTRAP_ADMIN_EMAIL="$ADMIN_EMAIL" BOOTSTRAP_ADMIN_PASSWORD="$ADMIN_PASSWORD" \
        TRUSTED_PROXIES=${USER_TRUSTED_PROXIES:-127.0.0.1} KAFKA_GROUP_ID=user-service$GROUP_SUFFIX \
        "$BIN/user-service" &
    pids+=($!)

    env $(tls inventory-service) DATABASE_URL=$(db_url shop_inventory) \
        GRPC_PORT=$((INVENTORY_GRPC_PORT + 10 * k)) ADMIN_PORT=$((INVENTORY_ADMIN_PORT + 10 * k)) \
        EVENT_SIGNING_KEY="$(cat "$DEV/keys/events-inventory.key")" EVENT_PUBLIC_KEYS="$ORDER_EVENTS_PUBLIC_KEY" \
        KAFKA_GROUP_ID=inventory-service$GROUP_SUFFIX \
        "$BIN/inventory-service" &
    pids+=($!)

    env $(tls order-service) $INVENTORY_PEERS DATABASE_URL=$(db_url shop_order) \
        GRPC_PORT=$((ORDER_GRPC_PORT + 10 * k)) ADMIN_PORT=$((ORDER_ADMIN_PORT + 10 * k)) \
        EVENT_SIGNING_KEY="$(cat "$DEV/keys/events-order.key")" \
        SERVICE_PRIVATE_KEY="$(cat "$DEV/keys/service.key")" \
        "$BIN/order-service" &
    pids+=($!)

    env $(tls gateway) $INVENTORY_PEERS USER_SERVICE_ADDR=$(addresses "$USER_GRPC_PORT") HTTP_PORT=$((GATEWAY_PORT + k)) \
        ORDER_SERVICE_ADDR=$(addresses "$ORDER_GRPC_PORT") CORS_ALLOWED_ORIGINS="${CORS_ALLOWED_ORIGINS:-*}" \
        "$BIN/gateway" &
    pids+=($!)
done

# Wait until every copy of every service answers grpc.health.v1.
for port in $(copies "$USER_GRPC_PORT" 10) $(copies "$INVENTORY_GRPC_PORT" 10) $(copies "$ORDER_GRPC_PORT" 10); do
    serving=
    for _ in $(seq 1 300); do
        # NOT_SERVING (say, access token keys not fetched yet) is not SERVING.
        grpcurl "${GRPCURL_TLS[@]}" -max-time 1 \
            "127.0.0.1:$port" grpc.health.v1.Health/Check 2>/dev/null \
            | grep -q '"SERVING"' && serving=1 && break
        sleep 0.2
    done
    [ -n "$serving" ] || log "the service on port $port is not SERVING after 60 s; see its log above"
done

# And until every gateway sees every backend SERVING.
backends_serving() {
    curl -fsS "http://127.0.0.1:$1/readyz" 2>/dev/null | python3 -c '
import json, sys
report = json.load(sys.stdin)
sys.exit(0 if all(state == "SERVING" for state in report["backends"].values()) else 1)'
}
for port in $(copies "$GATEWAY_PORT" 1); do
    ready=
    for _ in $(seq 1 100); do
        backends_serving "$port" && ready=1 && break
        sleep 0.2
    done
    [ -n "$ready" ] || log "the gateway on port $port is not ready after 20 s (/readyz)"
done

# Demo products (kept when they exist already), as docker compose seeds them.
DATABASE_URL=$(db_url shop_inventory) "$BIN/inventory-service" seed deploy/demo/catalog.json >/dev/null

cat >&2 <<BANNER

  shopmesh is running (development mode)
    user service       grpc 127.0.0.1:$USER_GRPC_PORT   admin http://127.0.0.1:$USER_ADMIN_PORT/metrics
    inventory service  grpc 127.0.0.1:$INVENTORY_GRPC_PORT   admin http://127.0.0.1:$INVENTORY_ADMIN_PORT/metrics
    order service      grpc 127.0.0.1:$ORDER_GRPC_PORT   admin http://127.0.0.1:$ORDER_ADMIN_PORT/metrics
    gateway            http://127.0.0.1:$GATEWAY_PORT  (REST, /docs, /openapi.json, /readyz, /metrics)
    copies of each     $REPLICAS (copy k: gRPC and admin ports + 10k, gateway + k)
    PostgreSQL     $server_url
    Kafka          $KAFKA_BROKERS
    Redis          $REDIS_URL
  demo admin account:  $ADMIN_EMAIL / $ADMIN_PASSWORD
  demo products:       MUG-001, LAMP-001, BOOK-042
  try:  curl http://127.0.0.1:$GATEWAY_PORT/v1/products
        grpcurl -cacert $DEV/keys/tls/ca.pem -cert $DEV/keys/tls/you.crt -key $DEV/keys/tls/you.key 127.0.0.1:$USER_GRPC_PORT list
  Ctrl-C stops everything.

BANNER

wait -n "${pids[@]}" || true
log "a service exited; stopping the rest"
stop
