#!/usr/bin/env bash
# Dense node (issue 16): N launches of one image started at once on one node, the way a job
# array of N single-task jobs starts, against the kernel floor measured in the same run.
#
#   bench/dense.sh [PROCS] [ROUNDS]      (as root; default 64 processes, 10 rounds)
#
# Rows (each a batch of PROCS simultaneous processes; bench/dense.py times the batch):
#   bare          the static probe, no container
#   kernel floor  bench/mount_floor.c: a mount namespace, the image's squashfs attached to a
#                 fresh loop device and mounted, chroot, exec the probe (no policy, no /dev,
#                 /proc or binds: the least a runtime that mounts the image with the kernel does)
#   slipway       `slipway exec IMG.sif /bin/probe` as root (the kernel's squashfs: what the
#                 SPANK plugin does per node), the whole launch with policy, plan, binds
#   slipway user  the same unprivileged (squashfuse, one per launch), for reference
#   slipway user --unpack  unprivileged from the copy unpacked once (made in the warm-up)
# The goal (issue 16): slipway <= 1.2x the kernel floor.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=$PWD/bench
PROCS=${1:-64}
ROUNDS=${2:-10}
[ "$(id -u)" -eq 0 ] || { echo "bench/dense.sh: run as root" >&2; exit 1; }
for p in gcc mksquashfs setpriv python3; do
  command -v "$p" >/dev/null || { echo "bench/dense.sh: $p not found" >&2; exit 1; }
done
cargo build --release -p slipway >&2
SLIPWAY=$PWD/target/release/slipway
id sliptest >/dev/null 2>&1 || useradd -m sliptest
U=$(id -u sliptest); G=$(id -g sliptest)
W=$(mktemp -d /var/lib/slipway-bench-dense.XXXXXX)
chmod 0755 "$W"
trap 'rm -rf "$W"' EXIT
gcc -static -O2 -o "$W/probe" tests/probe/probe.c
gcc -O2 -Wall -o "$W/mount_floor" bench/mount_floor.c
IMG=$W/image
mkdir -p "$IMG"/{bin,dev,proc,sys,tmp,home,etc,var/tmp,mnt}
cp "$W/probe" "$IMG/bin/probe"
echo 'root:x:0:0:root:/root:/bin/sh' > "$IMG/etc/passwd"
echo 'root:x:0:' > "$IMG/etc/group"
touch "$IMG/etc/hosts" "$IMG/etc/resolv.conf"
chmod -R a+rX "$IMG"
mksquashfs "$IMG" "$W/img.sqfs" -quiet -noappend -all-root -no-progress >/dev/null
"$SLIPWAY" build -q "$W/img.sif" "$IMG"
chmod 0644 "$W"/img.*
mkdir "$W/mnt"
printf '[images]\nkernel_mount = "trusted"\ntrusted_dirs = ["%s"]\n' "$W" > "$W/trusted.toml"
install -d -m 1777 "$W/tmp"
printf '[images]\nunpack_dir = "%s/tmp/u-%%u"\n' "$W" > "$W/unpack.toml"
loops_before=$(losetup -a | wc -l)
cd /
python3 "$BENCH/dense.py" --procs "$PROCS" --rounds "$ROUNDS" --json "$W/results.json" --log "$W/main.log" \
  "bare=$W/probe" \
  "kernel floor=$W/mount_floor $W/img.sqfs $W/mnt /bin/probe" \
  "slipway=$SLIPWAY exec --policy $W/trusted.toml $W/img.sif /bin/probe" \
  "slipway user=$(command -v setpriv) --reuid=$U --regid=$G --clear-groups $SLIPWAY exec $W/img.sif /bin/probe" \
  "slipway user --unpack=$(command -v setpriv) --reuid=$U --regid=$G --clear-groups $SLIPWAY exec --policy $W/unpack.toml --unpack $W/img.sif /bin/probe" \
  || { echo "bench/dense.sh: a command failed:" >&2; grep -h -i error "$W/main.log" | sort | uniq -c | head >&2; exit 1; }
python3 - "$W/results.json" "$PROCS" <<'PY'
import json, sys
med = {x["command"]: x["median"] * 1000 for x in json.load(open(sys.argv[1]))["results"]}
n = int(sys.argv[2])
for k, v in med.items():
    print(f"{k:14} {v:9.1f} ms for {n} at once ({v / n:6.2f} ms each)")
print(f"slipway / kernel floor: {med['slipway'] / med['kernel floor']:.2f} (goal <= 1.2)")
print(f"slipway user / kernel floor: {med['slipway user'] / med['kernel floor']:.2f}")
print(f"slipway user --unpack / kernel floor: {med['slipway user --unpack'] / med['kernel floor']:.2f}")
PY
sleep 1
loops_after=$(losetup -a | wc -l)
[ "$loops_after" -le "$loops_before" ] || echo "bench/dense.sh: $((loops_after - loops_before)) loop devices left attached" >&2
