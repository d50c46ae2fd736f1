"""What the OpenAPI schemas cannot say about deploy/: run by `make deploy-check`.

- the ConfigMap's files are byte for byte the repository's (parsed as YAML,
  not compared as text: what a cluster gets);
- the ClusterRole grants get/list/watch on pods and namespaces and nothing
  else;
- the DaemonSet keeps its contract: host network, every taint tolerated,
  system-node-critical, the install and agent command lines, the probes and
  scrape annotations, no privileged container, the image tag is the
  workspace version, and the node's kubeconfig written by both containers
  where the ConfigMap's tenet.toml looks for it.

Usage: check_manifests.py REPO_ROOT. Exits 1 naming every violation.
"""

import re
import sys
from pathlib import Path

import yaml

root = Path(sys.argv[1])
errors = []


def check(cond, what):
    if not cond:
        errors.append(what)


def docs(name):
    with open(root / "deploy" / name, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


# The ConfigMap is the repository's files.
(cm,) = docs("10-configmap.yaml")
for key, rel in [("tenet.toml", "conf/tenet.toml"), ("rainbond.toml", "policies/rainbond.toml")]:
    want = (root / rel).read_text(encoding="utf-8")
    check(cm["data"].get(key) == want, f"ConfigMap data[{key!r}] differs from {rel}")
check(set(cm["data"]) == {"tenet.toml", "rainbond.toml"}, f"ConfigMap keys: {sorted(cm['data'])}")

# RBAC: read-only, two resources, nothing else.
rbac = {d["kind"]: d for d in docs("00-rbac.yaml")}
check(set(rbac) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}, f"00-rbac.yaml kinds: {sorted(rbac)}")
rules = rbac["ClusterRole"]["rules"]
check(
    rules == [{"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["get", "list", "watch"]}],
    f"ClusterRole rules must be get/list/watch on pods and namespaces only, got {rules}",
)
check("aggregationRule" not in rbac["ClusterRole"], "ClusterRole must not aggregate other roles")
binding = rbac["ClusterRoleBinding"]
check(binding["roleRef"]["name"] == "tenet", "binding names another role")
check(
    binding["subjects"] == [{"kind": "ServiceAccount", "name": "tenet", "namespace": "kube-system"}],
    f"binding subjects: {binding['subjects']}",
)

# The DaemonSet's contract.
(ds,) = docs("20-daemonset.yaml")
pod = ds["spec"]["template"]["spec"]
check(pod.get("hostNetwork") is True, "hostNetwork must be true")
check(pod.get("priorityClassName") == "system-node-critical", "priorityClassName")
check({"operator": "Exists"} in pod.get("tolerations", []), "must tolerate every taint")
check(pod.get("serviceAccountName") == "tenet", "serviceAccountName")
ann = ds["spec"]["template"]["metadata"]["annotations"]
check(ann.get("prometheus.io/scrape") == "true", "prometheus.io/scrape")
check(ann.get("prometheus.io/port") == "9490", "prometheus.io/port")
check(ann.get("prometheus.io/path") == "/metrics", "prometheus.io/path")

version = re.search(r'^version = "([^"]+)"', (root / "Cargo.toml").read_text(), re.M).group(1)
containers = {c["name"]: c for c in pod["initContainers"] + pod["containers"]}
check(set(containers) == {"install", "agent"}, f"containers: {sorted(containers)}")
for name, c in containers.items():
    check(c["image"] == f"ghcr.io/tenet/tenet:{version}", f"{name}: image {c['image']} is not ghcr.io/tenet/tenet:{version}")
    sc = c.get("securityContext", {})
    check(sc.get("privileged") is False, f"{name}: privileged must be false")
    check(sc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: must drop ALL capabilities")
    check("memory" in c.get("resources", {}).get("limits", {}), f"{name}: memory limit")
    check({"cpu", "memory"} <= set(c.get("resources", {}).get("requests", {})), f"{name}: requests")

agent = containers["agent"]
check(
    agent["command"]
    == ["/tenetctl", "agent", "--config", "/etc/tenet/tenet.toml", "--listen", "0.0.0.0:9490",
        "--cri-socket", "/run/containerd/containerd.sock", "--gc-interval", "60s",
        "--write-kubeconfig", "/etc/tenet/kubeconfig", "--kubeconfig-interval", "60s"],
    f"agent command: {agent['command']}",
)
check(agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9490}, "readiness probe")
check(agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 9490}, "liveness probe")
check(agent["securityContext"]["capabilities"].get("add") == ["NET_ADMIN", "SYS_ADMIN"], "agent capabilities")
install = containers["install"]
check(install["command"][:2] == ["/tenetctl", "install"], "init container runs tenetctl install")
check("add" not in install["securityContext"]["capabilities"], "install needs no capability")

# The CNI exec runs on the host: both containers write the kubeconfig the
# ConfigMap's tenet.toml names, into the host's /etc/tenet, writable.
KUBECONFIG = "/etc/tenet/kubeconfig"
check(f"--write-kubeconfig={KUBECONFIG}" in install["command"], f"install must --write-kubeconfig={KUBECONFIG}")
check("--kubernetes-labels" in install["command"], "install must --kubernetes-labels (tenant rules read pod and namespace labels)")
check(
    re.search(r'^\[kubernetes\]\s*\nkubeconfig = "' + re.escape(KUBECONFIG) + '"', cm["data"]["tenet.toml"], re.M),
    f"the ConfigMap's tenet.toml must set [kubernetes] kubeconfig = {KUBECONFIG!r}",
)
check(pod.get("automountServiceAccountToken", True) is not False, "the service-account token must be mounted")
for name in ["install", "agent"]:
    mounts = [m for m in containers[name]["volumeMounts"] if m["name"] == "tenet-etc"]
    check(
        len(mounts) == 1 and mounts[0]["mountPath"] == "/etc/tenet" and not mounts[0].get("readOnly"),
        f"{name}: tenet-etc must be mounted writable at /etc/tenet (the kubeconfig is replaced by rename)",
    )

# Every host path the containers write is mounted at the same path inside
# them (install writes these paths into the conflist and tenet.toml).
host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
for name in ["cni-bin", "cni-conf", "tenet-etc", "tenet-modules", "tenet-var"]:
    for m in install["volumeMounts"]:
        if m["name"] == name:
            check(m["mountPath"] == host[name], f"install: {name} mounted at {m['mountPath']}, host path {host[name]}")

if errors:
    for e in errors:
        print(f"deploy/: {e}", file=sys.stderr)
    sys.exit(1)
print(f"deploy/: contract checks passed (ConfigMap = repository files, RBAC, DaemonSet, image {version})")
