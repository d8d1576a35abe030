#!/usr/bin/env bash
# Launch-time benchmark: median wall time per launch of a static probe, bare and inside
# containers (slipway, Charliecloud's ch-run, bubblewrap), measured in one run with the
# commands interleaved (bench/interleave.py: each round runs every command once, so the drift
# of a shared machine falls on all of them alike).
#
#   bench/exec.sh [RUNS]            (as root; builds slipway --release first)
#
# Unprivileged commands run through `setpriv` as the user `sliptest` (created if missing); a
# bare `setpriv probe` line measures that wrapper, and the ratios are printed both raw and with
# the wrapper's time subtracted. Needs: python3, gcc (static glibc), mksquashfs,
# squashfuse_ll, ch-run, bwrap, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=$PWD/bench
RUNS=${1:-300}
[ "$(id -u)" -eq 0 ] || { echo "bench/exec.sh: run as root" >&2; exit 1; }
for p in gcc mksquashfs squashfuse_ll ch-run bwrap python3 setpriv; do
  command -v "$p" >/dev/null || { echo "bench/exec.sh: $p not found" >&2; exit 1; }
done
id sliptest >/dev/null 2>&1 || useradd -m sliptest
U=$(id -u sliptest); G=$(id -g sliptest)
chmod 0666 /dev/fuse

cargo build --release -p slipway >&2
SLIPWAY=$PWD/target/release/slipway

# Fixtures in a root-owned directory (a trusted dir for the kernel-mount policy).
W=$(mktemp -d /var/lib/slipway-bench.XXXXXX 2>/dev/null || mktemp -d "$PWD/target/bench.XXXXXX")
chmod 0755 "$W"
trap 'rm -rf "$W"' EXIT
gcc -static -O2 -o "$W/probe" tests/probe/probe.c
IMG=$W/image
# What ch-run needs to find in an image (it binds onto these), plus the probe.
mkdir -p "$IMG"/{bin,dev,proc,sys,tmp,home,etc,var/tmp,mnt,.singularity.d/env}
cp "$W/probe" "$IMG/bin/probe"
echo 'root:x:0:0:root:/root:/bin/sh' > "$IMG/etc/passwd"
echo 'root:x:0:' > "$IMG/etc/group"
touch "$IMG/etc/hosts" "$IMG/etc/resolv.conf"
echo 'export PATH="/usr/bin:/bin"' > "$IMG/.singularity.d/env/90-environment.sh"
chmod -R a+rX "$IMG"
mksquashfs "$IMG" "$W/image.sqfs" -quiet -noappend -all-root -no-progress >/dev/null
# The same tree with its data blocks stored uncompressed (enroot's default, `-comp lzo -noD`,
# does the same): both tools then do all their other work and no decompression of the probe.
mksquashfs "$IMG" "$W/image-nod.sqfs" -noD -quiet -noappend -all-root -no-progress >/dev/null
# The SIF as users make it: `slipway build` of the same tree.
"$SLIPWAY" build -q "$W/image.sif" "$IMG"
"$SLIPWAY" explain --json "$W/image.sif" /bin/probe | grep '"format": "sif"' >/dev/null \
  || { echo "bench/exec.sh: the SIF written here does not open as a SIF" >&2; exit 1; }
chmod 0644 "$W"/image.*
printf '[images]\nkernel_mount = "trusted"\ntrusted_dirs = ["%s"]\n' "$W" > "$W/trusted.toml"
printf '[images]\nkernel_mount = "never"\n' > "$W/never.toml"

