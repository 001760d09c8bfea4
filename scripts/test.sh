#!/usr/bin/env bash
# The whole test suite; expects DATABASE_URL and KAFKA_BROKERS (scripts/with-infra.sh sets them).
set -euo pipefail
# End-to-end tests run the binaries the way `make dev` does.
cargo build --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
    exec cargo nextest run --workspace --no-fail-fast "$@"
else
    exec cargo test --workspace --no-fail-fast "$@"
fi
