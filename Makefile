# partnerplane — common tasks. The test bed lives in e2e/.testbed (git-ignored).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
TESTBED := e2e/testbed.sh
ENV := e2e/.testbed/env

.PHONY: demo test lint unit e2e bench crds up down status image chart-test

## demo: bring the test bed up, install the CRDs, run the operator, apply examples/
demo: up
	e2e/demo.sh

## test: lint, unit tests and the end-to-end suites against the real test bed
test: lint up
	e2e/demo.sh stop
	e2e/shipping/test.sh chart-static
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
	hack/sync-chart-crds.sh

up:
	$(TESTBED) up

down:
	e2e/demo.sh stop
	$(TESTBED) down

status:
	$(TESTBED) status

## bench: N tenants (default 1000) apply -> Ready against a direct floor; BENCH_TENANTS=N to change,
##        BENCH_SHARDS=N to split them across N operator shards (peak RSS per shard);
##        BENCH_TENANT_ARGS=--tenant-writes adds a floor that also writes each PartnerTenant;
##        then MetricPipeline refreshes against their targets (BENCH_ROWS=N, default 1000000;
##        BENCH_PIPELINE_ARGS=--with-operator adds 200 pipelines through the operator).
##        Then a copilot's retrieval: load, HNSW build, latency and recall@10 (BENCH_CHUNKS=N,
##        default 100000; BENCH_COPILOT_ARGS='--latent 64' draws them from a 64-dim subspace).
##        BENCH=tenants, BENCH=pipelines or BENCH=copilots runs only one of the three.
bench: up
	cargo build --release -p partnerplane -p partnerplane-e2e --bins
	if [[ "$${BENCH:-all}" =~ ^(all|tenants)$$ ]]; then source $(ENV) && PARTNERPLANE_BIN=target/release/partnerplane target/release/bench --tenants $${BENCH_TENANTS:-1000} --shards $${BENCH_SHARDS:-1} $${BENCH_TENANT_ARGS:-}; fi
	if [[ "$${BENCH:-all}" =~ ^(all|pipelines)$$ ]]; then source $(ENV) && PARTNERPLANE_BIN=target/release/partnerplane target/release/pipeline_bench --rows $${BENCH_ROWS:-1000000} $${BENCH_PIPELINE_ARGS:-}; fi
	if [[ "$${BENCH:-all}" =~ ^(all|copilots)$$ ]]; then source $(ENV) && target/release/copilot_bench --chunks $${BENCH_CHUNKS:-100000} $${BENCH_COPILOT_ARGS:-}; fi

## image: build the operator's OCI image without a container engine (a static
##        musl binary, user 65532, no shell) into target/image/, build it again
##        to check the digest is reproducible, run its binary as 65532, and
##        print the digest. IMAGE_TEST_FRESH=1 compiles the second build from scratch.
image:
	e2e/shipping/test.sh image

## chart-test: lint and unit-test the Helm chart, test its alerts with promtool, then
##             check it against the test bed (server-side dry run, restricted Pod
##             Security, config/default parity, the operator on its configuration)
##             and the GitOps health checks on real objects
chart-test: up
	e2e/shipping/test.sh chart
