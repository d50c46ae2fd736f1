# tenet: the two commands a newcomer needs are `make demo` and `make test`.
# Every target installs what it needs when missing and is safe to run twice.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo

# Debian packages the build, tests, demo and benchmarks use.
APT_PACKAGES := iproute2 nftables iputils-ping jq containernetworking-plugins hyperfine \
	etcd-server protobuf-compiler libprotobuf-dev openssl
# /usr/bin/time -v: wall time and peak RSS of whole execs (docs/security.md).
APT_PACKAGES += time
# Real CNI callers for the end-to-end tests (host/tests/runtimes_e2e.rs).
APT_PACKAGES += podman runc busybox-static golang-go golang-github-appc-cni-dev

# Release binaries: `tenet` is built runtime-only (no Cranelift: it never
# compiles Wasm on the hot path); `tenetctl` carries the compiler.
TENET_BIN    := target/release/tenet
TENETCTL_BIN := target/release/tenetctl
MODULE_DIR   := target/modules

export TENET_BIN TENETCTL_BIN
export TENET_TEST_MODULES := $(CURDIR)/$(MODULE_DIR)

.PHONY: all deps apt rust-target guests sdk-example build lint test unit-test golden demo plan bench bench-add bench-etcd fuzz clean-cache

all: build guests

## deps: Debian packages and the wasm32-wasip2 target, installed only when missing.
deps: apt rust-target

apt:
	@missing=""; \
	for p in $(APT_PACKAGES); do dpkg -s "$$p" >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" -ne 0 ]; then echo "need root to apt-get install$$missing" >&2; exit 1; fi; \
	  apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

rust-target:
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

## guests: the policy modules, as components in target/modules/.
guests: rust-target
	guests/build.sh

## sdk-example: the SDK's crate-doc example, built as a wasm32 component
## (the doc example must build where modules are built, not only natively).
sdk-example: rust-target
	$(CARGO) build --quiet -p tenet-policy-sdk --example fixed-tenant --profile guest --target wasm32-wasip2

## build: the two release binaries.
build:
	$(CARGO) build --release -p tenet --no-default-features --bin tenet
	$(CARGO) build --profile ctl -p tenet --bin tenetctl
	@# tenet looks for tenetctl beside itself to rebuild a missing artifact.
	install -m 0755 target/ctl/tenetctl $(TENETCTL_BIN)

## lint: formatting and clippy, warnings are errors.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## unit-test: every crate's tests (host, SDK, guests natively) and the
## integration tests against the release binaries and real Wasm modules.
# Tests that need root, etcd or an extra package are #[ignore = "needs ..."],
# so a plain `cargo test` lists them as ignored instead of passing them
# untested; here (as root, after `deps`) --include-ignored runs them all, and
# a missing prerequisite is a panic naming it. Child-process entry points
# (child_entry_*) are ignored too: their parent test runs them with
# `--exact <name> --ignored`, so they are skipped here and never counted.
unit-test: build guests
	$(CARGO) test --workspace --no-fail-fast -- --include-ignored --skip child_entry_

## golden: the golden policy cases through the production engine.
golden: build guests
	$(TENETCTL_BIN) policy test --module-dir $(MODULE_DIR) --cache-dir target/cache policies/tests

## test: everything CI runs.
test: deps lint sdk-example unit-test golden

## demo: the main job on the embedded default (no services needed): pods of
## two tenants in a throwaway node namespace, through the real `tenet`.
demo: deps build guests
	$(TENETCTL_BIN) demo --module-dir $(MODULE_DIR) --cache-dir target/cache --pipeline policies/rainbond.toml

## plan: what each stage of the rainbond pipeline decides for a sample pod.
plan: build guests
	$(TENETCTL_BIN) plan --module-dir $(MODULE_DIR) --cache-dir target/cache --pipeline policies/rainbond.toml

## bench: whole-process cost of the policy pipeline (see README).
bench: deps build guests
	$(CARGO) run --release -p tenet-bench --bin pipeline_exec

## bench-add: whole-process ADD/DEL of tenet against the reference bridge +
## host-local plugins, rainbond and single-tenant pipelines, in scratch network
## namespaces (root; see docs/perf.md). BENCH_ROUNDS (4) rounds of BENCH_RUNS (15)
## alternating iterations, ratios per round and their median; BENCH_LOAD=cpu adds
## one busy loop per CPU (the busy-node figure); BENCH_BASELINE_DIR=<dir with tenet,
## tenetctl, modules/ of an older build> adds its arms and the ratio new/baseline;
## BENCH_BIN_DIR / TENET_TEST_MODULES pick the binaries. Ends with the equivalent
## hyperfine script.
bench-add: deps build guests
	$(CARGO) run --release -p tenet-bench --bin add_del

## bench-etcd: the etcd address store: allocations/s vs raw etcd txns/s, latency vs fill (docs/etcd.md).
bench-etcd: deps
	$(CARGO) run --profile ctl -p tenet-bench --bin etcd_alloc

## fuzz: one fuzz target (FUZZ_TARGET=parse_invocation|sdk_json|sdk_pattern, default parse_invocation; FUZZ_SECONDS, default 600).
# See fuzz/README.md. A target's dictionary, fuzz/dicts/TARGET.dict, is used
# when there is one; an input running over 10 s is a finding (-timeout).
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && t=$(or $(FUZZ_TARGET),parse_invocation) && mkdir -p corpus/$$t && \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t corpus/$$t -- \
	  -max_total_time=$(or $(FUZZ_SECONDS),600) -timeout=10 -print_final_stats=1 \
	  $$(test -f dicts/$$t.dict && echo -dict=dicts/$$t.dict)

clean-cache:
	rm -rf target/cache
