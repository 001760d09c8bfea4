#!/usr/bin/env bash
# `make fuzz`: each cargo fuzz target for FUZZ_SECS seconds (default 60) on the
# nightly toolchain (libFuzzer, AddressSanitizer); writes docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
SECS=${FUZZ_SECS:-60}

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if ! cargo +nightly --version >/dev/null 2>&1; then
    log "cargo fuzz needs a nightly toolchain (rustup toolchain install nightly)"
    exit 1
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

report=$(mktemp)
trap 'rm -f "$report"' EXIT
for target in gateway_request service_requests; do
    log "fuzzing $target for $SECS s"
    mkdir -p "fuzz/corpus/$target"
    out=$(cargo +nightly fuzz run --fuzz-dir fuzz "$target" -- -max_total_time="$SECS" \
        -rss_limit_mb=2048 2>&1) || { printf '%s\n' "$out" | tail -40 >&2; log "$target FAILED"; exit 1; }
    done_line=$(printf '%s\n' "$out" | grep -E '^Done [0-9]+ runs' | tail -1)
    cov=$(printf '%s\n' "$out" | grep -oE 'cov: [0-9]+ ft: [0-9]+' | tail -1)
    log "$target: $done_line ($cov)"
    echo "| \`$target\` | ${done_line#Done } | ${cov:-?} | $(find "fuzz/corpus/$target" -type f | wc -l) | none |" >>"$report"
done

cat >docs/fuzzing.md <<DOC
# Fuzzing

Written by \`make fuzz\` (scripts/fuzz.sh) on $(date -u +%F): each target ran for $SECS s with
cargo fuzz (libFuzzer, AddressSanitizer, $(cargo +nightly --version | cut -d' ' -f2-)).

- \`gateway_request\`: a path, a query string and a body for any of the gateway's routes, through
  route resolution and the JSON → protobuf transcoding; whatever the gateway accepts is encoded,
  decoded as the generated type the service receives, and put through that service's checks.
- \`service_requests\`: raw protobuf bytes for each RPC whose request a service converts into a
  checked domain type (Register, Login, CreateProduct, AdjustStock, ReserveStock, CreateOrder,
  GetOrder), decoded and converted.

| target | runs | coverage at the end | corpus files | crashes |
|---|---|---|---|---|
$(cat "$report")
DOC
log "docs/fuzzing.md written"
