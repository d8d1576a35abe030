#!/bin/bash
# mpi-image.sh OUT.sif [EXTRA_FILE...]: a small image made from this host's Open MPI.
#
# The tree holds mpi_hello (built here with mpicc from mpi_hello.c), Open MPI's and PMIx's
# plugin directories and configuration, a shell and a few tools, and every shared library
# all of them load (ldd, transitively), at their host paths; /bin, /lib, /lib64 and /sbin are
# symlinks into /usr as on Debian 12 (merged /usr). /marker says "slipway-mpi-image", so a
# rank can tell it runs inside the image. EXTRA_FILEs are copied in at their host paths.
# The SIF is made by `slipway build` ($SLIPWAY, default: target/debug/slipway).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${1:?usage: mpi-image.sh OUT.sif [EXTRA_FILE...]}
shift
SLIPWAY=${SLIPWAY:-$ROOT/target/debug/slipway}
TREE=$(mktemp -d /var/tmp/slipway-mpi-image.XXXXXX)
chmod 755 "$TREE"
trap 'rm -rf "$TREE"' EXIT

mkdir -p "$TREE"/{usr/bin,usr/sbin,usr/lib,usr/lib64,usr/local/bin,etc,tmp,var/tmp,home,proc,sys,dev,run}
chmod 1777 "$TREE/tmp" "$TREE/var/tmp"
for d in bin sbin lib lib64; do ln -s "usr/$d" "$TREE/$d"; done
echo slipway-mpi-image >"$TREE/marker"

mpicc -O2 -o "$TREE/usr/local/bin/mpi_hello" "$HERE/mpi_hello.c"

# Copies host paths (files, symlinks, directories) into the tree at the same path, as /usr
# paths (merged /usr: /lib/x/y is /usr/lib/x/y).
put() {
    local p real
    for p in "$@"; do
        [[ -e $p ]] || continue
        case $p in
            /lib/* | /lib64/* | /bin/* | /sbin/*) p=/usr$p ;;
        esac
        cp -a --parents "$p" "$TREE" 2>/dev/null || true
        if [[ -L $p ]]; then
            real=$(readlink -f "$p")
            cp -a --parents "$real" "$TREE" 2>/dev/null || true
        fi
    done
}

tools=(/usr/bin/dash /usr/bin/sh /usr/bin/cat /usr/bin/hostname /usr/bin/env /usr/bin/ls /usr/bin/id)
put "${tools[@]}" /usr/local/bin/mpi_hello
put /usr/lib/x86_64-linux-gnu/openmpi /usr/lib/x86_64-linux-gnu/pmix2 \
    /usr/share/openmpi /usr/share/pmix /etc/openmpi /etc/pmix \
    /usr/lib/x86_64-linux-gnu/hwloc /usr/lib/x86_64-linux-gnu/libpmix.so.2 \
    /usr/lib/x86_64-linux-gnu/libpmix.so.2.6.2 \
    /etc/ld.so.cache /etc/ld.so.conf /etc/ld.so.conf.d /etc/nsswitch.conf /etc/hosts \
    /usr/lib64/ld-linux-x86-64.so.2 /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$@"

# Every shared library the ELF files of the tree load, until nothing new appears.
seen=$(mktemp)
trap 'rm -rf "$TREE" "$seen"' EXIT
while :; do
    new=0
    while read -r lib; do
        if ! grep -qxF "$lib" "$seen"; then
            echo "$lib" >>"$seen"
            put "$lib"
            new=1
        fi
    done < <(find "$TREE/usr" -type f \( -name '*.so*' -o -perm -u+x \) -print0 |
        xargs -0 ldd 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' |
        sort -u)
    [[ $new == 1 ]] || break
done

# cp --parents makes missing parents 0700: everything readable, as on the host.
chmod -R go+rX "$TREE"
"$SLIPWAY" build -q --force "$OUT" "$TREE"
chmod 644 "$OUT"
echo "mpi-image.sh: $OUT ($(du -h "$OUT" | cut -f1))"
