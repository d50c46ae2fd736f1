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
# A real OCI registry for the distribution tests (host/tests/oci_distribution.rs).
APT_PACKAGES += docker-registry
# The node image's static binaries (musl-gcc for ring's C code) and the venv
# of deploy/'s schema validator (make image, make deploy-check).
APT_PACKAGES += musl-tools python3-venv
# The kubelet path (host/tests/cri_e2e.rs): containerd's CRI, and the
# Prometheus project's own text parser (Python client) for the agent's /metrics.
APT_PACKAGES += containerd python3-prometheus-client

# Release binaries (`make build`: what nodes run and the benches time):
# `tenet` runtime-only (no Cranelift: it never compiles Wasm on the hot
# path) with fat LTO; `tenetctl` carries the compiler.
RELEASE_DIR  := target/release
# The binaries the demo and the tests run (`make quick`): the same two
# programs from the same code, both in the `quick` profile, so they share
# one dependency build (all but wasmtime's compiler half) and skip LTO: a
# first `make demo` builds one graph instead of two, each with a long
# single-threaded LTO link. Same behaviour; speed and size are the release
# build's business.
QUICK_DIR    := target/quick
TENET_BIN    := $(QUICK_DIR)/tenet
TENETCTL_BIN := $(QUICK_DIR)/tenetctl
MODULE_DIR   := target/modules

export TENET_BIN TENETCTL_BIN
export TENET_TEST_MODULES := $(CURDIR)/$(MODULE_DIR)

.PHONY: all deps apt rust-target guests sdk-example build quick lint test unit-test golden demo plan bench bench-add bench-etcd fuzz clean-cache

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

## build: the two release binaries, in target/release.
build:
	$(CARGO) build --release -p tenet --no-default-features --bin tenet
	$(CARGO) build --profile ctl -p tenet --bin tenetctl
	@# tenet looks for tenetctl beside itself to rebuild a missing artifact.
	install -m 0755 target/ctl/tenetctl $(RELEASE_DIR)/tenetctl

## quick: the same two binaries in the quick profile (target/quick), for the
## demo and the tests. tenet first: tenetctl then only adds the compiler half.
quick:
	$(CARGO) build --profile quick -p tenet --no-default-features --bin tenet
	$(CARGO) build --profile quick -p tenet --bin tenetctl

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
unit-test: quick guests
	$(CARGO) test --workspace --no-fail-fast -- --include-ignored --skip child_entry_

## golden: the golden policy cases through the production engine.
golden: quick guests
	$(TENETCTL_BIN) policy test --module-dir $(MODULE_DIR) --cache-dir target/cache policies/tests

## test: everything CI runs.
test: deps lint sdk-example unit-test golden deploy-check

## demo: the main job on the embedded default (no services needed): pods of
## two tenants in a throwaway node namespace, through the real `tenet`.
demo: deps quick guests
	$(TENETCTL_BIN) demo --module-dir $(MODULE_DIR) --cache-dir target/cache --pipeline policies/rainbond.toml

## plan: what each stage of the rainbond pipeline decides for a sample pod.
plan: quick guests
	$(TENETCTL_BIN) plan --module-dir $(MODULE_DIR) --cache-dir target/cache --pipeline policies/rainbond.toml

## bench: whole-process cost of the policy pipeline (see README).
bench: deps build guests
	$(CARGO) run --release -p tenet-bench --bin pipeline_exec

## bench-add: whole-process ADD/DEL of tenet against the reference bridge +
## host-local plugins, rainbond and single-tenant pipelines, in scratch network
## namespaces (root; see docs/perf.md). BENCH_ROUNDS (4) rounds of BENCH_RUNS (15)
## alternating iterations, ratios per round and their median; BENCH_LOAD=cpu adds
## one busy loop per CPU (the busy-node figure); BENCH_DAEMON=off drops the arms
## through the node daemon (tenet serve); BENCH_BASELINE_DIR=<dir with tenet,
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

