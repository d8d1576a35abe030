#!/usr/bin/env bash
# Batch-step benchmark (issue 14): what the batch script in the image costs on the node.
#
#   bench/batch.sh [JOBS]        (as root; default 20 jobs of each kind, interleaved)
#
# Submits JOBS pairs of one-node batch jobs whose script runs `srun -n1 /bin/true`: one with
# the script in the image (`--container=img.sif`, the default; the host's Slurm client bound
# in), one with `--container-batch=host` (the script on the node, only its step in the image).
# From slurmd's log (SlurmdDebug=verbose) it prints the plugin's per-node prepare time of the
# batch step (the extra ~20 binds of the client) against that of an ordinary step, medians,
# and the wall time from the first submission until the queue is empty. Uses the 4-node test
# cluster under its own names (netns slipa-*, 10.77.6.0/24).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
JOBS=${1:-20}
[ "$(id -u)" -eq 0 ] || { echo "bench/batch.sh: run as root" >&2; exit 1; }
command -v busybox >/dev/null || { echo "bench/batch.sh: busybox not found (busybox-static)" >&2; exit 1; }
export SLIPWAY_CLUSTER_DIR=/tmp/slipway-bench-batch SLIPWAY_CLUSTER_NAME=slipa \
    SLIPWAY_CLUSTER_BRIDGE=slipabr0 SLIPWAY_CLUSTER_NET=10.77.6 \
    SLIPWAY_CLUSTER_SLURMD_DEBUG=verbose
. bench/slurm-fixture.sh /var/lib/slipway-bench-batch
# The script needs a shell in the image; the client needs the static slipway-hostexec.
cp "$(command -v busybox)" "$W/tree/bin/sh"
"$SLIPWAY" build -q --force "$W/img.sif" "$W/tree"
chmod 644 "$W/img.sif"
cargo rustc --quiet --release -p slipway-hostexec --bin slipway-hostexec \
    --target-dir target/static -- -C target-feature=+crt-static
install -m 755 target/static/release/slipway-hostexec "$W/slipway-hostexec"
printf '[slurm]\nhostexec = "%s/slipway-hostexec"\n' "$W" >>"$W/policy.toml"
tests/cluster/cluster.sh down >/dev/null 2>&1 || true
SLIPWAY_SPANK_PLUGIN=$SO SLIPWAY_SPANK_ARGS="policy=$W/policy.toml" tests/cluster/cluster.sh up 4 >&2
eval "$(tests/cluster/cluster.sh env)"
WORK=$SLIPWAY_CLUSTER_DIR/work
install -d -o "$USER_" "$WORK"
cd "$WORK"
printf '#!/bin/sh\nsrun -n1 /bin/true\n' >job.sh
chown "$USER_" job.sh
sub() { runuser -u "$USER_" -- env SLURM_CONF="$SLURM_CONF" sbatch -N1 -o %j.out "$@" job.sh >/dev/null; }
t0=$(date +%s%N)
for ((i = 0; i < JOBS; i++)); do
    sub --container="$W/img.sif"
    sub --container="$W/img.sif" --container-batch=host
done
while [ -n "$(squeue -h -o %i)" ]; do sleep 0.2; done
t1=$(date +%s%N)
cat "$SLIPWAY_CLUSTER_DIR"/nodes/node*/slurmd.log >"$W/logs.txt"
# A job that printed anything failed somewhere: show the first, and stop.
for f in *.out; do
    if [ -s "$f" ]; then echo "bench/batch.sh: job ${f%.out} printed:" >&2; cat "$f" >&2; exit 1; fi
done
python3 - "$W" "$JOBS" $(((t1 - t0) / 1000000)) <<'EOF'
import re, statistics, sys
w, jobs, wall = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
logs = open(f"{w}/logs.txt").read()
batch, step = [], []
pat = r"slipway-timing: job \d+ step (\d+) prepare (\d+) us \(plan (\d+) us, keeper (\d+) us"
for s, us, plan, keeper in re.findall(pat, logs):
    (batch if int(s) == 0xFFFFFFFB else step).append((int(us) / 1000, int(plan) / 1000, int(keeper) / 1000))
def show(what, xs):
    med = lambda i: statistics.median(x[i] for x in xs)
    print(f"  prepare, {what}: median {med(0):.1f} ms (plan {med(1):.1f}, keeper {med(2):.1f}), "
          f"max {max(x[0] for x in xs):.1f} ms ({len(xs)})")
where = re.findall(r"slipway: job \d+ batch script (in the image|on the node)", logs)
print(f"{jobs} one-node jobs of each kind ({len(where)} batch steps logged: "
      f"{where.count('in the image')} in the image, {where.count('on the node')} on the node)")
if batch and step:
    show("batch step in the image (with the host's Slurm client)", batch)
    show("ordinary step (srun -n1)", step)
print(f"  all {2 * jobs} jobs, submission to empty queue: {wall / 1000:.1f} s")
EOF
