#!/usr/bin/env bash
# PBS task launch benchmark: what the slipway hook and `slipway pbs launch` add to a TM task
# that joins its job's existing per-node container, against a bare exec of the same task.
#
#   bench/pbs.sh [RUNS]            (as root; builds slipway --release first)
#
# Interleaved (bench/interleave.py), all as the user `sliptest` through setpriv:
#   bare task                  setpriv ... /bin/true (the image's busybox true, run bare)
#   slipway pbs launch (join)  setpriv ... slipway pbs launch --job J ... -- /bin/true
#   hook, no container         python3 -I + the hook on a job without -l container (what
#                              pbs_python costs any site with a launch hook)
#   hook, container            the same for a job with -l container (the wrapping decided)
# pbs_python is PBS's embedded interpreter; `python3 -I` with the stand-in pbs module
# (pbs-hook/tests/mom_exec.py run-hook) stands for it.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=$PWD/bench
REPO=$PWD
RUNS=${1:-200}
[ "$(id -u)" -eq 0 ] || { echo "bench/pbs.sh: run as root" >&2; exit 1; }
FIX=../shared/fixtures/apptainer/busybox_amd64.sif
[ -f "$FIX" ] || { echo "bench/pbs.sh: $FIX missing" >&2; exit 1; }
id sliptest >/dev/null 2>&1 || useradd -m sliptest
U=$(id -u sliptest); G=$(id -g sliptest)

cargo build --release -p slipway >&2
SLIPWAY=$PWD/target/release/slipway
W=$(mktemp -d /var/lib/slipway-bench-pbs.XXXXXX)
chmod 0755 "$W"
JOB=bench.$$
trap '"$SLIPWAY" pbs end --job "$JOB" || true; rm -rf "$W"' EXIT
cp "$FIX" "$W/img.sif"; chmod 0644 "$W/img.sif"
printf '[images]\ntrusted_dirs = ["%s"]\n' "$W" > "$W/policy.toml"
"$SLIPWAY" pbs begin --job "$JOB" --user sliptest --image "$W/img.sif" --policy "$W/policy.toml"
busybox_true=$(command -v true)
for c in yes no; do
  res='{"container": "'"$W"'/img.sif"}'; [ $c = no ] && res='{}'
  cat > "$W/event-$c.json" <<JSON
{"event": "execjob_launch", "job": {"id": "$JOB", "euser": "sliptest", "Resource_List": $res,
 "Variable_List": {"PBS_O_WORKDIR": "$W"}}, "progname": "/bin/true", "argv": ["true"],
 "env": {"PATH": "/usr/bin:/bin"}, "config": {"slipway": "$SLIPWAY", "policy": "$W/policy.toml"}}
JSON
done
AS_USER="setpriv --reuid=$U --regid=$G --clear-groups"
LAUNCH="$SLIPWAY pbs launch --job $JOB --image $W/img.sif --policy $W/policy.toml -- /bin/true"
# The first launch creates the job's container; every measured one joins it.
$AS_USER $LAUNCH 2>/dev/null
cd /
python3 "$BENCH/interleave.py" --warmup 10 --runs "$RUNS" --json "$W/results.json" --log "$W/main.log" \
  "bare task=$AS_USER $busybox_true" \
  "slipway pbs launch (join)=$AS_USER $LAUNCH" \
  "hook, no container=/usr/bin/python3 -I $REPO/pbs-hook/tests/mom_exec.py run-hook $W/event-no.json" \
  "hook, container=/usr/bin/python3 -I $REPO/pbs-hook/tests/mom_exec.py run-hook $W/event-yes.json" \
  || { echo "bench/pbs.sh: a command failed:" >&2; tail -5 "$W/main.log" >&2; exit 1; }
python3 - "$W/results.json" <<'PY'
import json, sys
med = {x["command"]: x["median"] * 1000 for x in json.load(open(sys.argv[1]))["results"]}
for k, v in med.items():
    print(f"{k:28} {v:8.3f} ms")
join = med["slipway pbs launch (join)"] - med["bare task"]
hook = med["hook, container"] - med["hook, no container"]
print(f"slipway pbs launch adds {join:.3f} ms to a task joining its container (goal <= 2 ms)")
print(f"the hook's wrapping adds {hook:.3f} ms to the launch hook's run; "
      f"pbs_python itself (python3 -I) costs {med['hook, no container']:.1f} ms with or without it")
PY