AS_USER="setpriv --reuid=$U --regid=$G --clear-groups"
# ch-run insists on $USER; set it for the whole run rather than through an `env` wrapper that
# would add an exec to ch-run's rows only.
export USER=sliptest HOME=/home/sliptest
# From `/`, which slipway never binds: with the default policy slipway binds the working
# directory (ch-run and bwrap do not), and a working directory the image lacks costs a tmpfs
# layer (about 1 ms here); from `/` all three do the same work.
cd /
# Outputs go to a file (not /dev/null) so that a failing launch can be shown.
failed() {
  echo "bench/exec.sh: a command failed; its errors:" >&2
  grep -h -E "error|denied" "$W"/*.log | sort | uniq -c >&2
  exit 1
}
python3 "$BENCH/interleave.py" --warmup 20 --runs "$RUNS" --json "$W/results.json" --log "$W/main.log" \
  "bare probe=$W/probe" \
  "bare probe (setpriv)=$AS_USER $W/probe" \
  "slipway dir (unprivileged)=$AS_USER $SLIPWAY exec $IMG /bin/probe" \
  "slipway dir (root)=$SLIPWAY exec $IMG /bin/probe" \
  "slipway SIF kernel mount (root)=$SLIPWAY exec --policy $W/trusted.toml $W/image.sif /bin/probe" \
  "slipway SIF squashfuse (root)=$SLIPWAY exec --policy $W/never.toml $W/image.sif /bin/probe" \
  "slipway SIF squashfuse (unprivileged)=$AS_USER $SLIPWAY exec $W/image.sif /bin/probe" \
  "ch-run dir (unprivileged)=$AS_USER ch-run $IMG -- /bin/probe" \
  "ch-run squashfs (unprivileged)=$AS_USER ch-run $W/image.sqfs -- /bin/probe" \
  "ch-run dir (root)=ch-run $IMG -- /bin/probe" \
  "ch-run squashfs (root)=ch-run $W/image.sqfs -- /bin/probe" \
  "slipway squashfs -noD kernel mount (root)=$SLIPWAY exec --policy $W/trusted.toml $W/image-nod.sqfs /bin/probe" \
  "ch-run squashfs -noD (unprivileged)=$AS_USER ch-run $W/image-nod.sqfs -- /bin/probe" \
  "bwrap dir (unprivileged)=$AS_USER bwrap --ro-bind $IMG / --proc /proc --dev /dev /bin/probe" \
  || failed

# The same SIF while another container of it runs on the node (many tasks of one job): the
# loop device, the squashfs superblock and its page cache are shared.
"$SLIPWAY" exec --policy "$W/trusted.toml" "$W/image.sif" /bin/probe --sleep 3600 >/dev/null &
HOLDER=$!
trap 'kill $HOLDER 2>/dev/null || true; wait $HOLDER 2>/dev/null || true; rm -rf "$W"' EXIT
sleep 0.5
python3 "$BENCH/interleave.py" --warmup 20 --runs "$RUNS" --json "$W/shared.json" --log "$W/shared.log" \
  "slipway SIF kernel mount (root, image in use)=$SLIPWAY exec --policy $W/trusted.toml $W/image.sif /bin/probe" \
  || failed
kill $HOLDER; wait $HOLDER 2>/dev/null || true

python3 - "$W/results.json" "$W/shared.json" <<'PY'
import json, sys
r = {x["command"]: x for f in sys.argv[1:] for x in json.load(open(f))["results"]}
med = {k: v["median"] * 1000 for k, v in r.items()}
wrap = med["bare probe (setpriv)"] - med["bare probe"]
print(f"{'command':42} {'median ms':>10} {'(minus setpriv)':>16}")
for k, v in med.items():
    adj = v - wrap if ("unprivileged" in k or "setpriv" in k) else v
    print(f"{k:42} {v:10.2f} {adj:16.2f}")
def ratio(a, b, adj_a, adj_b):
    x = med[a] - (wrap if adj_a else 0)
    y = med[b] - (wrap if adj_b else 0)
    return med[a] / med[b], x / y
print()
for a, b, aa, ab, goal in [
    ("slipway dir (unprivileged)", "ch-run dir (unprivileged)", True, True, "< 1"),
    ("slipway dir (root)", "ch-run dir (unprivileged)", False, True, "< 1"),
    ("slipway SIF kernel mount (root)", "ch-run squashfs (unprivileged)", False, True, "<= 0.5"),
    ("slipway SIF kernel mount (root, image in use)", "ch-run squashfs (unprivileged)", False, True, "<= 0.5"),
    # Same privilege, no wrapper on either side (ch-run as root still makes its own user
    # namespace; slipway as root binds root's home, which the image lacks).
    ("slipway dir (root)", "ch-run dir (root)", False, False, ""),
    ("slipway SIF kernel mount (root)", "ch-run squashfs (root)", False, False, ""),
    ("slipway SIF squashfuse (unprivileged)", "ch-run squashfs (unprivileged)", True, True, ""),
    # No decompression on either side (data blocks stored uncompressed): what is left of the
    # gap when the kernel's and squashfuse's zlib are out of the picture.
    ("slipway squashfs -noD kernel mount (root)", "ch-run squashfs -noD (unprivileged)", False, True, ""),
    ("slipway dir (unprivileged)", "bwrap dir (unprivileged)", True, True, ""),
]:
    raw, adj = ratio(a, b, aa, ab)
    print(f"{a} / {b}: {raw:.2f} raw, {adj:.2f} without setpriv {('(goal ' + goal + ')') if goal else ''}")
# The cold-SIF ratio split in two with the -noD pair (same tree, data blocks uncompressed):
# what decompressing the probe adds to each tool, and the rest of each launch. The total is a
# weighted mean of the two ratios (approximate: -noD moves more bytes through loop/FUSE).
s_all, c_all = med["slipway SIF kernel mount (root)"], med["ch-run squashfs (unprivileged)"]
s_rest = med["slipway squashfs -noD kernel mount (root)"]
c_rest = med["ch-run squashfs -noD (unprivileged)"]
print(f"\ncold SIF split: decompression {s_all - s_rest:.2f} ms vs {c_all - c_rest:.2f} ms "
      f"({(s_all - s_rest) / (c_all - c_rest):.2f}); rest {s_rest:.2f} ms vs {c_rest:.2f} ms "
      f"({s_rest / c_rest:.2f} raw)")
PY
