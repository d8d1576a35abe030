#!/usr/bin/env bash
# Scale benchmark (issue 16, first part): `srun -N{n} -n{n}` of a trivial static program,
# bare, with `--container=img.sif` (the SPANK plugin as installed) and with the plugin's early
# start on (`early=yes`), on the local test cluster at several sizes, interleaved per size; medians,
# ratios, and the plugin's per-node prepare (and its phases) and teardown and per-task join
# times from slurmd's logs, in two tables.
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
: >"$W/phases.txt"
: >"$W/launch.txt"
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
    : >"$W/early.txt"
    # Before each run (untimed): until the previous job has left the queue, so that no run
    # pays for the completion of the one before (the runs alternate bare and container).
    settle() { until [ -z "$(squeue -h 2>/dev/null)" ]; do sleep 0.05; done; }
    # "early": the plugin with early=yes (the container built from init_post_opt on, not in
    # user_init); slurmstepd and srun read plugstack.conf at every step.
    PLUGSTACK=$SLIPWAY_CLUSTER_DIR/etc/plugstack.conf
    plugstack() { echo "required $SO policy=$W/policy.toml $1" >"$PLUGSTACK"; }
    for ((i = 0; i < RUNS; i++)); do
        for kind in bare cont early; do
            settle
            if [[ $kind == early ]]; then plugstack early=yes; else plugstack ""; fi
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
bare, cont, early = med("bare"), med("cont"), med("early")
logs = open(f"{w}/logs.txt").read()
join = sorted(int(x) for x in re.findall(r"slipway-timing: task \d+ join (\d+) us", logs))
tear = sorted(int(x) for x in re.findall(r"slipway-timing: teardown (\d+) us", logs))
# The prepare's markers: total, plan, fork, setup, container, where it started (early: at
# init_post_opt, beside slurmstepd's own set-up; here: in user_init), user_init's wait.
ph = re.findall(r"prepare (\d+) us \(plan (\d+) us, keeper \d+ us: fork (\d+) us, setup (\d+) us, "
                r"container (\d+) us; started (\w+), user_init waited (\d+) us\)", logs)
prep = sorted(int(p[0]) for p in ph if p[5] == "here")
jm = statistics.median(join) if join else 0
pm = statistics.median(prep) / 1000 if prep else 0
px = prep[-1] / 1000 if prep else 0
tm = statistics.median(tear) / 1000 if tear else 0
tx = tear[-1] / 1000 if tear else 0
print(f"{n:>5} {bare:9.1f} {cont:9.1f} {cont / bare:6.2f} {early:9.1f} {early / bare:6.2f} "
      f"{pm:9.1f} {px:9.1f} {tm:9.1f} {tx:9.1f} {jm:8.0f}")
# The nodes' side of each step: from the first node's "launch task" to the last node's
# "starting N tasks" (slurmd's log, in ms): what a step pays before its tasks run everywhere,
# by kind of step (bare, container started early, container started in user_init).
from datetime import datetime
ts = lambda t: datetime.fromisoformat(t).timestamp() * 1000
first, last, kind = {}, {}, {}
for t, j, st in re.findall(r"\[(\d{4}-\d\d-\d\dT[\d:.]+)\] launch task StepId=(\d+)\.(\d+) ", logs):
    first[(j, st)] = min(first.get((j, st), 1e18), ts(t))
for t, j, st in re.findall(r"\[(\d{4}-\d\d-\d\dT[\d:.]+)\] \[(\d+)\.(\d+)\] starting \d+ tasks", logs):
    last[(j, st)] = max(last.get((j, st), 0), ts(t))
for j, st, how in re.findall(r"slipway-timing: job (\d+) step (\d+) prepare .*started (\w+)", logs):
    kind[(j, st)] = how
span = {}
for k in first.keys() & last.keys():
    span.setdefault(kind.get(k, "bare"), []).append(last[k] - first[k])
with open(f"{w}/launch.txt", "a") as f:
    print(f"{n:>5} " + " ".join(
        f"{statistics.median(span[h]) if span.get(h) else 0:9.1f}" for h in ("bare", "early", "here")),
        file=f)
with open(f"{w}/phases.txt", "a") as f:
    for how in ("early", "here"):
        rows = [p for p in ph if p[5] == how]
        cols = [statistics.median(int(p[i]) for p in rows) / 1000 if rows else 0
                for i in (0, 1, 2, 3, 4, 6)]
        print(f"{n:>5} {how:>6} " + " ".join(f"{c:9.2f}" for c in cols) + f" {len(rows):>6}",
              file=f)
PY
    tests/cluster/cluster.sh down >&2
done
echo "cont.: the plugin as installed (early=no); early: with early=yes (prep: per-node prepare as"
echo "installed; tear: teardown; join: per task)"
echo "nodes   bare ms  cont. ms  ratio  early ms  ratio  prep med  prep max  tear med  tear max  join us"
cat "$W/table.txt"
echo "prepare's phases, medians in ms (plan: policy, image header, user, host; fork: of slurmstepd;"
echo "setup: the keeper's fds and credentials; container: namespace, image mount, binds, files;"
echo "waited: how long user_init waited for it; early: started at init_post_opt, here: in user_init)"
echo "nodes  start     total      plan      fork     setup container    waited  count"
cat "$W/phases.txt"
echo "the nodes' side of a step, median ms from the first node's launch request to the last"
echo "node's task start (slurmd's logs): bare, container started early, built in user_init"
echo "nodes      bare     early      here"
cat "$W/launch.txt"
