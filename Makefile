# The verbs people type. `make test` works on a machine with only the Rust
# toolchain: it installs what is missing and starts what the tests need.
SHELL := /bin/bash

.PHONY: help build test lint fmt dev up up-core down logs tools clean bench k8s-validate compose-test chaos chaos-native chaos-replicas chaos-compose chaos-compose-replicas fuzz

# Compose v2 where it is installed, otherwise Debian's docker-compose 1.29.
COMPOSE := $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
PY_SCRIPTS = $$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')

help:
	@echo "make dev    - the whole mesh natively, in the foreground (Ctrl-C stops it)"
	@echo "make test   - the whole test suite (installs tools, starts PostgreSQL and a broker)"
	@echo "make lint   - cargo fmt --check, clippy -D warnings, buf lint"
	@echo "make build  - build every binary"
	@echo "make bench  - benchmarks of the running mesh; rewrites docs/benchmarks.md"
	@echo "make k8s-validate - render every kustomize overlay and validate it"
	@echo "make up      - the whole mesh in containers, with Jaeger, Prometheus, Grafana (docker compose up -d --build)"
	@echo "make up-core - the core mesh alone; make down / make logs"
	@echo "make chaos  - faults, load and hostile input, then the invariant checker; writes docs/reliability.md"
	@echo "              (chaos-native, chaos-replicas with two copies of everything, then"
	@echo "              chaos-compose and chaos-compose-replicas where a Docker engine answers)"
	@echo "make fuzz   - cargo fuzz (nightly) on the gateway's transcoding and the services' request checks"
	@echo "make compose-test - build every image locally (no registry needed), bring compose up, smoke, teardown"

# Copies of each process that `make dev` runs.
REPLICAS ?= 1

tools:
	scripts/install-tools.sh

build:
	cargo build --workspace --bins

test: tools
	scripts/with-infra.sh scripts/test.sh

lint: tools
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cd proto && PATH="$(PY_SCRIPTS):$$PATH" buf lint
	PATH="$(PY_SCRIPTS):$$PATH" scripts/proto-breaking.sh
	PATH="$(PY_SCRIPTS):$$PATH" scripts/proto-breaking.sh --self-test
	PATH="$(PY_SCRIPTS):$$PATH" hadolint deploy/docker/Dockerfile deploy/docker/offline/*.Dockerfile
	python3 deploy/prometheus/generate.py --check
	promtool check rules deploy/prometheus/rules.yml
	promtool test rules deploy/prometheus/rules.test.yml
	promtool check config deploy/prometheus/prometheus.yml
	PATH="$(PY_SCRIPTS):$$PATH" check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	PATH="$(PY_SCRIPTS):$$PATH" zizmor --offline .github/workflows

fmt:
	cargo fmt --all

dev: tools build
	REPLICAS=$(REPLICAS) scripts/dev.sh

k8s-validate: tools
	PATH="$(PY_SCRIPTS):$$PATH" scripts/k8s-validate.py

bench: tools
	scripts/with-infra.sh scripts/bench.sh

up:
	$(COMPOSE) up -d --build

up-core:
	OTEL_EXPORTER_OTLP_ENDPOINT= $(COMPOSE) up -d --build gateway edge

down:
	$(COMPOSE) down

logs:
	$(COMPOSE) logs -f

compose-test: tools
	scripts/compose-test.sh

chaos: chaos-native chaos-replicas
	@if docker info >/dev/null 2>&1; then $(MAKE) --no-print-directory chaos-compose chaos-compose-replicas; \
	else echo "no Docker engine answers: the compose variants (make chaos-compose, chaos-compose-replicas) are skipped"; fi

chaos-native: tools build
	env -u DATABASE_URL -u KAFKA_BROKERS -u REDIS_URL scripts/with-infra.sh python3 tests/chaos/run.py

# Two copies of every process: one copy killed, frozen, restarted; Redis stopped.
chaos-replicas: tools build
	env -u DATABASE_URL -u KAFKA_BROKERS -u REDIS_URL CHAOS_REPLICAS=2 scripts/with-infra.sh python3 tests/chaos/run.py

chaos-compose: tools
	scripts/compose-test.sh chaos

# The same two-copies scenarios against compose's containers (`--scale`).
chaos-compose-replicas: tools
	CHAOS_REPLICAS=2 scripts/compose-test.sh chaos

fuzz:
	scripts/fuzz.sh

clean:
	cargo clean
