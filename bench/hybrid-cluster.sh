#!/usr/bin/env bash
# Hybrid MPI on the local test cluster: `srun --mpi=pmix -N2 -n4` of mpi_hello (Allreduce),
# bare (the host's build) and as `slipway exec mpi.sif` ranks (unprivileged, one shared
# container per node), through squashfuse and from the image unpacked once (`--unpack`; the
# rig's nodes share one /var/tmp, so it is unpacked once for both), interleaved; median wall
# times and the ratios (goal <= 1.10).
#
#   bench/hybrid-cluster.sh [RUNS]      (as root; default 20 runs of each)
#
# Uses its own cluster names (netns sliph-*, 10.77.4.0/24) and no SPANK plugin.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${1:-20}
[ "$(id -u)" -eq 0 ] || { echo "bench/hybrid-cluster.sh: run as root" >&2; exit 1; }
for p in mpicc srun python3 mksquashfs squashfuse_ll; do
    command -v "$p" >/dev/null || { echo "bench/hybrid-cluster.sh: $p not found" >&2; exit 1; }
done
export SLIPWAY_CLUSTER_DIR=/tmp/slipway-bench-hybrid SLIPWAY_CLUSTER_NAME=sliph \
    SLIPWAY_CLUSTER_BRIDGE=sliphbr0 SLIPWAY_CLUSTER_NET=10.77.4
USER_=${SLIPWAY_CLUSTER_USER:-slipuser}
chmod 0666 /dev/fuse
cargo build --quiet --release -p slipway >&2
SLIPWAY=$PWD/target/release/slipway
W=/var/lib/slipway-bench-hybrid
rm -rf "$W"
install -d -m 755 "$W"
mpicc -O2 -o "$W/mpi_hello" tests/cluster/mpi_hello.c
SLIPWAY=$SLIPWAY tests/cluster/mpi-image.sh "$W/mpi.sif" >&2
chmod -R a+rX "$W"
# The unpacked copy in the bench's directory (removed with it), not the user's /var/tmp.
install -d -m 1777 "$W/tmp"
printf '[images]\nunpack_dir = "%s/tmp/unpack-%%u"\n' "$W" > "$W/policy.toml"
cleanup() { "$ROOT/tests/cluster/cluster.sh" down >/dev/null 2>&1 || true; rm -rf "$W"; }
trap cleanup EXIT
tests/cluster/cluster.sh down >/dev/null 2>&1 || true
tests/cluster/cluster.sh up 2 >&2
eval "$(tests/cluster/cluster.sh env)"
WORK=$SLIPWAY_CLUSTER_DIR/work
install -d -o "$USER_" "$WORK"
cd "$WORK"
RUN="runuser -u $USER_ -- env SLURM_CONF=$SLURM_CONF srun --mpi=pmix -N2 -n4"
$RUN "$W/mpi_hello" >/dev/null
$RUN "$SLIPWAY" exec "$W/mpi.sif" /usr/local/bin/mpi_hello >/dev/null
# The first --unpack launch on each node unpacks the image (outside the timed runs).
$RUN "$SLIPWAY" exec --policy "$W/policy.toml" --unpack "$W/mpi.sif" /usr/local/bin/mpi_hello >/dev/null
# mpirun in an allocation (Open MPI's Slurm launcher starts orted through srun; orted starts
# the ranks, 4 per node): the issue's `mpirun -np 8`.
MPIRUN="runuser -u $USER_ -- env SLURM_CONF=$SLURM_CONF salloc -Q -N2 -n8 --overcommit mpirun -np 8 --oversubscribe --mca btl self,vader,tcp"
$MPIRUN "$W/mpi_hello" >/dev/null
# Before each run (untimed): until the previous run's job has left the queue (a step whose
# processes outlive its tasks keeps its job completing, and the next allocation would wait).
SETTLE="until [ -z \"\$(env SLURM_CONF=$SLURM_CONF squeue -h)\" ]; do sleep 0.05; done"
python3 "$ROOT/bench/interleave.py" --warmup 2 --runs "$RUNS" --json "$W/results.json" --log "$W/main.log" \
  --before "$SETTLE" \
  "bare=$RUN $W/mpi_hello" \
  "slipway exec=$RUN $SLIPWAY exec $W/mpi.sif /usr/local/bin/mpi_hello" \
  "slipway exec --unpack=$RUN $SLIPWAY exec --policy $W/policy.toml --unpack $W/mpi.sif /usr/local/bin/mpi_hello" \
  "mpirun bare=$MPIRUN $W/mpi_hello" \
  "mpirun slipway exec=$MPIRUN $SLIPWAY exec $W/mpi.sif /usr/local/bin/mpi_hello" \
  "mpirun slipway exec --unpack=$MPIRUN $SLIPWAY exec --policy $W/policy.toml --unpack $W/mpi.sif /usr/local/bin/mpi_hello" \
  || { echo "bench/hybrid-cluster.sh: a command failed:" >&2; tail -5 "$W/main.log" >&2; exit 1; }
python3 - "$W/results.json" <<'PY'
import json, sys
med = {x["command"]: x["median"] * 1000 for x in json.load(open(sys.argv[1]))["results"]}
for k, v in med.items():
    print(f"{k:30} {v:9.1f} ms")
print(f"srun --mpi=pmix -N2 -n4: slipway exec / bare = {med['slipway exec'] / med['bare']:.2f} (goal <= 1.10)")
print(f"srun --mpi=pmix -N2 -n4: slipway exec --unpack / bare = {med['slipway exec --unpack'] / med['bare']:.2f} (goal <= 1.10)")
print(f"mpirun -np 8 (2 nodes): slipway exec / bare = {med['mpirun slipway exec'] / med['mpirun bare']:.2f} (goal <= 1.10)")
print(f"mpirun -np 8 (2 nodes): slipway exec --unpack / bare = {med['mpirun slipway exec --unpack'] / med['mpirun bare']:.2f} (goal <= 1.10)")
PY
