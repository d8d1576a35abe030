#!/usr/bin/env bash
# Hybrid-model benchmark (`mpirun slipway exec`): what a rank pays to start, unprivileged,
# when it joins its job's container on the node, against a bare start and against a rank that
# builds a container of its own (--no-share, what each rank pays without sharing).
#
#   bench/hybrid.sh [RUNS]          (as root; builds slipway --release first)
#
# A rank is `slipway exec IMG /bin/true` as the user `sliptest` with PMIX_NAMESPACE set, as
# Open MPI's and Slurm's PMIx give it; one long-running rank holds the job's container. The
# image is a SIF (squashfuse, as unprivileged launches mount it). Interleaved
# (bench/interleave.py); the bare reference is `true` through the same setpriv.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=$PWD/bench
RUNS=${1:-200}
[ "$(id -u)" -eq 0 ] || { echo "bench/hybrid.sh: run as root" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "bench/hybrid.sh: needs /bin/busybox (busybox-static)" >&2; exit 1; }
id sliptest >/dev/null 2>&1 || useradd -m sliptest
U=$(id -u sliptest); G=$(id -g sliptest)
chmod 0666 /dev/fuse
cargo build --release -p slipway >&2
SLIPWAY=$PWD/target/release/slipway
W=$(mktemp -d /var/lib/slipway-bench-hybrid.XXXXXX)
chmod 0755 "$W"
JOB=bench.$$
HOLDER=
trap '[ -n "$HOLDER" ] && kill "$HOLDER" 2>/dev/null; rm -rf "$W"' EXIT
mkdir -p "$W/tree/bin"
cp /bin/busybox "$W/tree/bin/busybox"
for a in sh true sleep; do ln -s busybox "$W/tree/bin/$a"; done
"$SLIPWAY" build -q "$W/img.sif" "$W/tree"
chmod -R a+rX "$W"
AS_USER="setpriv --reuid=$U --regid=$G --clear-groups"
cd /
PMIX_NAMESPACE=$JOB $AS_USER "$SLIPWAY" exec "$W/img.sif" /bin/sleep 600 &
HOLDER=$!
sleep 1
export PMIX_NAMESPACE=$JOB
python3 "$BENCH/interleave.py" --warmup 10 --runs "$RUNS" --json "$W/results.json" --log "$W/main.log" \
  "bare=$AS_USER /bin/true" \
  "rank joins=$AS_USER $SLIPWAY exec $W/img.sif /bin/true" \
  "rank alone (--no-share)=$AS_USER $SLIPWAY exec --no-share $W/img.sif /bin/true" \
  || { echo "bench/hybrid.sh: a command failed:" >&2; tail -5 "$W/main.log" >&2; exit 1; }
python3 - "$W/results.json" <<'PY'
import json, sys
med = {x["command"]: x["median"] * 1000 for x in json.load(open(sys.argv[1]))["results"]}
for k, v in med.items():
    print(f"{k:26} {v:8.3f} ms")
print(f"joining the job's container costs a rank {med['rank joins'] - med['bare']:.3f} ms "
      f"(a container of its own: {med['rank alone (--no-share)'] - med['bare']:.3f} ms)")
PY
