#!/usr/bin/env bash
# The whole test suite; expects DATABASE_URL and KAFKA_BROKERS (scripts/with-infra.sh sets them).
set -euo pipefail
if cargo nextest --version >/dev/null 2>&1; then
    exec cargo nextest run --workspace --no-fail-fast "$@"
else
    exec cargo test --workspace --no-fail-fast "$@"
fi
