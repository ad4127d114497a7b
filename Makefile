# partnerplane — common tasks. The test bed lives in e2e/.testbed (git-ignored).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
TESTBED := e2e/testbed.sh
ENV := e2e/.testbed/env

.PHONY: demo test lint unit e2e bench crds up down status

## demo: bring the test bed up, install the CRDs, run the operator, apply examples/
demo: up
	e2e/demo.sh

## test: lint, unit tests and the end-to-end suites against the real test bed
test: lint up
	e2e/demo.sh stop
	cargo build --workspace --bins
	source $(ENV) && cargo test --workspace --no-fail-fast

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

unit:
	cargo test --workspace --lib

## crds: regenerate crds/ from the Rust types
crds:
	cargo run --quiet -p partnerplane -- crdgen --out crds

up:
	$(TESTBED) up

down:
	e2e/demo.sh stop
	$(TESTBED) down

status:
	$(TESTBED) status

## bench: N tenants (default 1000) apply -> Ready against a direct floor; BENCH_TENANTS=N to change
bench: up
	cargo build --release -p partnerplane -p partnerplane-e2e --bins
	source $(ENV) && PARTNERPLANE_BIN=target/release/partnerplane target/release/bench --tenants $${BENCH_TENANTS:-1000}
