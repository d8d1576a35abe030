#!/usr/bin/env bash
# Environment benchmark: what evaluating an image's environment scripts costs a launch.
#
#   bench/env.sh [RUNS]            (as root; builds slipway --release first)
#
# Images like a Debian-based one: /bin/sh is the host's dash with its loader and libc, busybox
# for the other commands, and the probe as the application, dynamic as applications in images
# are (it loads the image's libc, as the image's shell does: read from a fresh squashfs mount,
# libc is most of what either costs); interleaved (bench/interleave.py):
#   none       an empty /.singularity.d/env (nothing to evaluate: the reference)
#   plain      Apptainer-style exports only (the Rust evaluator: no shell)
#   stock      the environment files of an image Apptainer's predecessor built (taken from
#              ../shared/fixtures/apptainer/busybox_amd64.sif at run time: recognised stock
#              files, no shell); goal: within 5% of `none`
#   conda      a realistic %environment (conda-style activation with a function, `if`
#              blocks, `. file`, `$(...)`): the image's own /bin/sh evaluates it
# each as a directory and, for none and conda, as the SIF users run (`slipway build`; as root
# the kernel's squashfs, unprivileged squashfuse), against Charliecloud's ch-run on the same
# conda tree (a directory, and a squashfs of it). ch-run evaluates no environment script at
# all; goal: slipway's conda launch faster than ch-run's on the same image.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=$PWD/bench
RUNS=${1:-200}
[ "$(id -u)" -eq 0 ] || { echo "bench/env.sh: run as root" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "bench/env.sh: needs a static /bin/busybox (busybox-static)" >&2; exit 1; }
for p in ch-run mksquashfs unsquashfs setpriv gcc python3; do
  command -v "$p" >/dev/null || { echo "bench/env.sh: $p not found (apt-get install charliecloud squashfs-tools)" >&2; exit 1; }
done
FIXTURE=$PWD/../shared/fixtures/apptainer/busybox_amd64.sif
[ -f "$FIXTURE" ] || { echo "bench/env.sh: $FIXTURE is missing (the stock row needs it)" >&2; exit 1; }
id sliptest >/dev/null 2>&1 || useradd -m sliptest
U=$(id -u sliptest); G=$(id -g sliptest)
cargo build --release -p slipway >&2
SLIPWAY=$PWD/target/release/slipway
W=$(mktemp -d /var/lib/slipway-bench-env.XXXXXX)
chmod 0755 "$W"
trap 'rm -rf "$W"' EXIT
gcc -O2 -o "$W/probe" tests/probe/probe.c
for img in none plain stock conda; do
  d=$W/$img
  mkdir -p "$d"/{bin,dev,proc,sys,tmp,etc,home,mnt,var/tmp,opt/conda/etc/profile.d}
  cp /bin/busybox "$d/bin/busybox"
  for a in echo env; do ln -s busybox "$d/bin/$a"; done
  cp /bin/dash "$d/bin/sh"
  for lib in $(ldd /bin/dash | grep -o '/[^ ]*'); do
    mkdir -p "$d$(dirname "$lib")"
    cp -L "$lib" "$d$lib"
  done
  cp "$W/probe" "$d/bin/probe"
  echo 'root:x:0:0:root:/root:/bin/sh' > "$d/etc/passwd"
  echo 'root:x:0:' > "$d/etc/group"
  touch "$d/etc/hosts" "$d/etc/resolv.conf"
done
mkdir -p "$W/none/.singularity.d/env" "$W/plain/.singularity.d/env" "$W/conda/.singularity.d/env"
# The stock files, as Apptainer's predecessor wrote them into the fixture.
OFF=$("$SLIPWAY" inspect --json "$FIXTURE" | python3 -c 'import json,sys; print(json.load(sys.stdin)["image"]["squashfs"]["offset"])')
unsquashfs -q -n -o "$OFF" -d "$W/fixture" "$FIXTURE" .singularity.d/env >/dev/null
cp -r "$W/fixture/.singularity.d" "$W/stock/"
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
for img in none conda; do
  "$SLIPWAY" build -q "$W/$img.sif" "$W/$img"
done
mksquashfs "$W/conda" "$W/conda.sqfs" -quiet -noappend -all-root -no-progress >/dev/null
printf '[images]\nkernel_mount = "trusted"\ntrusted_dirs = ["%s"]\n' "$W" > "$W/trusted.toml"
chmod -R a+rX "$W"
AS_USER="setpriv --reuid=$U --regid=$G --clear-groups"
# ch-run insists on $USER.
export USER=sliptest HOME=/home/sliptest
cd /
K="--policy $W/trusted.toml"
# Two groups, each interleaved on its own: a launch that mounts a SIF leaves its teardown
# (squashfuse's exit, the loop device's release) running behind it, which would fall on
# whichever directory launch comes next.
dirs=("none=$SLIPWAY exec $W/none /bin/probe"
      "plain=$SLIPWAY exec $W/plain /bin/probe"
      "stock=$SLIPWAY exec $W/stock /bin/probe"
      "conda=$SLIPWAY exec $W/conda /bin/probe"
      "ch-run conda=ch-run $W/conda -- /bin/probe")
sifs=("none sif=$SLIPWAY exec $K $W/none.sif /bin/probe"
      "conda sif=$SLIPWAY exec $K $W/conda.sif /bin/probe"
      "ch-run conda squashfs=ch-run $W/conda.sqfs -- /bin/probe"
      "none sif (user)=$AS_USER $SLIPWAY exec $W/none.sif /bin/probe"
      "conda sif (user)=$AS_USER $SLIPWAY exec $W/conda.sif /bin/probe"
      "ch-run conda squashfs (user)=$AS_USER ch-run $W/conda.sqfs -- /bin/probe")
for group in dirs sifs; do
  declare -n list=$group
  python3 "$BENCH/interleave.py" --warmup 20 --runs "$RUNS" --json "$W/$group.json" --log "$W/main.log" \
    "${list[@]}" || { echo "bench/env.sh: a command failed:" >&2; tail -5 "$W/main.log" >&2; exit 1; }
done
python3 - "$W/dirs.json" "$W/sifs.json" <<'PY'
import json, sys
med = {x["command"]: x["median"] * 1000
       for f in sys.argv[1:] for x in json.load(open(f))["results"]}
for k, v in med.items():
    print(f"{k:30} {v:8.3f} ms")
print(f"plain exports (Rust evaluator) add {med['plain'] - med['none']:.3f} ms; "
      f"a conda-style %environment (the image's sh) adds {med['conda'] - med['none']:.3f} ms")
print(f"stock Apptainer files / none: {med['stock'] / med['none']:.3f} (goal <= 1.05)")
for a, b in [("conda", "ch-run conda"), ("conda sif", "ch-run conda squashfs"),
             ("conda sif (user)", "ch-run conda squashfs (user)")]:
    print(f"slipway {a} / {b}: {med[a] / med[b]:.2f} (goal < 1)")
PY
