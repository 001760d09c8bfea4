#!/usr/bin/env bash
# Runs a command with a PostgreSQL server, a Kafka-protocol broker and a Redis
# server available: those that DATABASE_URL / KAFKA_BROKERS / REDIS_URL name,
# otherwise a throwaway PostgreSQL cluster, tansu broker and Redis on free loopback ports, stopped and removed when the
# command ends (whether it passed or not).
#
#   scripts/with-infra.sh cargo nextest run --workspace
set -euo pipefail

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
# Waits up to 10 s for something to listen on 127.0.0.1:$1.
wait_for_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PY_SCRIPTS=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PATH="$HOME/.cargo/bin:$PY_SCRIPTS:$PATH"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/shopmesh-infra.XXXXXX")
PG_STARTED=
TANSU_PID=
REDIS_PID=

cleanup() {
    local status=$?
    if [ -n "$REDIS_PID" ]; then
        kill -CONT "$REDIS_PID" 2>/dev/null || true
        kill "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
    fi
    if [ -n "$TANSU_PID" ]; then
        kill -CONT "$TANSU_PID" 2>/dev/null || true
        kill "$TANSU_PID" 2>/dev/null || true
        wait "$TANSU_PID" 2>/dev/null || true
    fi
    if [ -n "$PG_STARTED" ]; then
        run_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
    exit $status
}
trap cleanup EXIT

# initdb refuses to run as root: run the cluster as the postgres user then.
run_pg() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if [ -z "${DATABASE_URL:-}" ]; then
    PG_BIN=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1)")
    [ -x "$PG_BIN/initdb" ] || { log "PostgreSQL not installed: run scripts/install-tools.sh"; exit 1; }
    PG_PORT=$(free_port)
    mkdir -p "$WORK/pg"
    [ "$(id -u)" -eq 0 ] && chown -R postgres: "$WORK"
    run_pg "$PG_BIN/initdb" -D "$WORK/pg" -U postgres -A trust --no-sync -E UTF8 >"$WORK/initdb.log" 2>&1 \
        || { cat "$WORK/initdb.log"; exit 1; }
    run_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/postgres.log" -w -t 30 \
        -o "-p $PG_PORT -k $WORK -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400" \
        start >/dev/null || { cat "$WORK/postgres.log"; exit 1; }
    PG_STARTED=1
    export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
    # For tests/chaos/run.py, which restarts this server under load.
    export SHOPMESH_PGDATA="$WORK/pg" SHOPMESH_PG_BIN="$PG_BIN"
    log "throwaway PostgreSQL on 127.0.0.1:$PG_PORT"
fi

if [ -z "${KAFKA_BROKERS:-}" ]; then
    command -v tansu >/dev/null || { log "tansu not installed: run scripts/install-tools.sh"; exit 1; }
    K_PORT=$(free_port)
    env -u OTEL_EXPORTER_OTLP_ENDPOINT RUST_LOG=warn tansu broker \
        --storage-engine memory://tansu/ \
        --listener-url "tcp://127.0.0.1:$K_PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$K_PORT" >"$WORK/tansu.log" 2>&1 &
    TANSU_PID=$!
    wait_for_port "$K_PORT"
    export KAFKA_BROKERS="127.0.0.1:$K_PORT"
    # tansu's quirk (ADR 0006): every producer here sends one record per batch.
    export KAFKA_ONE_RECORD_PER_BATCH=true
    # For tests/chaos/run.py, which stops this broker for a while (SIGSTOP / SIGCONT).
    export SHOPMESH_BROKER_PID=$TANSU_PID
    log "throwaway tansu broker on $KAFKA_BROKERS"
fi

if [ -z "${REDIS_URL:-}" ]; then
    command -v redis-server >/dev/null || { log "redis-server not installed: run scripts/install-tools.sh"; exit 1; }
    R_PORT=$(free_port)
    # Nothing kept on disk: the tests' state lives as long as the run.
    redis-server --port "$R_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$WORK" >"$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    wait_for_port "$R_PORT"
    export REDIS_URL="redis://127.0.0.1:$R_PORT"
    # For tests/chaos/run.py, which stops this server for a while.
    export SHOPMESH_REDIS_PID=$REDIS_PID
    log "throwaway Redis on $REDIS_URL"
fi

# The command runs in the background so that Ctrl-C or SIGTERM here reaches it as
# SIGTERM (its own graceful shutdown) before the servers above are stopped.
set +e
"$@" &
CHILD=$!
trap 'kill -TERM "$CHILD" 2>/dev/null' INT TERM
status=0
while kill -0 "$CHILD" 2>/dev/null; do
    wait "$CHILD"
    status=$?
done
set -e
exit $status