## deny: cargo-deny (deny.toml): licenses, duplicate crates (warnings),
## sources, and RustSec advisories. cargo-deny is installed when missing. The
## advisory database is fetched from GitHub; where that cannot be reached
## (offline machines) the advisories check is skipped and said so.
.PHONY: deny
deny:
	@command -v cargo-deny >/dev/null 2>&1 || $(CARGO) install cargo-deny --locked
	@if $(CARGO) deny fetch db >/dev/null 2>&1; then \
		$(CARGO) deny check; \
	else \
		echo "deny: the advisory database cannot be fetched here: checking licenses, bans and sources only"; \
		$(CARGO) deny --offline check licenses bans sources; \
	fi
# ------------------------------------------------------------ deploy / image
# deploy/ (DaemonSet, RBAC, ConfigMap) and the node image; docs/kubernetes.md.
VERSION      := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
IMAGE        ?= ghcr.io/tenet/tenet:$(VERSION)
MUSL_TARGET  := x86_64-unknown-linux-musl
# Its own target dir: a musl build never invalidates the glibc one.
MUSL_DIR     := target/musl
MUSL_OUT     := $(MUSL_DIR)/$(MUSL_TARGET)/ctl
IMAGE_CTX    := target/image/context
# deploy/'s schema validator (PyPI kubernetes-validate: the OpenAPI schemas
# of Kubernetes 1.25-1.37 bundled, strict mode), in a venv of its own.
DEPLOY_VENV  := target/deploy-venv
KUBERNETES_VALIDATE_VERSION := 1.37.0

.PHONY: deploy-configmap deploy-check musl image image-test

## deploy-configmap: regenerate deploy/10-configmap.yaml from conf/tenet.toml
## and policies/rainbond.toml (deploy-check fails when they drift).
deploy-configmap:
	deploy/gen-configmap.sh

## deploy-check: deploy/ against the Kubernetes OpenAPI schemas (strict), the
## RBAC/DaemonSet contract, and negative checks that each can fail.
deploy-check: apt
	@if ! $(DEPLOY_VENV)/bin/kubernetes-validate --version 2>/dev/null | grep -qF '$(KUBERNETES_VALIDATE_VERSION)'; then \
	  /usr/bin/python3 -m venv $(DEPLOY_VENV); \
	  $(DEPLOY_VENV)/bin/pip install --quiet --disable-pip-version-check 'kubernetes-validate==$(KUBERNETES_VALIDATE_VERSION)'; \
	fi
	tests/deploy/check.sh $(DEPLOY_VENV)

## musl: static tenet and tenetctl for the image, both with the `ctl` profile
## (thin LTO: a cold CI build is minutes shorter than fat LTO).
musl: apt
	@rustup target list --installed | grep -qx $(MUSL_TARGET) || rustup target add $(MUSL_TARGET)
	$(CARGO) build --profile ctl -p tenet --no-default-features --bin tenet --target $(MUSL_TARGET) --target-dir $(MUSL_DIR)
	$(CARGO) build --profile ctl -p tenet --bin tenetctl --target $(MUSL_TARGET) --target-dir $(MUSL_DIR)

## image: the node image $(IMAGE) (deploy/Containerfile, FROM scratch) with
## podman, or buildah when podman is missing. IMAGE=... to tag it otherwise.
image: musl guests
	rm -rf $(IMAGE_CTX)
	install -D -m 0755 -t $(IMAGE_CTX) $(MUSL_OUT)/tenet $(MUSL_OUT)/tenetctl
	install -D -m 0644 -t $(IMAGE_CTX)/usr/share/tenet/modules \
	  $(addprefix $(MODULE_DIR)/,tenant-map.wasm ipam-policy.wasm route-dns.wasm rainbond-egress.wasm)
	install -D -m 0644 -t $(IMAGE_CTX)/usr/share/tenet/policies policies/*.toml
	install -D -m 0644 conf/tenet.toml $(IMAGE_CTX)/usr/share/tenet/tenet.toml
	@if command -v podman >/dev/null; then b="podman build"; \
	 elif command -v buildah >/dev/null; then b="buildah bud"; \
	 else echo "make image needs podman or buildah" >&2; exit 1; fi; \
	 $$b --network none --build-arg VERSION=$(VERSION) -f deploy/Containerfile -t $(IMAGE) $(IMAGE_CTX)

## image-test: the image's binaries run with no shell and no network, and its
## `tenetctl install` sets up a node (tests/deploy/image-test.sh).
image-test: image
	tests/deploy/image-test.sh $(IMAGE) $(VERSION)
