#!/bin/bash
# Issue 12 figures: the whole exec's wall time and peak RSS (/usr/bin/time -v)
# for a log bomb and a 50 MB denial, in a scratch netns this script creates.
# Run: env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin unshare --net --mount bash tests/bench/scripts/boundary-exec.sh [BIN_DIR] [MODULE_DIR]
set -eu
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BIN=${1:-$ROOT/target/release}; MOD=${2:-$ROOT/target/modules}
[ "$(readlink /proc/self/ns/net)" != "$(readlink /proc/1/ns/net)" ] || { echo "not in a scratch netns"; exit 1; }
mount --make-rprivate /
ip link set lo up
echo 1 > /proc/sys/net/ipv4/ip_forward
D=$(mktemp -d); trap 'umount $D/pod 2>/dev/null; rm -rf $D' EXIT
touch $D/pod; unshare --net=$D/pod true
cat > $D/bomb.toml <<T
[[stage]]
name = "evil"
module = "hostile-boundary"
memory_mib = 32
[stage.settings]
mode = "log-bomb"
bytes = 8388608
calls = 5000
T
cat > $D/deny.toml <<T
[[stage]]
name = "evil"
module = "hostile-boundary"
memory_mib = 128
fuel = 2000000000
timeout_ms = 10000
[stage.settings]
mode = "deny"
bytes = 50000000
T
for p in bomb deny; do
  TENET_CONFIG=/dev/null $BIN/tenetctl policy compile --pipeline $D/$p.toml --module-dir $MOD --cache-dir $D/cache >/dev/null
done
for p in bomb deny; do
  echo "== $p"
  for i in 1 2 3; do
    env CNI_COMMAND=ADD CNI_CONTAINERID=evil$i CNI_NETNS=$D/pod CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin \
      CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=noisy" \
      TENET_CONFIG=/dev/null TENET_MODULE_DIRS=$MOD TENET_CACHE_DIR=$D/cache TENET_STATE_DIR=$D/state TENET_PIPELINE=$D/$p.toml \
      /usr/bin/time -v -o $D/time $BIN/tenet <<<'{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"tenet"}' >$D/out 2>$D/err || true
    echo "  code $(grep -o '"code":[0-9]*' $D/out) stdout $(wc -c <$D/out) B stderr $(wc -c <$D/err) B; $(grep -E 'Elapsed \(wall' $D/time | sed 's/.*): //') wall; $(grep 'Maximum resident' $D/time | sed 's/.*: //') KiB max RSS"
  done
done
