#!/usr/bin/env bash
# Benchmark: `slipway build OUT.sif TREE` against plain `mksquashfs TREE OUT.sqfs` on the same
# ~300 MB tree, same compressor and block size. Prints the median of each and the ratio
# (goal: <= 1.10; slipway adds the SIF header, JSON objects and the Apptainer skeleton, and
# must not copy the squashfs).
#
# Environment:
#   RUNS=5          runs of each command
#   SIZE_MB=300     approximate tree size
#   COMP=gzip       mksquashfs compressor (mksquashfs's default)
#   BENCH_DIR=...   where the tree and outputs go (default /var/tmp/slipway-bench, kept
#                   between runs so the tree is made once; delete it to rebuild)
#
# The tree is deterministic for a given machine: the first files of /usr/lib and /usr/share
# in sorted order (real binaries, libraries, text), plus generated files: compressible text
# and incompressible bytes from a seeded AES-CTR stream. Nothing is downloaded.
set -euo pipefail

RUNS=${RUNS:-5}
SIZE_MB=${SIZE_MB:-300}
COMP=${COMP:-gzip}
BLOCK=131072
BENCH_DIR=${BENCH_DIR:-/var/tmp/slipway-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

for t in mksquashfs openssl cargo; do
    command -v "$t" >/dev/null || { echo "bench: needs $t" >&2; exit 1; }
done

(cd "$ROOT" && cargo build --release -q -p slipway)
SLIPWAY=${CARGO_TARGET_DIR:-$ROOT/target}/release/slipway

TREE=$BENCH_DIR/tree
mkdir -p "$BENCH_DIR"
if [ ! -f "$BENCH_DIR/tree.done" ]; then
    rm -rf "$TREE"
    mkdir -p "$TREE"
    echo "bench: making a ~${SIZE_MB} MB tree in $TREE" >&2
    # 70%: system files, half from /usr/share (many small files), half from /usr/lib
    # (binaries, libraries), first in sorted order until each half's budget is spent.
    half=$((SIZE_MB * 7 / 20 * 1024 * 1024))
    : >"$BENCH_DIR/files.txt"
    for top in /usr/share /usr/lib; do
        # awk reads to the end (no early exit) so that find and sort see no SIGPIPE.
        find "$top" -xdev \( -type f -o -type l \) -readable -printf '%s %p\n' 2>/dev/null |
            LC_ALL=C sort -k2 |
            awk -v budget="$half" '{ s += $1; if (s <= budget) print substr($0, index($0, " ") + 1) }' \
                >>"$BENCH_DIR/files.txt"
    done
    # Files that vanish or cannot be read are left out (tar exits 1 or 2 for them).
    tar -cf - --no-recursion -T "$BENCH_DIR/files.txt" 2>/dev/null | tar -xf - -C "$TREE" || true
    # 30%: generated, half text, half incompressible, in 100 directories.
    per_dir=$((SIZE_MB * 3 / 10 * 1024 * 1024 / 100))
    for d in $(seq -w 0 99); do
        mkdir -p "$TREE/data/$d"
        seq 1 $((per_dir / 2 / 7)) | sed "s/^/$d row /" >"$TREE/data/$d/table.txt"
        head -c $((per_dir / 2)) /dev/zero |
            openssl enc -aes-128-ctr -nosalt -pass "pass:slipway-$d" -pbkdf2 >"$TREE/data/$d/blob.bin"
    done
    touch "$BENCH_DIR/tree.done"
fi
echo "bench: tree $(du -sm "$TREE" | cut -f1) MB, $(find "$TREE" | wc -l) entries, comp $COMP, block $BLOCK, $RUNS runs" >&2

median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

: >"$BENCH_DIR/slipway.times"
: >"$BENCH_DIR/mksquashfs.times"
TIMEFORMAT='%R %U %S'
for i in $(seq 1 "$RUNS"); do
    # Alternate the order so that neither always runs with the warmer cache.
    for tool in $( ((i % 2)) && echo "mksquashfs slipway" || echo "slipway mksquashfs"); do
        if [ "$tool" = slipway ]; then rm -f "$BENCH_DIR/out.sif"; else rm -f "$BENCH_DIR/out.sqfs"; fi
        sync
        # Wall time, and CPU time (user + system, children included): on a shared machine
        # the CPU time is the steadier of the two.
        if [ "$tool" = slipway ]; then
            { time "$SLIPWAY" build -q --compression "$COMP" "$BENCH_DIR/out.sif" "$TREE"; } \
                2>"$BENCH_DIR/time.txt"
        else
            { time mksquashfs "$TREE" "$BENCH_DIR/out.sqfs" -noappend -comp "$COMP" -b "$BLOCK" \
                -no-progress -quiet >/dev/null; } 2>"$BENCH_DIR/time.txt"
        fi
        read -r wall user sys <"$BENCH_DIR/time.txt"
        cpu=$(echo "$user + $sys" | bc -l)
        echo "$wall $cpu" >>"$BENCH_DIR/$tool.times"
        printf 'bench: run %s %-10s wall %6.2f s  cpu %6.2f s\n' "$i" "$tool" "$wall" "$cpu" >&2
    done
done

sw=$(cut -d' ' -f1 "$BENCH_DIR/slipway.times" | median)
mw=$(cut -d' ' -f1 "$BENCH_DIR/mksquashfs.times" | median)
sc=$(cut -d' ' -f2 "$BENCH_DIR/slipway.times" | median)
mc=$(cut -d' ' -f2 "$BENCH_DIR/mksquashfs.times" | median)
printf 'slipway build   median wall %6.2f s  cpu %6.2f s  (%s bytes)\n' "$sw" "$sc" "$(stat -c %s "$BENCH_DIR/out.sif")"
printf 'mksquashfs      median wall %6.2f s  cpu %6.2f s  (%s bytes)\n' "$mw" "$mc" "$(stat -c %s "$BENCH_DIR/out.sqfs")"
printf 'ratio           wall %.3f  cpu %.3f  (goal <= 1.10)\n' "$(echo "$sw / $mw" | bc -l)" "$(echo "$sc / $mc" | bc -l)"
