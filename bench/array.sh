#!/usr/bin/env bash
# A job array on one dense node (issue 16): `sbatch --array=1-N` of a single-task job, all N
# started at once on one node, bare, with `--container=img.sif` (the SPANK plugin; the batch
# script runs in the image) and the same with the plugin's early start on (`early=yes`),
# rounds interleaved; medians and ratios.
#
#   bench/array.sh [JOBS] [ROUNDS]       (as root; default 64 jobs, 5 rounds)
#
# The node is one slurmd declaring JOBS CPUs (on this 2-core machine: config_overrides), so
# that the scheduler starts every array task at once. The job is a script whose interpreter
# is the static `true` (`#!/bin/true`): on the node, or in the image. Times:
#   wall     from sbatch to the last array task gone from the queue (the scheduler's and the
#            controller's share included), polled every 20 ms
#   node     from the first array task's batch launch on the node to the last one's end
#            (slurmd's log: "Launching batch job" to "[J.batch] done with job")
# and the plugin's per-job prepare (of the "early" rows) from the same log. Uses its own cluster names (netns
# slipa-*, 10.77.11.0/24).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
JOBS=${1:-64}
ROUNDS=${2:-5}
[ "$(id -u)" -eq 0 ] || { echo "bench/array.sh: run as root" >&2; exit 1; }
export SLIPWAY_CLUSTER_DIR=/tmp/slipway-bench-array SLIPWAY_CLUSTER_NAME=slipa \
    SLIPWAY_CLUSTER_BRIDGE=slipabr0 SLIPWAY_CLUSTER_NET=10.77.11 \
    SLIPWAY_CLUSTER_SLURMD_DEBUG=verbose SLIPWAY_CLUSTER_CPUS=$JOBS
. bench/slurm-fixture.sh /var/lib/slipway-bench-array
printf '#!/bin/true\n' >"$W/job.sh"
chmod 755 "$W/job.sh"
tests/cluster/cluster.sh down >/dev/null 2>&1 || true
SLIPWAY_SPANK_PLUGIN=$SO SLIPWAY_SPANK_ARGS="policy=$W/policy.toml" tests/cluster/cluster.sh up 1 >&2
eval "$(tests/cluster/cluster.sh env)"
WORK=$SLIPWAY_CLUSTER_DIR/work
install -d -o "$USER_" "$WORK"
cd "$WORK"
LOG=$SLIPWAY_CLUSTER_DIR/nodes/node1/slurmd.log
as_user() { runuser -u "$USER_" -- env SLURM_CONF="$SLURM_CONF" "$@"; }
settle() { until [ -z "$(squeue -h 2>/dev/null)" ]; do sleep 0.05; done; }
# One array: its wall time (us) on stdout; its job id range in $W/ids.
array() {
    local id t0 t1
    t0=$(date +%s%N)
    id=$(as_user sbatch --parsable --array=1-"$JOBS" -N1 -n1 -o /dev/null "$@" "$W/job.sh")
    until [ -z "$(squeue -h -r -j "$id" 2>/dev/null)" ]; do sleep 0.02; done
    t1=$(date +%s%N)
    echo $(((t1 - t0) / 1000))
}
array >/dev/null
array --container="$W/img.sif" >/dev/null
: >"$W/runs.txt"
PLUGSTACK=$SLIPWAY_CLUSTER_DIR/etc/plugstack.conf
plugstack() { echo "required $SO policy=$W/policy.toml $1" >"$PLUGSTACK"; }
for ((i = 0; i < ROUNDS; i++)); do
    for kind in bare cont early; do
        settle
        sleep 1
        if [[ $kind == early ]]; then plugstack early=yes; else plugstack ""; fi
        from=$(wc -l <"$LOG")
        if [[ $kind == bare ]]; then us=$(array); else us=$(array --container="$W/img.sif"); fi
        settle
        sleep 0.5
        tail -n +"$((from + 1))" "$LOG" >"$W/$kind.$i.log"
        echo "$kind $us $W/$kind.$i.log" >>"$W/runs.txt"
    done
done
python3 - "$W/runs.txt" "$JOBS" <<'PY'
import re, statistics, sys
from datetime import datetime
ts = lambda t: datetime.fromisoformat(t).timestamp() * 1000
wall, node, prep, ran = {}, {}, [], {}
for line in open(sys.argv[1]):
    kind, us, log = line.split()
    text = open(log).read()
    starts = [ts(t) for t in re.findall(r"\[(\d{4}-\d\d-\d\dT[\d:.]+)\] Launching batch job", text)]
    ends = [ts(t) for t in re.findall(r"\[(\d{4}-\d\d-\d\dT[\d:.]+)\] \[\d+\.batch\] done with job", text)]
    wall.setdefault(kind, []).append(int(us) / 1000)
    if starts and ends:
        node.setdefault(kind, []).append(max(ends) - min(starts))
    ran.setdefault(kind, []).append(len(ends))
    if kind == "early":
        prep += [(int(x) / 1000, how) for x, how in
                 re.findall(r"step \d+ prepare (\d+) us .*started (\w+)", text)]
n = sys.argv[2]
print(f"{n} single-task jobs of one array on one node, medians of {len(wall['bare'])} rounds")
print(f"{'':10} {'wall ms':>9} {'node ms':>9} {'jobs run':>9}")
for k in ("bare", "cont", "early"):
    print(f"{k:10} {statistics.median(wall[k]):9.1f} {statistics.median(node[k]):9.1f} "
          f"{min(ran[k]):>9}")
for k in ("cont", "early"):
    print(f"{k + ' ratio':10} {statistics.median(wall[k]) / statistics.median(wall['bare']):9.2f} "
          f"{statistics.median(node[k]) / statistics.median(node['bare']):9.2f}")
if prep:
    ms = [p for p, _ in prep]
    early = sum(1 for _, how in prep if how == "early")
    print(f"prepare per job: median {statistics.median(ms):.1f} ms, max {max(ms):.1f} ms "
          f"({early} of {len(prep)} started early, at init_post_opt)")
PY
