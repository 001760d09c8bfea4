#!/usr/bin/env bash
# Builds, on a machine whose Docker engine can pull no image, the stand-ins that
# `make compose-test` runs docker-compose.yml with:
#
#   shopmesh-local/debian:bookworm   Debian made from Debian's packages (debootstrap,
#                                    from the mirror this machine's apt uses)
#   shopmesh-local/rust:<version>    that base plus gcc and this machine's Rust
#                                    toolchain: the Dockerfile's RUST_IMAGE here
#   shopmesh-local/postgres:15       PostgreSQL from Debian's package, with the
#                                    official image's init-script convention
#   shopmesh-local/tansu:<version>   the tansu broker binary, standing in for Kafka
#   shopmesh-local/redis:7           Redis from Debian's package, with the official
#                                    image's command and /data convention
#   shopmesh-local/haproxy:2         HAProxy from Debian's package, with the official
#                                    image's configuration path (the compose edge)
#   shopmesh-local/prometheus:2      Prometheus from Debian's package, with the official
#                                    image's entrypoint and /prometheus
#
# and, for `make chaos-compose` only (`images.sh base rust postgres tansu reader`):
#
#   shopmesh-local/topic-reader:1    Python with confluent-kafka (PyPI), which reads
#                                    the topics on the compose network for the checker
#
# Each image is kept and reused on the next run while its inputs are unchanged.
set -euo pipefail
cd "$(dirname "$0")"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
# The engine's client warns on every legacy (non-BuildKit) build; nothing to act on.
quiet_build() { docker build -q "$@" 2> >(grep -v -e '^$' -e 'legacy builder' -e buildx -e 'docs.docker.com' >&2); }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
label_of() { docker image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/shopmesh-images.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

SUITE=bookworm
BASE=shopmesh-local/debian:$SUITE

# The first Debian mirror in this machine's apt configuration (deb822 or one-line form).
apt_mirror() {
    local uri
    uri=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '{print $2}' | grep -v -- '-security' | head -1 || true)
    if [ -z "$uri" ]; then
        uri=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | grep -v -- '-security' | awk '{ for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
            | head -1 || true)
    fi
    [ -n "$uri" ] || { log "no Debian mirror found in the apt configuration"; return 1; }
    printf '%s\n' "$uri"
}

build_base() {
    have_image "$BASE" && return 0
    # debootstrap of bookworm from this machine's mirror: a Debian host, as root.
    grep -qs '^ID=debian' /etc/os-release \
        || { log "the stand-in images are made on a Debian host (its apt mirror); this is not one"; return 1; }
    [ "$(id -u)" -eq 0 ] || { log "debootstrap needs root"; return 1; }
    command -v debootstrap >/dev/null || {
        log "installing debootstrap (Debian package)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    }
    local mirror rootfs
    mirror=$(apt_mirror)
    rootfs=$WORK/rootfs
    log "debootstrap $SUITE (minbase) from the apt mirror"
    debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -30 "$WORK/debootstrap.log"; rm -f "$WORK/debootstrap.log"; return 1; }
    rm -f "$WORK/debootstrap.log"
    # Keep images small and apt quiet, as the official slim images do.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
        >"$rootfs/etc/apt/apt.conf.d/90shopmesh-no-recommends"
    tar -C "$rootfs" -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'CMD ["bash"]' - "$BASE" >/dev/null
    log "built $BASE ($(docker image inspect -f '{{.Size}}' "$BASE" | awk '{printf "%.0f MB", $1/1e6}'))"
}

# The Rust toolchain this machine builds with, copied into the image: the only
# way to have a Rust builder image without a registry.
build_rust() {
    local version sysroot context
    version=$(rustc --version | awk '{print $2}')
    RUST_IMAGE=shopmesh-local/rust:$version
    # The builder fetches crates, so it trusts what this machine trusts (a
    # TLS-inspecting proxy's certificate included).
    local cabundle=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt} sum
    sum=$( (rustc -vV; cat rust.Dockerfile "$cabundle") | sha256sum | cut -c1-16)
    [ "$(label_of "$RUST_IMAGE" org.shopmesh.inputs)" = "$sum" ] && return 0
    sysroot=$(rustc --print sysroot)
    context=$WORK/rust
    log "building $RUST_IMAGE from $BASE and this machine's toolchain"
    mkdir -p "$context/toolchain/bin"
    cp -L "$sysroot/bin/rustc" "$sysroot/bin/cargo" "$context/toolchain/bin/"
    cp -a "$sysroot/lib" "$context/toolchain/lib"
    rm -rf "$context/toolchain/lib/rustlib/src" "$context/toolchain/lib/rustlib/rustc-src"
    cp "$cabundle" "$context/ca-certificates.crt"
    cp rust.Dockerfile "$context/Dockerfile"
    quiet_build --build-arg "BASE_IMAGE=$BASE" --label "org.shopmesh.inputs=$sum" \
        -t "$RUST_IMAGE" "$context" >/dev/null
    log "built $RUST_IMAGE"
}

