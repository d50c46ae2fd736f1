#!/bin/bash
# Issue 17: the DEL of a tenant's LAST pod against the DEL of a pod whose
# tenant keeps another pod, rainbond pipeline, with hyperfine (each DEL timed
# with its ADD as an untimed --prepare). Three arms, each in a node namespace
# of its own that this script creates, alternating in every round:
#   last-kept     the tenant's only pod, [isolation] keep_idle_tenants = true
#                 (the default: the network stays, idle, until GC)
#   last-removed  the tenant's only pod, keep_idle_tenants = false (the DEL
#                 deletes the bridge and runs nft to remove the chains)
#   not-last      a pod whose tenant has a resident pod (any other DEL)
# Prints per round the median DEL of each arm and the ratios to not-last.
# Run: env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin unshare --net --mount bash tests/bench/scripts/last-pod-del.sh [BIN_DIR] [MODULE_DIR] [ROUNDS] [RUNS]
set -eu
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BIN=${1:-$ROOT/target/release}; MOD=${2:-$ROOT/target/modules}
ROUNDS=${3:-4}; RUNS=${4:-15}
[ "$(readlink /proc/self/ns/net)" != "$(readlink /proc/1/ns/net)" ] || { echo "not in a scratch netns"; exit 1; }
mount --make-rprivate /
ip link set lo up
echo 1 > /proc/sys/net/ipv4/ip_forward
D=$(mktemp -d)
ARMS="last-kept last-removed not-last"
cleanup() {
  for f in "$D"/*.ns "$D"/*.node; do umount "$f" 2>/dev/null || true; done
  rm -rf "$D"
}
trap cleanup EXIT
for a in $ARMS; do
  touch "$D/$a.ns" "$D/$a.node"; unshare --net="$D/$a.ns" true; unshare --net="$D/$a.node" true
  nsenter --net="$D/$a.node" sh -c 'ip link set lo up; echo 1 > /proc/sys/net/ipv4/ip_forward'
done
touch "$D/res.ns"; unshare --net="$D/res.ns" true
printf '[isolation]\nkeep_idle_tenants = false\n' > "$D/remove.toml"
echo '{"cniVersion":"1.1.0","name":"bench","type":"tenet"}' > "$D/netconf.json"
TENET_CONFIG=/dev/null "$BIN/tenetctl" policy compile --pipeline "$ROOT/policies/rainbond.toml" \
  --module-dir "$MOD" --cache-dir "$D/cache" > /dev/null
# cni ARM COMMAND [CONTAINER NETNS]: one exec of tenet for arm ARM's tenant.
cat > "$D/cni" <<EOF
#!/bin/bash
arm=\$1; cfg=/dev/null; [ "\$arm" = last-removed ] && cfg=$D/remove.toml
env CNI_COMMAND=\$2 CNI_CONTAINERID=\${3:-\$arm} CNI_NETNS=\${4:-$D/\$arm.ns} CNI_IFNAME=eth0 \
  CNI_PATH=/usr/lib/cni CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=t-\$arm;K8S_POD_NAME=\$arm" \
  TENET_CONFIG=\$cfg TENET_PIPELINE=$ROOT/policies/rainbond.toml TENET_MODULE_DIRS=$MOD \
  TENET_CACHE_DIR=$D/cache TENET_STATE_DIR=$D/state-\$arm $BIN/tenet < $D/netconf.json > $D/out 2>&1 || { cat $D/out >&2; exit 1; }
EOF
chmod +x "$D/cni"
# The not-last arm's tenant keeps a resident pod throughout.
nsenter --net="$D/not-last.node" "$D/cni" not-last ADD resident "$D/res.ns"
for r in $(seq "$ROUNDS"); do
  order=$ARMS; [ $((r % 2)) = 0 ] && order="not-last last-removed last-kept"
  for a in $order; do
    nsenter --net="$D/$a.node" hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$D/$a-$r.json" \
      --prepare "$D/cni $a ADD" --cleanup "$D/cni $a DEL" "$D/cni $a DEL" > /dev/null
  done
  line="round $r:"
  for a in $ARMS; do
    line="$line $a $(jq '.results[0].median * 1000 | round' "$D/$a-$r.json") ms"
  done
  for a in last-kept last-removed; do
    line="$line | $a/not-last $(jq -n --slurpfile x "$D/$a-$r.json" --slurpfile y "$D/not-last-$r.json" \
      '$x[0].results[0].median / $y[0].results[0].median * 100 | round / 100')"
  done
  echo "$line"
done
nsenter --net="$D/not-last.node" "$D/cni" not-last DEL resident "$D/res.ns"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
