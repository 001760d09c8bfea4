#!/usr/bin/env bash
# docker-compose.yml brought up for real on a machine whose Docker engine can pull
# no image. Builds the stand-in images and the project's own (deploy/compose/
# offline.yml says which), starts the core mesh and waits for health, then
#
#   compose-test.sh [smoke]  (`make compose-test`) runs two copies of the inventory
#                            and order services (`--scale`), the smoke suite through
#                            the published ports, SIGKILLs a service container's
#                            process and checks that it restarts and the mesh
#                            recovers, then stops one copy of each scaled service and
#                            checks that the other carries the orders;
#   compose-test.sh chaos    (`make chaos-compose`) adds deploy/compose/chaos.yml and
#                            runs `tests/chaos/run.py --compose` against the stack
#                            (with CHAOS_REPLICAS=2, two containers of each service);
#
# and finally removes every container, network and volume it made. Built images
# are kept, so a second run reuses them and the cached dependency layer.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-smoke}
case "$MODE" in
    smoke) PROJECT=shopmesh-compose-test; OVERRIDES=(); PORTS=(8080 50051 50052 50053 9090)
           SCALED=(inventory-service order-service); COPIES=2 ;;
    # CHAOS_REPLICAS=2 (`make chaos-compose-replicas`): two containers of each service.
    chaos) PROJECT=shopmesh-compose-chaos; OVERRIDES=(-f deploy/compose/chaos.yml)
           PORTS=(8080 50051 50052 50053 9090); SCALED=(user-service inventory-service order-service)
           COPIES=${CHAOS_REPLICAS:-1} ;;
    *) echo "usage: $0 [smoke|chaos]" >&2; exit 2 ;;
esac
PY_SCRIPTS=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PATH="$HOME/.cargo/bin:$PY_SCRIPTS:$PATH"
LIMIT_MB=100
started=$(date +%s)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
elapsed() { echo "$(($(date +%s) - started)) s"; }

