#!/usr/bin/env bash
# `make lint`: the protos may not break the wire or the JSON mapping against the
# contract they are compared with (buf's FILE rules, proto/buf.yaml):
#   PROTO_BREAKING_AGAINST=<git ref>  when set;
#   else the merge base with main      on any other branch (a change under review);
#   else the parent commit             on main itself (each landed commit against the last).
# `--self-test` proves the check can fail: a throwaway clone renumbers a field
# of an event and must be refused.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Runs buf in the checkout $1 against its git ref $2.
check() {
    (cd "$1" && buf breaking proto --against ".git#ref=$2,subdir=proto")
}

if [ "${1:-}" = "--self-test" ]; then
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    git clone -q . "$scratch/repo"
    sed -i '0,/string user_id = 2;/s//string user_id = 22;/' "$scratch/repo/proto/shop/order/v1/events.proto"
    git -C "$scratch/repo" -c user.name=check -c user.email=check@localhost commit -q -am "renumber a field"
    if found=$(check "$scratch/repo" HEAD~1 2>&1); then
        log "proto-breaking self-test: a renumbered field was not refused"
        exit 1
    fi
    if ! grep -q 'field "2" with name "user_id"' <<<"$found"; then
        log "proto-breaking self-test: refused for another reason: $found"
        exit 1
    fi
    log "proto-breaking self-test: a renumbered field is refused"
    exit 0
fi

against=${PROTO_BREAKING_AGAINST:-}
if [ -z "$against" ]; then
    branch=$(git rev-parse --abbrev-ref HEAD)
    main=$(git rev-parse --verify -q origin/main || git rev-parse --verify -q main || true)
    if [ "$branch" != main ] && [ -n "$main" ]; then
        against=$(git merge-base HEAD "$main")
    elif git rev-parse --verify -q HEAD~1 >/dev/null; then
        against=HEAD~1
    else
        log "proto-breaking: no earlier commit to compare with (a shallow clone?); skipped"
        exit 0
    fi
fi
log "protos compared with $against for breaking changes"
check . "$against"
