#!/usr/bin/env bash
# Builds everything tests/gpu/device-check.sh needs on a GPU machine into tests/gpu/out/.
# Run here, as root, on the Debian 12 development machine (the GPU machine has no network and
# no compiler); then carry tests/gpu/out to the GPU machine and run tests/gpu/device-check.sh
# there from the repository root.
#
#   out/slipway              the launcher (cargo build --release -p slipway), stripped
#   out/cuda_probe           tests/probe/cuda_probe.c, dynamic (driver-API report)
#   out/gpu_probe            tests/gpu/gpu_probe.cu, CUDA runtime linked in, sm_70..sm_90 + PTX
#   out/nodriver.sif         an image with both probes, busybox and glibc, and no NVIDIA file
#   out/nodriver/            the same tree as a directory image (unprivileged runs without FUSE)
#   out/bare.sqfs            the tree as a bare squashfs with no /.singularity.d and no /usr/bin:
#                            --nv must make its own mount points (or say why it cannot)
#   out/hostlib/             glibc and squashfuse_ll's libraries, with their loader, to run
#                            out/slipway and out/squashfuse_ll on a host with an older glibc or
#                            without squashfuse
#   out/squashfuse_ll        a wrapper running the bundled squashfuse_ll through out/hostlib
#   out/nvliblist.conf       packaging/nvliblist.conf, for reference (slipway compiles it in)
#   out/BUILD-INFO           versions and gencodes
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=$ROOT/tests/gpu/out
IMG=$OUT/nodriver
MULTIARCH=x86_64-linux-gnu
LIBDIR=/lib/$MULTIARCH
LOADER=ld-linux-x86-64.so.2
MAX_MIB=60
# SASS for Volta..Hopper, PTX for Hopper (JIT-compiled on anything newer). CUDA 11.8 is the
# first nvcc with sm_89/sm_90.
# shellcheck disable=SC2054  # the commas are nvcc's
GENCODES=(
  -gencode arch=compute_70,code=sm_70
  -gencode arch=compute_75,code=sm_75
  -gencode arch=compute_80,code=sm_80
  -gencode arch=compute_86,code=sm_86
  -gencode arch=compute_89,code=sm_89
  -gencode "arch=compute_90,code=[sm_90,compute_90]"
)