docker info >/dev/null 2>&1 || { log "no Docker engine answers: nothing to test"; exit 1; }
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
command -v "${COMPOSE[0]}" >/dev/null || { log "neither docker compose nor docker-compose is installed"; exit 1; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/shopmesh-compose-test.XXXXXX")
compose() {
    "${COMPOSE[@]}" -p "$PROJECT" -f docker-compose.yml -f deploy/compose/offline.yml \
        "${OVERRIDES[@]}" "$@"
}

for port in "${PORTS[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        log "port $port is in use (make dev or make up running?): the $MODE run needs it"
        exit 1
    fi
done

leftovers() {
    local filter=label=com.docker.compose.project=$PROJECT
    echo "$(docker ps -aq --filter "$filter" | wc -l) containers," \
        "$(docker network ls -q --filter "$filter" | wc -l) networks," \
        "$(docker volume ls -q --filter "$filter" | wc -l) volumes"
}

teardown() {
    local status=$?
    trap - EXIT INT TERM
    if [ $status -ne 0 ]; then
        log "failed; the last lines of each container's log:"
        compose logs --no-color --tail=25 2>&1 | tail -200 >&2 || true
    fi
    if [ $status -ne 0 ] && [ -n "${KEEP_STACK:-}" ]; then
        log "KEEP_STACK is set: the stack is left up (project $PROJECT); remove it with:" \
            "${COMPOSE[*]} -p $PROJECT -f docker-compose.yml -f deploy/compose/offline.yml" \
            "${OVERRIDES[*]} down -v --remove-orphans"
        rm -rf "$WORK"
        exit $status
    fi
    log "tearing down"
    compose down -v --remove-orphans --timeout 20 >/dev/null 2>&1 || true
    local left
    left=$(leftovers)
    if [ "$left" != "0 containers, 0 networks, 0 volumes" ]; then
        log "left behind: $left"
        status=1
    else
        log "nothing left behind ($left)"
    fi
    rm -rf "$WORK"
    [ $status -eq 0 ] && log "compose $MODE run passed in $(elapsed)"
    exit $status
}
trap teardown EXIT
trap 'exit 130' INT TERM

log "stand-in images (built once, then reused)"
standins=(base rust postgres redis haproxy prometheus tansu)
[ "$MODE" = chaos ] && standins+=(reader)
images=$(deploy/docker/offline/images.sh "${standins[@]}")
eval "$images"
export BASE_IMAGE RUST_IMAGE POSTGRES_IMAGE REDIS_IMAGE HAPROXY_IMAGE PROMETHEUS_IMAGE TANSU_IMAGE
cat >&2 <<EOF
    postgres     -> $POSTGRES_IMAGE (Debian's postgresql-15)
    redis        -> $REDIS_IMAGE (Debian's redis-server)
    edge         -> $HAPROXY_IMAGE (Debian's haproxy)
    prometheus   -> $PROMETHEUS_IMAGE (Debian's prometheus), with the repository's rules
    kafka        -> $TANSU_IMAGE (tansu, Kafka protocol, in-memory storage)
    RUST_IMAGE   -> $RUST_IMAGE (Debian base + this machine's toolchain)
    left out: otel-collector, jaeger, grafana (the rest of the observability layer:
    no image for them can be built from the package registries here); the core mesh
    runs without trace export.
EOF
export OTEL_EXPORTER_OTLP_ENDPOINT=

log "building the project's images from deploy/docker/Dockerfile ($(elapsed))"
build_started=$(date +%s)
build_log=$WORK/build.log
if ! compose build user-service inventory-service order-service gateway >"$build_log" 2>&1; then
    tail -60 "$build_log" >&2
    exit 1
fi
# The first cargo step compiles only the dependencies (deploy/docker/skeleton.sh).
if ! grep -q '^Step ' "$build_log"; then
    deps="(this builder does not report cache use step by step)"
elif grep -A1 -m1 '^Step [0-9/]* : RUN cargo build' "$build_log" | grep -q 'Using cache'; then
    deps="the dependency layer came from the cache"
else
    deps="the dependency layer was compiled"
fi
log "images built in $(($(date +%s) - build_started)) s;" \
    "$(grep -c 'Using cache' "$build_log") of $(grep -c '^Step ' "$build_log") steps cached; $deps"
for binary in user-service inventory-service order-service gateway; do
    image=shopmesh/$binary:0.1.0
    bytes=$(docker image inspect -f '{{.Size}}' "$image")
    mb=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1e6 }')
    printf '    %-36s %6s MB\n' "$image" "$mb" >&2
    awk -v b="$bytes" -v l="$LIMIT_MB" 'BEGIN { exit !(b / 1e6 < l) }' \
        || { log "$image is $mb MB, over $LIMIT_MB MB"; exit 1; }
done

scale=()
for service in "${SCALED[@]}"; do scale+=(--scale "$service=$COPIES"); done
log "docker-compose.yml up (the core mesh: the gateway, the edge and what they depend on; Prometheus)" \
    "${scale[*]}"
compose up -d --no-build "${scale[@]}" gateway edge prometheus

log "waiting for every container to be healthy"
long_running=(postgres kafka redis user-service inventory-service order-service gateway edge)
one_shot=(kafka-init keys seed)
running=(prometheus)   # no healthcheck: its API is checked below
# Every container of a service, oldest first.
containers() {
    docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.service=$1" | tac
}
container() { containers "$1" | head -1; }
copies_of() { # the copies a service runs with
    local service
    for service in "${SCALED[@]}"; do [ "$service" = "$1" ] && { echo "$COPIES"; return; }; done
    echo 1
}
state_of() { # one line per container: status, health, exit code
    local ids id
    ids=$(containers "$1")
    [ -n "$ids" ] || { echo missing; return; }
    for id in $ids; do
        docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}-{{end}} exit={{.State.ExitCode}}' "$id"
    done
}
for _ in $(seq 1 120); do
    ready=1
    for service in "${long_running[@]}"; do
        [ "$(state_of "$service" | grep -c '^running healthy ')" -eq "$(copies_of "$service")" ] \
            || ready=0
    done
    for service in "${one_shot[@]}"; do
        [ "$(state_of "$service")" = "exited - exit=0" ] || ready=0
    done
    for service in "${running[@]}"; do
        [[ "$(state_of "$service")" == "running "* ]] || ready=0
    done
    [ $ready -eq 1 ] && break
    sleep 2
done
for service in "${long_running[@]}" "${one_shot[@]}" "${running[@]}"; do
    state_of "$service" | while read -r state; do
        printf '    %-18s %s\n' "$service" "$state" >&2
    done
done
[ $ready -eq 1 ] || { log "not every container became healthy"; exit 1; }
log "all healthy after $(elapsed)"

if [ "$MODE" = chaos ]; then
    log "make chaos against the compose stack"
    SHOPMESH_COMPOSE_PROJECT=$PROJECT READER_IMAGE=$READER_IMAGE BASE_IMAGE=$BASE_IMAGE \
        python3 tests/chaos/run.py --compose
    exit 0
fi

log "smoke suite through the published ports"
python3 deploy/compose/smoke.py readme

# Every copy found through compose's DNS: one user and gateway, the scaled ones.
targets=$(($(copies_of user-service) + $(copies_of inventory-service) + $(copies_of order-service) + 1))
log "Prometheus: the repository's rules loaded, all $targets shopmesh targets up"
python3 deploy/compose/smoke.py prometheus "$targets"

victim=order-service
id=$(container "$victim")
restarts=$(docker inspect -f '{{.RestartCount}}' "$id")
pid=$(docker inspect -f '{{.State.Pid}}' "$id")
log "SIGKILL of $victim's process (pid $pid on this host), as a crash would"
# As root on the engine's host the process is ours to kill; otherwise a
# container in the host's PID namespace does it.
kill -KILL "$pid" 2>/dev/null || docker run --rm --pid=host "$BASE_IMAGE" kill -KILL "$pid"
for _ in $(seq 1 60); do
    now=$(docker inspect -f '{{.RestartCount}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id")
    [[ "$now" == "$((restarts + 1)) running healthy" ]] && break
    sleep 1
done
[[ "$now" == "$((restarts + 1)) running healthy" ]] \
    || { log "$victim did not come back healthy (restarts, state, health: $now)"; exit 1; }
log "$victim restarted by its restart policy and is healthy again"
python3 deploy/compose/smoke.py order

for service in "${SCALED[@]}"; do
    id=$(containers "$service" | tail -1)
    log "docker stop of one $service copy ($(docker inspect -f '{{.Name}}' "$id"))"
    docker stop -t 20 "$id" >/dev/null
done
if [ ${#SCALED[@]} -gt 0 ]; then
    log "with one copy of each of ${SCALED[*]} stopped, the other carries the orders"
    python3 deploy/compose/smoke.py order
fi