# An image made from a Dockerfile in this folder on the Debian base, rebuilt only
# when the Dockerfile (or another input named after it) changes.
build_from() { # image description dockerfile [more inputs]
    local image=$1 what=$2 dockerfile=$3 sum
    sum=$(cat "${@:3}" | sha256sum | cut -c1-16)
    [ "$(label_of "$image" org.shopmesh.inputs)" = "$sum" ] && return 0
    log "building $image ($what)"
    quiet_build -f "$dockerfile" --build-arg "BASE_IMAGE=$BASE" \
        --label "org.shopmesh.inputs=$sum" -t "$image" . >/dev/null
}

build_postgres() {
    POSTGRES_IMAGE=shopmesh-local/postgres:15
    build_from "$POSTGRES_IMAGE" "Debian's postgresql-15" postgres.Dockerfile postgres-entrypoint.sh
}

build_redis() {
    REDIS_IMAGE=shopmesh-local/redis:7
    build_from "$REDIS_IMAGE" "Debian's redis-server" redis.Dockerfile
}

build_haproxy() {
    HAPROXY_IMAGE=shopmesh-local/haproxy:2
    build_from "$HAPROXY_IMAGE" "Debian's haproxy" haproxy.Dockerfile
}

build_prometheus() {
    PROMETHEUS_IMAGE=shopmesh-local/prometheus:2
    build_from "$PROMETHEUS_IMAGE" "Debian's prometheus" prometheus.Dockerfile
}

build_tansu() {
    local tansu version context sum
    tansu=$(command -v tansu || echo "$HOME/.cargo/bin/tansu")
    [ -x "$tansu" ] || { log "tansu not installed: run scripts/install-tools.sh"; return 1; }
    version=$("$tansu" --version 2>/dev/null | awk '{print $NF}')
    TANSU_IMAGE=shopmesh-local/tansu:${version:-local}
    sum=$( (sha256sum <"$tansu"; cat tansu.Dockerfile) | sha256sum | cut -c1-16)
    [ "$(label_of "$TANSU_IMAGE" org.shopmesh.inputs)" = "$sum" ] && return 0
    log "building $TANSU_IMAGE from the installed tansu binary"
    context=$WORK/tansu
    mkdir -p "$context"
    cp "$tansu" "$context/tansu"
    cp tansu.Dockerfile "$context/Dockerfile"
    quiet_build --build-arg "BASE_IMAGE=$BASE" --label "org.shopmesh.inputs=$sum" \
        -t "$TANSU_IMAGE" "$context" >/dev/null
}

build_reader() {
    READER_IMAGE=shopmesh-local/topic-reader:1
    local cabundle=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt} context sum
    sum=$(cat topic-reader.Dockerfile "$cabundle" | sha256sum | cut -c1-16)
    [ "$(label_of "$READER_IMAGE" org.shopmesh.inputs)" = "$sum" ] && return 0
    log "building $READER_IMAGE (confluent-kafka from PyPI)"
    context=$WORK/reader
    mkdir -p "$context"
    cp "$cabundle" "$context/ca-certificates.crt"
    cp topic-reader.Dockerfile "$context/Dockerfile"
    quiet_build --build-arg "BASE_IMAGE=$BASE" --label "org.shopmesh.inputs=$sum" \
        -t "$READER_IMAGE" "$context" >/dev/null
}

# Prerequisites first; `images.sh rust` builds one (and what it needs).
steps=("$@")
[ $# -eq 0 ] && steps=(base rust postgres redis haproxy prometheus tansu)
for step in base "${steps[@]}"; do "build_$step"; done

# For the caller (scripts/compose-test.sh): the names of the images built, as
# shell assignments.
BASE_IMAGE=$BASE
for name in BASE_IMAGE RUST_IMAGE POSTGRES_IMAGE REDIS_IMAGE HAPROXY_IMAGE PROMETHEUS_IMAGE TANSU_IMAGE READER_IMAGE; do
    [ -z "${!name:-}" ] || echo "$name=${!name}"
done