say() { echo "prepare: $*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it installs Debian packages and builds an image)"
[ "$(uname -m)" = x86_64 ] || die "x86_64 only (the image's glibc is copied from this machine)"

# What this needs beyond tests/setup.sh: nvcc and a static busybox.
need=()
command -v nvcc >/dev/null || need+=(nvidia-cuda-toolkit)
[ -x /bin/busybox ] || need+=(busybox-static)
for p in squashfs-tools gcc libc6-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
  say "installing ${need[*]} (nvidia-cuda-toolkit is large: several minutes)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || die "cargo not found (install Rust)"
file /bin/busybox | grep -q 'statically linked' || die "/bin/busybox is not static"

rm -rf "$OUT"
mkdir -p "$OUT" "$OUT/hostlib"

say "cargo build --release -p slipway"
cargo build --release -p slipway
install -m 0755 target/release/slipway "$OUT/slipway"
strip "$OUT/slipway"

say "probes"
gcc -O2 -Wall -Wextra -Werror -o "$OUT/cuda_probe" tests/probe/cuda_probe.c -ldl
# -cudart static: the probe needs only libcuda.so.1 from the driver; libstdc++/libgcc linked
# in too, so it needs nothing but glibc in an image and runs on hosts with another libstdc++.
nvcc -O2 -cudart static -Xcompiler -static-libstdc++,-static-libgcc "${GENCODES[@]}" \
  -o "$OUT/gpu_probe" tests/gpu/gpu_probe.cu
chmod 0755 "$OUT/cuda_probe" "$OUT/gpu_probe"

# glibc files the probes, libcuda.so.1 and nvidia-smi (bound in by --nv) load: the probes'
# own NEEDED entries plus libcuda's (libm, libdl, libpthread, librt: stubs since glibc 2.34
# but still NEEDED by the 535 driver's libcuda and nvidia-smi).
glibc_libs() {
  {
    ldd "$OUT/cuda_probe" "$OUT/gpu_probe" | awk '/=> \//{print $3}'
    for l in libc.so.6 libm.so.6 libdl.so.2 libpthread.so.0 librt.so.1 "$LOADER"; do
      echo "$LIBDIR/$l"
    done
  } | sort -u
}

say "image tree $IMG (no NVIDIA file)"
mkdir -p "$IMG"/{probe,bin,usr/bin,lib64,"lib/$MULTIARCH",etc,dev,proc,sys,tmp,home,root,var/tmp}
chmod 1777 "$IMG/tmp" "$IMG/var/tmp"
cp "$OUT/cuda_probe" "$OUT/gpu_probe" "$IMG/probe/"
cp /bin/busybox "$IMG/bin/busybox"
for app in sh ls cat env id grep sed awk head tail wc sort uname mount find readlink stat; do
  ln -s busybox "$IMG/bin/$app"
done
for f in $(glibc_libs); do
  cp -L "$f" "$IMG/lib/$MULTIARCH/$(basename "$f")"
done
ln -s "../lib/$MULTIARCH/$LOADER" "$IMG/lib64/$LOADER"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' \
  >"$IMG/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$IMG/etc/group"
: >"$IMG/etc/ld.so.conf"
ldconfig -r "$IMG"   # the image's own ld.so.cache: its glibc only
# Nothing NVIDIA may be in it: the point is that --nv brings the driver.
if find "$IMG" \( -iname '*nvidia*' -o -iname '*libcuda*' \) | grep -q .; then
  die "the image tree has NVIDIA files"
fi

say "$OUT/bare.sqfs (no /.singularity.d, no /usr/bin)"
rmdir "$IMG/usr/bin" "$IMG/usr"
mksquashfs "$IMG" "$OUT/bare.sqfs" -comp zstd -all-root -noappend -quiet >/dev/null
mkdir -p "$IMG/usr/bin"

say "slipway build $OUT/nodriver.sif"
"$OUT/slipway" build --quiet --compression zstd "$OUT/nodriver.sif" "$IMG"
# The directory image gets the same /.singularity.d skeleton the SIF has.
offset=$("$OUT/slipway" inspect --json "$OUT/nodriver.sif" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["image"]["squashfs"]["offset"])')
if [ -n "$offset" ]; then
  rm -rf "$IMG"
  unsquashfs -q -n -o "$offset" -d "$IMG" "$OUT/nodriver.sif" >/dev/null
else
  say "could not find the root file system's offset in 'slipway inspect --json': keeping the tree"
fi

say "hostlib and squashfuse_ll"
for f in $(glibc_libs) $(ldd "$(command -v squashfuse_ll)" | awk '/=> \//{print $3}'); do
  cp -L "$f" "$OUT/hostlib/$(basename "$f")"
done
cp -L "$(command -v squashfuse_ll)" "$OUT/hostlib/squashfuse_ll.bin"
cat >"$OUT/squashfuse_ll" <<'EOF'
#!/bin/sh
# squashfuse_ll from the development machine, with its own glibc: for GPU hosts without
# squashfuse (device-check.sh sets SLIPWAY_SQUASHFUSE to this file's absolute path).
d=$(dirname "$0")/hostlib
exec "$d/ld-linux-x86-64.so.2" --library-path "$d" "$d/squashfuse_ll.bin" "$@"
EOF
chmod 0755 "$OUT/squashfuse_ll" "$OUT/hostlib"/*

[ -f packaging/nvliblist.conf ] && cp packaging/nvliblist.conf "$OUT/nvliblist.conf"

# The image runs, and holds no driver: without --nv the probe finds no libcuda.
say "smoke test: slipway exec nodriver.sif /probe/cuda_probe (libcuda=none expected)"
smoke=$(cd / && "$OUT/slipway" exec "$OUT/nodriver.sif" /probe/cuda_probe 2>&1) ||
  die "the image does not run: $smoke"
grep -qx 'libcuda=none' <<<"$smoke" || die "the image finds a libcuda without --nv: $smoke"

{
  echo "built=$(date -u +%FT%TZ) on $(. /etc/os-release; echo "$PRETTY_NAME") $(uname -r)"
  echo "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo +dirty)"
  echo "slipway=$("$OUT/slipway" --version)"
  echo "nvcc=$(nvcc --version | sed -n 's/.*release \([0-9.]*\), \(V[0-9.]*\).*/\1 \2/p')"
  echo "gencodes=${GENCODES[*]}"
  echo "glibc=$(ldd --version | head -1)"
  echo "busybox=$(/bin/busybox | head -1)"
  echo "slipway_max_glibc=$(objdump -T "$OUT/slipway" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)"
} >"$OUT/BUILD-INFO"
cat "$OUT/BUILD-INFO" >&2

chmod -R a+rX "$OUT"
mib=$(du -sm "$OUT" | cut -f1)
say "$OUT: ${mib} MiB"
[ "$mib" -le "$MAX_MIB" ] || die "$OUT is ${mib} MiB, over the ${MAX_MIB} MiB that can be carried"
