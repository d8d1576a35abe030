#!/usr/bin/env bash
# Many steps in one job (issue 16): a batch script (on the node) runs STEPS `srun -N{n}` of a
# trivial static program one after the other, bare, with `--container=img.sif` (the image
# mounted once for the job on each node: the plugin's default `mount_per=job`) and with
# `mount_per=step` (each step mounts it anew), rounds interleaved; the script times its own
# loop, so the scheduler's share is left out. Medians per step and ratios.
#
#   bench/steps.sh [STEPS] [ROUNDS] [NODES]     (as root; default 20 steps, 5 rounds, 4 nodes)
#
# Uses its own cluster names (netns slipm-*, 10.77.12.0/24).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STEPS=${1:-20}
ROUNDS=${2:-5}
NODES=${3:-4}
[ "$(id -u)" -eq 0 ] || { echo "bench/steps.sh: run as root" >&2; exit 1; }
export SLIPWAY_CLUSTER_DIR=/tmp/slipway-bench-steps SLIPWAY_CLUSTER_NAME=slipm \
    SLIPWAY_CLUSTER_BRIDGE=slipmbr0 SLIPWAY_CLUSTER_NET=10.77.12
. bench/slurm-fixture.sh /var/lib/slipway-bench-steps
tests/cluster/cluster.sh down >/dev/null 2>&1 || true
SLIPWAY_SPANK_PLUGIN=$SO SLIPWAY_SPANK_ARGS="policy=$W/policy.toml" \
    tests/cluster/cluster.sh up "$NODES" >&2
eval "$(tests/cluster/cluster.sh env)"
WORK=$SLIPWAY_CLUSTER_DIR/work
install -d -o "$USER_" "$WORK"
cd "$WORK"
# The job: STEPS steps, its own loop timed (us) into its output.
job() {
    local args=$1
    cat <<JOB
#!/bin/sh
t0=\$(date +%s%N)
i=0
while [ \$i -lt $STEPS ]; do srun -N$NODES -n$NODES $args || exit 1; i=\$((i + 1)); done
t1=\$(date +%s%N)
echo \$(((t1 - t0) / 1000))
JOB
}
job "$W/true" >bare.sh
job "--container=$W/img.sif /bin/true" >cont.sh
cp cont.sh step.sh
chown "$USER_" bare.sh cont.sh step.sh
PLUGSTACK=$SLIPWAY_CLUSTER_DIR/etc/plugstack.conf
plugstack() { echo "required $SO policy=$W/policy.toml $1" >"$PLUGSTACK"; }
run() {
    runuser -u "$USER_" -- env SLURM_CONF="$SLURM_CONF" PWD="$WORK" \
        sbatch --wait -N"$NODES" -o "$1.out" "$1.sh" >/dev/null
    tail -n 1 "$1.out"
}
run bare >/dev/null
run cont >/dev/null
: >"$W/runs.txt"
for ((r = 0; r < ROUNDS; r++)); do
    for kind in bare cont step; do
        if [[ $kind == step ]]; then plugstack mount_per=step; else plugstack ""; fi
        echo "$kind $(run $kind)" >>"$W/runs.txt"; tail -n 1 "$W/runs.txt" >&2
    done
done
python3 - "$W/runs.txt" "$STEPS" "$NODES" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    kind, us = line.split()
    runs.setdefault(kind, []).append(int(us) / 1000 / int(sys.argv[2]))
n, nodes = sys.argv[2], sys.argv[3]
print(f"{n} steps of srun -N{nodes} in one job, ms per step, medians of {len(runs['bare'])} rounds")
bare = statistics.median(runs["bare"])
for k, label in (("bare", "bare"), ("cont", "--container (mount_per=job)"),
                 ("step", "--container (mount_per=step)")):
    m = statistics.median(runs[k])
    print(f"{label:30} {m:8.1f}  {m / bare:5.2f}")
PY
