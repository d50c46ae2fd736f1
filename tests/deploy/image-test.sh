#!/usr/bin/env bash
# make image-test: the image `make image` built runs, holds what it should
# and nothing else, and its `tenetctl install` sets up a node the way the
# DaemonSet's init container does (read-only root, no network, a tmpfs /tmp).
#
# Usage: tests/deploy/image-test.sh IMAGE VERSION  (root, podman)
set -euo pipefail
image=$1 version=$2
fail() { echo "image-test: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "needs root (podman with the host's storage)"
command -v podman >/dev/null || fail "needs podman"
podman image exists "$image" || fail "no image $image: run make image"
# Not under /tmp: the install run mounts a tmpfs there.
tmp=$(mktemp -d /var/tmp/tenet-image-test.XXXXXX)
ctr=""
cleanup() { [ -z "$ctr" ] || podman rm -f "$ctr" >/dev/null 2>&1 || true; rm -rf "$tmp"; }
trap cleanup EXIT
# As runtimes_e2e does on this host: runc (crun rejects its hybrid cgroup
# layout), and rlimits a container without CAP_SYS_RESOURCE may set.
pm() { podman --runtime runc --cgroup-manager cgroupfs "$@"; }
run() { pm run --rm --network none --read-only --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 "$@"; }

# 1. `tenet` answers VERSION with the CNI version JSON.
out=$(echo '{"cniVersion":"1.0.0"}' | run -i -e CNI_COMMAND=VERSION "$image" /tenet)
echo "$out" | jq -e '.cniVersion and (.supportedVersions | index("1.0.0"))' >/dev/null \
  || fail "/tenet VERSION printed: $out"
echo "ok: /tenet VERSION -> $out"

# 2. `tenetctl --version` is the workspace version.
out=$(run "$image" /tenetctl --version)
[ "$out" = "tenetctl $version" ] || fail "/tenetctl --version printed: $out (want tenetctl $version)"
echo "ok: $out"

# 3. Exactly the expected files: no shell, no libc, no precompiled artifact.
ctr=$(pm create "$image")
podman export "$ctr" | tar -t | grep -v '/$' | sort >"$tmp/files"
# podman adds these mount points (empty files/dirs) to every container.
grep -vxE 'etc/(hosts|resolv.conf|hostname)|run/.containerenv|dev/.*|proc/.*|sys/.*' "$tmp/files" >"$tmp/content" || true
cat >"$tmp/want" <<'LIST'
tenet
tenetctl
usr/share/tenet/modules/ipam-policy.wasm
usr/share/tenet/modules/rainbond-egress.wasm
usr/share/tenet/modules/route-dns.wasm
usr/share/tenet/modules/tenant-map.wasm
usr/share/tenet/policies/rainbond.toml
usr/share/tenet/policies/single-tenant.toml
usr/share/tenet/tenet.toml
LIST
diff -u "$tmp/want" "$tmp/content" || fail "the image holds other files than the list above"
if run "$image" /bin/sh -c true >/dev/null 2>&1; then fail "/bin/sh ran: the image has a shell"; fi
echo "ok: files are exactly the binaries, 4 modules, 2 pipelines, tenet.toml; no shell"

# 4. The DaemonSet's install, into host directories mounted at their own
#    paths (as the DaemonSet does), from the image's files: binaries,
#    modules, pipeline, the given tenet.toml, artifacts compiled for this
#    CPU by the static tenetctl, portmap and loopback from the plugin
#    source, the node's kubeconfig from a stand-in service account (as
#    kubelet mounts it) and the service variables, conflist.
n="$tmp/node"
mkdir -p "$n/plugins" "$n/config" "$n/sa"
printf 'portmap stand-in\n' >"$n/plugins/portmap"
printf 'loopback stand-in\n' >"$n/plugins/loopback"
printf 'image-test-token\n' >"$n/sa/token"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=image-test-ca -keyout "$n/sa/ca.key" -out "$n/sa/ca.crt" 2>/dev/null
cat >"$n/config/tenet.toml" <<TOML
pipeline = "$n/etc/policies/rainbond.toml"
module_dirs = ["$n/modules"]
cache_dir = "$n/cache"
state_dir = "$n/state"
TOML
install_run() {
  # As the DaemonSet runs it: no capability at all, no privilege escalation.
  run --cap-drop=all --security-opt=no-new-privileges --tmpfs /tmp -v "$n:$n" \
    -e KUBERNETES_SERVICE_HOST=10.96.0.1 -e KUBERNETES_SERVICE_PORT=443 "$image" /tenetctl install \
    --pipeline=/usr/share/tenet/policies/rainbond.toml --module-dir=/usr/share/tenet/modules \
    --config-file="$n/config/tenet.toml" --chain-portmap --plugin-source="$n/plugins" --force \
    --write-kubeconfig="$n/etc/kubeconfig" --service-account-dir="$n/sa" \
    --bin-dir="$n/bin" --conf-dir="$n/net.d" --config-dir="$n/etc" --install-module-dir="$n/modules"
}
out=$(install_run) || fail "tenetctl install in the image failed: $out"
echo "$out" | grep -q 'tenet is installed' || fail "install said: $out"
[ "$(echo "$out" | grep -c 'installed artifact')" -eq 4 ] || fail "want 4 artifacts: $out"
for f in bin/tenet bin/tenetctl bin/portmap bin/loopback etc/tenet.toml etc/policies/rainbond.toml \
  etc/kubeconfig net.d/10-tenet.conflist; do
  [ -s "$n/$f" ] || fail "install left no $f"
done
[ "$(stat -c %a "$n/etc/kubeconfig")" = 600 ] || fail "etc/kubeconfig is mode $(stat -c %a "$n/etc/kubeconfig"), not 600"
grep -q 'server: https://10.96.0.1:443' "$n/etc/kubeconfig" && grep -q 'token: image-test-token' "$n/etc/kubeconfig" \
  || fail "etc/kubeconfig: $(sed 's/token: .*/token: …/' "$n/etc/kubeconfig")"
cmp -s "$n/config/tenet.toml" "$n/etc/tenet.toml" || fail "etc/tenet.toml is not the given file"
jq -e '.plugins | map(.type) == ["tenet", "portmap"]' "$n/net.d/10-tenet.conflist" >/dev/null \
  || fail "conflist: $(cat "$n/net.d/10-tenet.conflist")"
out=$(install_run) || fail "second install failed: $out"
echo "$out" | grep -q 'nothing changed' || fail "a second install changed something: $out"
echo "ok: tenetctl install from the image (no capability, read-only root, no network) set up a node; twice changes nothing"

# 5. The installed static `tenet` runs on the host from those artifacts with
#    no compiler (tenetctl removed): STATUS loads the pipeline.
rm "$n/bin/tenetctl"
conf=$(jq -c '.plugins[0] + {cniVersion: "1.1.0", name: .name}' "$n/net.d/10-tenet.conflist")
out=$(echo "$conf" | env -i CNI_COMMAND=STATUS CNI_PATH="$n/bin" PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  TENET_CONFIG="$n/etc/tenet.toml" "$n/bin/tenet" 2>&1) || fail "installed tenet STATUS failed: $out"
echo "ok: the installed static tenet is ready (STATUS) from the node-built artifacts"
echo "image-test: $image passed"
