#!/usr/bin/env bash
# Scale benchmark (issue 16, first part): `srun -N{n} -n{n}` of a trivial static program,
# bare and with `--container=img.sif` (the SPANK plugin), on the local test cluster at several
# sizes, interleaved per size; medians, ratios, and the plugin's per-node prepare and teardown
# and per-task join times from slurmd's logs, in one table.
#
#   bench/scale.sh [RUNS] [SIZES...]     (as root; default 10 runs, sizes 4 16; the rig brings up
#                                         to 128 nodes, but at 128 on 2 cores slurmd drains nodes:
#                                         "Kill task failed", the steps not ended in time)
#
# Every node is a slurmd in its own network namespace on this one machine (2 cores here): the
# nodes' prepares share its cores, its kernel (loop devices, mounts) and its page cache, which
# separate nodes would not. Uses its own cluster names (netns slips-*, 10.77.5.0/24).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${1:-10}
shift || true
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(4 16)
[ "$(id -u)" -eq 0 ] || { echo "bench/scale.sh: run as root" >&2; exit 1; }
export SLIPWAY_CLUSTER_DIR=/tmp/slipway-bench-scale SLIPWAY_CLUSTER_NAME=slips \
    SLIPWAY_CLUSTER_BRIDGE=slipsbr0 SLIPWAY_CLUSTER_NET=10.77.5 \
    SLIPWAY_CLUSTER_SLURMD_DEBUG=verbose SLIPWAY_CLUSTER_TIMEOUT=180
. bench/slurm-fixture.sh /var/lib/slipway-bench-scale
: >"$W/table.txt"
for n in "${SIZES[@]}"; do
    tests/cluster/cluster.sh down >/dev/null 2>&1 || true
    SLIPWAY_SPANK_PLUGIN=$SO SLIPWAY_SPANK_ARGS="policy=$W/policy.toml" \
        tests/cluster/cluster.sh up "$n" >&2
    eval "$(tests/cluster/cluster.sh env)"
    WORK=$SLIPWAY_CLUSTER_DIR/work
    install -d -o "$USER_" "$WORK"
    pushd "$WORK" >/dev/null
    run() { runuser -u "$USER_" -- env SLURM_CONF="$SLURM_CONF" srun -N"$n" -n"$n" "$@"; }
    run "$W/true"
    run --container="$W/img.sif" /bin/true
    : >"$W/bare.txt"
    : >"$W/cont.txt"
    # Before each run (untimed): until the previous job has left the queue, so that no run
    # pays for the completion of the one before (the runs alternate bare and container).
    settle() { until [ -z "$(squeue -h 2>/dev/null)" ]; do sleep 0.05; done; }
    for ((i = 0; i < RUNS; i++)); do
        for kind in bare cont; do
            settle
            t0=$(date +%s%N)
            if [[ $kind == bare ]]; then run "$W/true"; else run --container="$W/img.sif" /bin/true; fi
            t1=$(date +%s%N)
            echo $(((t1 - t0) / 1000)) >>"$W/$kind.txt"
        done
    done
    popd >/dev/null
    cat "$SLIPWAY_CLUSTER_DIR"/nodes/node*/slurmd.log >"$W/logs.txt"
    python3 - "$W" "$n" <<'PY' | tee -a "$W/table.txt" >&2
import re, statistics, sys
w, n = sys.argv[1], sys.argv[2]
def med(name):
    return statistics.median(int(l) for l in open(f"{w}/{name}.txt")) / 1000
bare, cont = med("bare"), med("cont")
logs = open(f"{w}/logs.txt").read()
join = sorted(int(x) for x in re.findall(r"slipway-timing: task \d+ join (\d+) us", logs))
prep = sorted(int(x) for x in re.findall(r"slipway-timing: job \d+ step \d+ prepare (\d+) us", logs))
tear = sorted(int(x) for x in re.findall(r"slipway-timing: teardown (\d+) us", logs))
jm = statistics.median(join) if join else 0
pm = statistics.median(prep) / 1000 if prep else 0
px = prep[-1] / 1000 if prep else 0
tm = statistics.median(tear) / 1000 if tear else 0
tx = tear[-1] / 1000 if tear else 0
print(f"{n:>5} {bare:9.1f} {cont:9.1f} {cont / bare:6.2f} {pm:9.1f} {px:9.1f} {tm:9.1f} {tx:9.1f} {jm:8.0f}")
PY
    tests/cluster/cluster.sh down >&2
done
echo "nodes   bare ms  cont. ms  ratio  prep med  prep max  tear med  tear max  join us"
cat "$W/table.txt"
