#!/usr/bin/env bash
# Environment benchmark: what evaluating an image's environment scripts costs a launch.
#
#   bench/env.sh [RUNS]            (as root; builds slipway --release first)
#
# Directory images of a static busybox and the static probe, interleaved (bench/interleave.py):
#   none       no /.singularity.d/env at all
#   plain      Apptainer-style exports only (the Rust evaluator: no shell)
#   conda      a realistic %environment (conda-style activation with a function, `if`
#              blocks, `. file`, `$(...)`): the image's own /bin/sh evaluates it
# and, when ch-run is installed, Charliecloud's ch-run on the conda image (which runs no
# environment script at all: the reference for "a launch").
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=$PWD/bench
RUNS=${1:-200}
[ "$(id -u)" -eq 0 ] || { echo "bench/env.sh: run as root" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "bench/env.sh: needs a static /bin/busybox (busybox-static)" >&2; exit 1; }
cargo build --release -p slipway >&2
SLIPWAY=$PWD/target/release/slipway
W=$(mktemp -d /var/lib/slipway-bench-env.XXXXXX)
chmod 0755 "$W"
trap 'rm -rf "$W"' EXIT
gcc -static -O2 -o "$W/probe" tests/probe/probe.c
for img in none plain conda; do
  d=$W/$img
  mkdir -p "$d"/{bin,dev,proc,sys,tmp,etc,home,mnt,var/tmp,opt/conda/etc/profile.d}
  cp /bin/busybox "$d/bin/busybox"
  for a in sh echo env; do ln -s busybox "$d/bin/$a"; done
  cp "$W/probe" "$d/bin/probe"
  echo 'root:x:0:0:root:/root:/bin/sh' > "$d/etc/passwd"
  echo 'root:x:0:' > "$d/etc/group"
  touch "$d/etc/hosts" "$d/etc/resolv.conf"
done
mkdir -p "$W/plain/.singularity.d/env" "$W/conda/.singularity.d/env"
cat > "$W/plain/.singularity.d/env/90-environment.sh" <<'SH'
export PATH="/opt/app/bin:$PATH"
export LD_LIBRARY_PATH="/opt/app/lib:${LD_LIBRARY_PATH:-}"
export APP_HOME=/opt/app
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
SH
cat > "$W/conda/opt/conda/etc/profile.d/conda.sh" <<'SH'
conda() {
  case "$1" in
    activate)
      CONDA_PREFIX="/opt/conda/envs/${2:-base}"
      [ -d "$CONDA_PREFIX" ] || CONDA_PREFIX=/opt/conda
      export CONDA_PREFIX CONDA_DEFAULT_ENV="${2:-base}" CONDA_SHLVL=1
      PATH="$CONDA_PREFIX/bin:$PATH"; export PATH ;;
  esac
}
SH
cat > "$W/conda/.singularity.d/env/90-environment.sh" <<'SH'
. /opt/conda/etc/profile.d/conda.sh
conda activate base
if [ -d /opt/app ]; then export APP_HOME=/opt/app; else export APP_HOME=/usr; fi
export BUILD_DATE="$(echo 2026-12-06)"
[ -n "${OMP_NUM_THREADS:-}" ] || export OMP_NUM_THREADS=1
SH
chmod -R a+rX "$W"
export USER=${USER:-root}
cd /
cmds=("none=$SLIPWAY exec $W/none /bin/probe"
      "plain=$SLIPWAY exec $W/plain /bin/probe"
      "conda=$SLIPWAY exec $W/conda /bin/probe")
if command -v ch-run >/dev/null; then
  cmds+=("ch-run conda=ch-run $W/conda -- /bin/probe")
fi
python3 "$BENCH/interleave.py" --warmup 20 --runs "$RUNS" --json "$W/results.json" --log "$W/main.log" \
  "${cmds[@]}" || { echo "bench/env.sh: a command failed:" >&2; tail -5 "$W/main.log" >&2; exit 1; }
python3 - "$W/results.json" <<'PY'
import json, sys
med = {x["command"]: x["median"] * 1000 for x in json.load(open(sys.argv[1]))["results"]}
for k, v in med.items():
    print(f"{k:16} {v:8.3f} ms")
print(f"plain exports (Rust evaluator) add {med['plain'] - med['none']:.3f} ms; "
      f"a conda-style %environment (the image's sh) adds {med['conda'] - med['none']:.3f} ms")
if "ch-run conda" in med:
    print(f"slipway conda / ch-run conda: {med['conda'] / med['ch-run conda']:.2f}")
PY
