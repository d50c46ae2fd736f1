#!/usr/bin/env bash
# make deploy-check: deploy/ against the Kubernetes OpenAPI schemas (strict:
# unknown fields are errors) for the oldest and newest Kubernetes versions
# the validator bundles that we support, plus the contract checks the
# schemas cannot express; and proof that each check can fail.
#
# Usage: tests/deploy/check.sh VENV  (VENV has kubernetes-validate)
set -euo pipefail
venv=$1
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
validate="$venv/bin/kubernetes-validate"
# containerd 1.6 era (1.25) to the newest schema kubernetes-validate ships.
versions=${DEPLOY_K8S_VERSIONS:-1.25.0 1.37.0}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

deploy/gen-configmap.sh --check
for v in $versions; do
  "$validate" --strict --quiet -k "$v" deploy/*.yaml
  echo "deploy/*.yaml: valid against Kubernetes $v (strict)"
done
"$venv/bin/python" tests/deploy/check_manifests.py "$root"

# Negative checks: each broken copy must be rejected, naming what is wrong.
expect_fail() { # what, needle, command...
  local what=$1 needle=$2; shift 2
  if "$@" >"$tmp/out" 2>&1; then
    echo "negative check failed: $what was accepted" >&2; cat "$tmp/out" >&2; exit 1
  fi
  if ! grep -q -- "$needle" "$tmp/out"; then
    echo "negative check: $what was rejected without naming $needle:" >&2; cat "$tmp/out" >&2; exit 1
  fi
}
ds=deploy/20-daemonset.yaml
sed 's/^\(      \)hostNetwork: true/\1hostNetwork: true\n\1hostNetwrok: true/' $ds >"$tmp/typo.yaml"
expect_fail "an unknown field (strict mode)" hostNetwrok "$validate" --strict -k 1.37.0 "$tmp/typo.yaml"
sed 's/containerPort: 9490/containerPort: "9490"/' $ds >"$tmp/type.yaml"
expect_fail "a string port" containerPort "$validate" --strict -k 1.37.0 "$tmp/type.yaml"
sed '/^  selector:/,/^      app.kubernetes.io\/component/d' $ds >"$tmp/nosel.yaml"
expect_fail "a DaemonSet without selector" selector "$validate" --strict -k 1.37.0 "$tmp/nosel.yaml"

mkdir -p "$tmp/repo/conf" "$tmp/repo/policies"
cp Cargo.toml "$tmp/repo/"; cp conf/tenet.toml "$tmp/repo/conf/"; cp policies/rainbond.toml "$tmp/repo/policies/"
cp -r deploy "$tmp/repo/"
sed -i 's/resources: \["pods", "namespaces"\]/resources: ["pods", "namespaces", "secrets"]/' "$tmp/repo/deploy/00-rbac.yaml"
expect_fail "a ClusterRole that reads secrets" "ClusterRole rules" "$venv/bin/python" tests/deploy/check_manifests.py "$tmp/repo"
cp deploy/00-rbac.yaml "$tmp/repo/deploy/"
sed -i 's|- { name: tenet-etc, mountPath: /etc/tenet }|- { name: tenet-etc, mountPath: /etc/tenet, readOnly: true }|' "$tmp/repo/deploy/20-daemonset.yaml"
expect_fail "an agent that cannot replace the kubeconfig" "tenet-etc must be mounted writable" "$venv/bin/python" tests/deploy/check_manifests.py "$tmp/repo"
cp deploy/20-daemonset.yaml "$tmp/repo/deploy/"
echo '# drift' >>"$tmp/repo/conf/tenet.toml"
expect_fail "a ConfigMap that drifted from conf/tenet.toml" "conf/tenet.toml" "$venv/bin/python" tests/deploy/check_manifests.py "$tmp/repo"
echo "negative checks: the validator and the contract checks reject broken manifests"
