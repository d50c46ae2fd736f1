#!/bin/bash
# In-process breakdown of ADD (rainbond pipeline, one resident pod): the
# median of each apply step's "step done ... us=" debug line, and the wall
# time of ADD and DEL. DEL journals no steps; see where its time goes with
# `strace -f -tt -T` (docs/perf.md).
# Run: env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin unshare --net --mount bash tests/bench/scripts/step-breakdown.sh [BIN_DIR] [MODULE_DIR] [RUNS] [PIPELINE]
set -eu
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BIN=${1:-$ROOT/target/release}; MOD=${2:-$ROOT/target/modules}; RUNS=${3:-30}
PIPE=${4:-$ROOT/policies/rainbond.toml}
[ "$(readlink /proc/self/ns/net)" != "$(readlink /proc/1/ns/net)" ] || { echo "not in a scratch netns"; exit 1; }
mount --make-rprivate /
ip link set lo up
echo 1 > /proc/sys/net/ipv4/ip_forward
D=$(mktemp -d); trap 'umount $D/pod $D/res 2>/dev/null; rm -rf $D' EXIT
touch $D/pod $D/res; unshare --net=$D/pod true; unshare --net=$D/res true
TENET_CONFIG=/dev/null $BIN/tenetctl policy compile --pipeline $PIPE --module-dir $MOD --cache-dir $D/cache >/dev/null
run() { # command container netns
  env CNI_COMMAND=$1 CNI_CONTAINERID=$2 CNI_NETNS=$3 CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin \
    CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=web-0" \
    TENET_CONFIG=/dev/null TENET_MODULE_DIRS=$MOD TENET_CACHE_DIR=$D/cache TENET_STATE_DIR=$D/state TENET_PIPELINE=$PIPE \
    TENET_LOG_LEVEL=${LEVEL:-tenet=debug} TENET_LOG_FILE=$D/log \
    $BIN/tenet <<<'{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"tenet"}' >/dev/null
}
run ADD resident $D/res
for i in $(seq 3); do run ADD bench $D/pod; run DEL bench $D/pod; done
: > $D/log; : > $D/wall
for i in $(seq $RUNS); do
  s=$(date +%s%N); run ADD bench $D/pod; e=$(date +%s%N); echo "ADD $(( (e-s)/1000 ))" >> $D/wall
  s=$(date +%s%N); run DEL bench $D/pod; e=$(date +%s%N); echo "DEL $(( (e-s)/1000 ))" >> $D/wall
done
run DEL resident $D/res
med() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for c in ADD DEL; do
  echo "== $c: wall median $(awk -v c=$c '$1==c {print $2}' $D/wall | med) us over $RUNS (with debug logging)"
  grep "command=\"$c\"" $D/log | grep "step done" | sed -E 's/.*step="?([^" ]+)"? us=([0-9]+).*/\1 \2/' > $D/steps.$c || true
  awk '{print $1}' $D/steps.$c | awk '!seen[$0]++' | while read -r st; do
    printf "  %-28s %6s us\n" "$st" "$(awk -v s="$st" '$1==s {print $2}' $D/steps.$c | med)"
  done
done
