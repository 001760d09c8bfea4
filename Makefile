# The verbs people type. `make test` works on a machine with only the Rust
# toolchain: it installs what is missing and starts what the tests need.
SHELL := /bin/bash

.PHONY: help build test lint fmt dev up down logs tools clean bench k8s-validate

help:
	@echo "make dev    - the whole mesh natively, in the foreground (Ctrl-C stops it)"
	@echo "make test   - the whole test suite (installs tools, starts PostgreSQL and a broker)"
	@echo "make lint   - cargo fmt --check, clippy -D warnings, buf lint"
	@echo "make build  - build every binary"
	@echo "make bench  - benchmarks of the running mesh; rewrites docs/benchmarks.md"
	@echo "make k8s-validate - render every kustomize overlay and validate it"
	@echo "make up / make down - docker compose up -d --build / docker compose down"

tools:
	scripts/install-tools.sh

build:
	cargo build --workspace --bins

test: tools
	scripts/with-infra.sh scripts/test.sh

lint: tools
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cd proto && PATH="$$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$$PATH" buf lint

fmt:
	cargo fmt --all

dev: tools build
	scripts/dev.sh

k8s-validate: tools
	PATH="$$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$$PATH" scripts/k8s-validate.py

bench: tools
	scripts/with-infra.sh scripts/bench.sh

up:
	docker compose up -d --build

down:
	docker compose down

logs:
	docker compose logs -f

clean:
	cargo clean
