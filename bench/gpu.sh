#!/usr/bin/env bash
# GPU launch benchmark: what `--nv` adds to `slipway exec`.
#
#   bench/gpu.sh [RUNS]            (as root; builds slipway --release first)
#
# 1. The resolution alone, in-process (runtime/examples/devices_gather.rs): ld.so.cache parse,
#    driver list, device and driver-information scan, GPU selection; median of 2000.
# 2. Whole launches, interleaved (bench/interleave.py): a bare static probe (the reference),
#    `slipway exec` of a directory image, and the same with `--nv` (4 GPUs and the driver's
#    files bound: the resolution plus a bind per device node and per library).
# The driver is Debian's NVIDIA 535 user space (libcuda1, libnvidia-ml1, nvidia-smi); the GPUs
# are stand-in device nodes (mknod, major 195) named by the benchmark's policy, as in
# tests/tests/gpu.rs. Needs: python3, gcc (static glibc), libcuda1.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=$PWD/bench
RUNS=${1:-300}
[ "$(id -u)" -eq 0 ] || { echo "bench/gpu.sh: run as root" >&2; exit 1; }
[ -e /usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.1 ] ||
  { echo "bench/gpu.sh: libcuda1 is not installed (tests/setup.sh installs it)" >&2; exit 1; }

cargo build --release -p slipway >&2
cargo build --release -p slipway-runtime --example devices_gather >&2
SLIPWAY=$PWD/target/release/slipway

W=$(mktemp -d /var/lib/slipway-bench-gpu.XXXXXX)
chmod 0755 "$W"
trap 'rm -rf "$W"' EXIT
gcc -static -O2 -o "$W/probe" tests/probe/probe.c
IMG=$W/image
mkdir -p "$IMG"/{bin,dev,proc,sys,tmp,etc,var/tmp}
cp "$W/probe" "$IMG/bin/probe"
echo 'root:x:0:0:root:/root:/bin/sh' > "$IMG/etc/passwd"
echo 'root:x:0:' > "$IMG/etc/group"
chmod -R a+rX "$IMG"
mkdir -p "$W/dev" "$W/gpus"
for m in 0 1 2 3; do
  mknod "$W/dev/nvidia$m" c 195 $m
  b=$(printf '0000:%02x:00.0' $((0x1a + m * 0x20)))
  mkdir -p "$W/gpus/$b"
  printf 'Model: \t\t NVIDIA H100\nBus Location: \t %s\nDevice Minor: \t %d\n' "$b" $m > "$W/gpus/$b/information"
done
mknod "$W/dev/nvidiactl" c 195 255
printf '[gpu]\ndevice_dir = "%s/dev"\ndriver_info = "%s/gpus"\n' "$W" "$W" > "$W/policy.toml"
chmod 0644 "$W/policy.toml"

echo "== resolution (in-process, release build)"
target/release/examples/devices_gather "$W/policy.toml" 2000 nv
target/release/examples/devices_gather "$W/policy.toml" 2000 nonv

echo "== launches (median of $RUNS, interleaved)"
cd /
python3 "$BENCH/interleave.py" --warmup 20 --runs "$RUNS" --json "$W/results.json" --log "$W/main.log" \
  "bare probe=$W/probe" \
  "slipway exec=$SLIPWAY exec --policy $W/policy.toml $IMG /bin/probe" \
  "slipway exec --nv=$SLIPWAY exec --nv --policy $W/policy.toml $IMG /bin/probe" \
  "slipway explain=$SLIPWAY explain --policy $W/policy.toml $IMG /bin/probe" \
  "slipway explain --nv=$SLIPWAY explain --nv --policy $W/policy.toml $IMG /bin/probe" \
  || { echo "bench/gpu.sh: a command failed:" >&2; tail -5 "$W/main.log" >&2; exit 1; }
python3 - "$W/results.json" <<'PY'
import json, sys
med = {x["command"]: x["median"] * 1000 for x in json.load(open(sys.argv[1]))["results"]}
for k, v in med.items():
    print(f"{k:24} {v:8.3f} ms")
print(f"--nv adds {med['slipway exec --nv'] - med['slipway exec']:.3f} ms to a launch "
      f"({med['slipway exec --nv'] / med['slipway exec']:.2f}x; binds included), "
      f"{med['slipway explain --nv'] - med['slipway explain']:.3f} ms to planning alone")
print(f"slipway exec / bare: {med['slipway exec'] / med['bare probe']:.2f}; "
      f"slipway exec --nv / bare: {med['slipway exec --nv'] / med['bare probe']:.2f}")
PY
