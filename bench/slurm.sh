#!/usr/bin/env bash
# Slurm launch benchmark: `srun -N4 -n8` of a trivial static program, bare and with
# `--container=img.sif` (Slipway's SPANK plugin), on the local 4-node test cluster.
#
#   bench/slurm.sh [RUNS]        (as root; default 30 runs of each, interleaved)
#
# Prints the median wall time of each, their ratio (goal <= 1.10), and the per-task join time
# the plugin logs in slurmd's log ("slipway-timing: task N join US us", at verbose: goal
# <= 1 ms), and the per-node prepare time. Builds the plugin and slipway (--release).
# Uses its own cluster names (netns slipb-*, 10.77.3.0/24), so it does not disturb another.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${1:-30}
[ "$(id -u)" -eq 0 ] || { echo "bench/slurm.sh: run as root" >&2; exit 1; }
for p in gcc srun python3 mksquashfs; do
    command -v "$p" >/dev/null || { echo "bench/slurm.sh: $p not found" >&2; exit 1; }
done

export SLIPWAY_CLUSTER_DIR=/tmp/slipway-bench-cluster SLIPWAY_CLUSTER_NAME=slipb \
    SLIPWAY_CLUSTER_BRIDGE=slipbbr0 SLIPWAY_CLUSTER_NET=10.77.3 \
    SLIPWAY_CLUSTER_SLURMD_DEBUG=verbose
. bench/slurm-fixture.sh /var/lib/slipway-bench-slurm
tests/cluster/cluster.sh down >/dev/null 2>&1 || true
SLIPWAY_SPANK_PLUGIN=$SO SLIPWAY_SPANK_ARGS="policy=$W/policy.toml" tests/cluster/cluster.sh up 4 >&2
eval "$(tests/cluster/cluster.sh env)"
WORK=$SLIPWAY_CLUSTER_DIR/work
install -d -o "$USER_" "$WORK"
cd "$WORK"

run() { runuser -u "$USER_" -- env SLURM_CONF="$SLURM_CONF" srun -N4 -n8 "$@"; }
# Warm up both paths (page cache, first loop device).
run "$W/true"
run --container="$W/img.sif" /bin/true

: >"$W/bare.txt"
: >"$W/cont.txt"
for ((i = 0; i < RUNS; i++)); do
    for kind in bare cont; do
        t0=$(date +%s%N)
        if [[ $kind == bare ]]; then run "$W/true"; else run --container="$W/img.sif" /bin/true; fi
        t1=$(date +%s%N)
        echo $(((t1 - t0) / 1000)) >>"$W/$kind.txt"
    done
done

cat "$SLIPWAY_CLUSTER_DIR"/nodes/node*/slurmd.log >"$W/logs.txt"
python3 - "$W" "$RUNS" <<'EOF'
import re, statistics, sys
w, runs = sys.argv[1], int(sys.argv[2])
def med(name):
    return statistics.median(int(l) for l in open(f"{w}/{name}.txt")) / 1000
bare, cont = med("bare"), med("cont")
logs = open(f"{w}/logs.txt").read()
join = [int(x) for x in re.findall(r"slipway-timing: task \d+ join (\d+) us", logs)]
prep = [int(x) for x in re.findall(r"slipway-timing: job \d+ step \d+ prepare (\d+) us", logs)]
plan = [int(x) for x in re.findall(r"prepare \d+ us \(plan (\d+) us", logs)]
keeper = [int(x) for x in re.findall(r"prepare \d+ us \(plan \d+ us, keeper (\d+) us", logs)]
print(f"srun -N4 -n8, {runs} runs each (median wall time)")
print(f"  bare:        {bare:8.1f} ms")
print(f"  --container: {cont:8.1f} ms")
print(f"  ratio:       {cont / bare:8.3f}   (goal <= 1.10)")
if join:
    js = sorted(join)
    print(f"per-task join (setns), {len(js)} tasks: median {statistics.median(js)} us, "
          f"p99 {js[int(len(js) * 0.99) - 1]} us, max {js[-1]} us   (goal <= 1000 us)")
if prep:
    print(f"per-node prepare (plan + keeper + mounts), {len(prep)} nodes: "
          f"median {statistics.median(prep) / 1000:.1f} ms, max {max(prep) / 1000:.1f} ms")
if plan:
    print(f"  of which plan (policy, image, user) median {statistics.median(plan) / 1000:.1f} ms, "
          f"keeper (fork, namespace, mounts) median {statistics.median(keeper) / 1000:.1f} ms")
EOF
