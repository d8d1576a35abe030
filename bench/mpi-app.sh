#!/usr/bin/env bash
# Hybrid MPI at the application level, on the local test cluster: what an MPI program measures
# bare (the host's build) and as `slipway exec mpi.sif` ranks (unprivileged, one shared
# container per node, no SPANK plugin), started by `srun --mpi=pmix` as the unprivileged user.
#
#   bench/mpi-app.sh [RUNS [HPL_RUNS]]   (as root; defaults 10 and 6 runs of each)
#
# - bench/mpi_pingpong.c: 8-byte ping-pong latency and 4 MiB windowed bandwidth between two
#   ranks, on one node (`-N1 -n2`: Open MPI's vader, shared memory and CMA) and across two
#   (`-N2 -n2`: TCP). The "nodes" are network namespaces on this one machine (cluster.sh), so
#   "across nodes" is TCP over a veth bridge, not a network: it measures the software path.
# - HPL, as hpcc's HPL part (Debian's hpcc: `apt-get install hpcc`), N=2000 on 1x2 ranks, on
#   one node and across two; hpcc runs its other tests too (a run takes a few seconds), only
#   HPL_Tflops is read (from hpccoutf.txt). The image is tests/cluster/mpi-image.sh's with
#   hpcc, its BLAS (the Debian alternatives link included) and mpi_pingpong added.
#
# Runs are interleaved: each round runs every case bare and in the container, alternating
# which goes first. Prints per figure the median, interquartile range and min-max of each, and
# the container's difference in percent (goal: within 2%): of the medians, and paired (the
# median of each round's container/bare ratio, which cancels drift between rounds). The
# per-run values go to stderr.
#
# Uses its own cluster names (netns slipo-*, bridge slipobr0, 10.77.5.0/24), so it never meets
# the test cluster or bench/hybrid-cluster.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${1:-10}
HPL_RUNS=${2:-6}
[ "$(id -u)" -eq 0 ] || { echo "bench/mpi-app.sh: run as root" >&2; exit 1; }
[ -x /usr/bin/hpcc ] || { echo "bench/mpi-app.sh: hpcc not found: apt-get install hpcc" >&2; exit 1; }
for p in mpicc srun python3 mksquashfs squashfuse_ll; do
    command -v "$p" >/dev/null || { echo "bench/mpi-app.sh: $p not found" >&2; exit 1; }
done
export SLIPWAY_CLUSTER_DIR=/tmp/slipway-bench-mpiapp SLIPWAY_CLUSTER_NAME=slipo \
    SLIPWAY_CLUSTER_BRIDGE=slipobr0 SLIPWAY_CLUSTER_NET=10.77.7
USER_=${SLIPWAY_CLUSTER_USER:-slipuser}
chmod 0666 /dev/fuse
cargo build --quiet --release -p slipway >&2
SLIPWAY=$PWD/target/release/slipway
W=/var/lib/slipway-bench-mpiapp
rm -rf "$W"
install -d -m 755 "$W"
mpicc -O2 -o "$W/mpi_pingpong" bench/mpi_pingpong.c
# hpcc finds its BLAS through /usr/lib/x86_64-linux-gnu/libblas.so.3 -> /etc/alternatives/...
# -> blas/libblas.so.3.x: mpi-image.sh copies a link and its final target, not the link between.
blas=()
l=/usr/lib/x86_64-linux-gnu/libblas.so.3
while [[ -L $l ]]; do
    blas+=("$l")
    t=$(readlink "$l")
    [[ $t == /* ]] || t=$(dirname "$l")/$t
    l=$t
done
blas+=("$l")
SLIPWAY=$SLIPWAY tests/cluster/mpi-image.sh "$W/mpi.sif" "$W/mpi_pingpong" /usr/bin/hpcc "${blas[@]}" >&2
chmod -R a+rX "$W"
cleanup() { "$ROOT/tests/cluster/cluster.sh" down >/dev/null 2>&1 || true; rm -rf "$W"; }
trap cleanup EXIT
tests/cluster/cluster.sh down >/dev/null 2>&1 || true
tests/cluster/cluster.sh up 2 >&2
eval "$(tests/cluster/cluster.sh env)"
WORK=$SLIPWAY_CLUSTER_DIR/work
install -d -o "$USER_" "$WORK"
# hpcc reads hpccinf.txt in its working directory: HPL with N=2000, NB=80, a 1x2 grid.
sed -e '6s/^[0-9]* /2000 /' -e '11s/^[0-9]* /1 /' /usr/share/doc/hpcc/examples/_hpccinf.txt \
    >"$WORK/hpccinf.txt"
chmod 644 "$WORK/hpccinf.txt"
cd "$WORK"
export BENCH_USER=$USER_ BENCH_SLIPWAY=$SLIPWAY BENCH_W=$W BENCH_RUNS=$RUNS BENCH_HPL_RUNS=$HPL_RUNS
python3 - <<'PY'
import os, re, statistics, subprocess, sys

user, slipway, w = os.environ["BENCH_USER"], os.environ["BENCH_SLIPWAY"], os.environ["BENCH_W"]
runs, hpl_runs = int(os.environ["BENCH_RUNS"]), int(os.environ["BENCH_HPL_RUNS"])
srun = ["runuser", "-u", user, "--", "env", f"SLURM_CONF={os.environ['SLURM_CONF']}",
        "srun", "--mpi=pmix"]
where = {"on one node (-N1 -n2)": ["-N1", "-n2"],
         "across 2 nodes (-N2 -n2)": ["-N2", "-n2", "--ntasks-per-node=1"]}
how = {"bare": [], "slipway exec": [slipway, "exec", f"{w}/mpi.sif"]}
want_marker = {"bare": "none", "slipway exec": "slipway-mpi-image"}
# (case, program, what it yields, runs)
cases = []
for place, opts in where.items():
    cases.append((f"ping-pong {place}", opts, [f"{w}/mpi_pingpong"], "pingpong", runs))
for place, opts in where.items():
    cases.append((f"HPL {place}", opts, ["/usr/bin/hpcc"], "hpl", hpl_runs))


def once(kind, opts, prog, variant):
    argv = srun + opts + how[variant] + prog
    if kind == "hpl" and os.path.exists("hpccoutf.txt"):
        os.unlink("hpccoutf.txt")
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"bench/mpi-app.sh: {' '.join(argv)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    if kind == "pingpong":
        kv = dict(x.split("=", 1) for x in p.stdout.split() if "=" in x)
        if kv.get("check") != "ok" or kv.get("marker") != want_marker[variant]:
            sys.exit(f"bench/mpi-app.sh: {variant}: unexpected output {p.stdout!r}")
        if ("-N2" in opts) != (kv["host0"] != kv["host1"]):
            sys.exit(f"bench/mpi-app.sh: ranks on the wrong nodes: {p.stdout!r}")
        return {"latency 8 B (us)": float(kv["latency_us"]),
                "bandwidth 4 MiB (MB/s)": float(kv["bandwidth_MBps"])}
    text = open("hpccoutf.txt").read()
    m = re.search(r"^HPL_Tflops=([0-9.eE+-]+)$", text, re.M)
    if not m or "Success=1" not in text:
        sys.exit(f"bench/mpi-app.sh: {variant}: hpcc gave no HPL result:\n{text[-2000:]}")
    return {"HPL N=2000 (Gflops)": float(m.group(1)) * 1000}


# One warm-up run of each (page cache, the image's first reads), not counted.
for _, opts, prog, kind, _ in cases:
    for variant in how:
        once(kind, opts, prog, variant)
res = {}
for r in range(max(runs, hpl_runs)):
    for name, opts, prog, kind, n in cases:
        if r >= n:
            continue
        order = list(how) if r % 2 == 0 else list(how)[::-1]
        for variant in order:
            for fig, v in once(kind, opts, prog, variant).items():
                res.setdefault((name, fig), {}).setdefault(variant, []).append(v)
    print(f"  round {r + 1} done", file=sys.stderr)

def q(v):
    return statistics.quantiles(v, n=4) if len(v) > 1 else [v[0], v[0], v[0]]


def fmt(x, fig):
    return f"{x:.3f}" if "latency" in fig else f"{x:.0f}" if "MB/s" in fig else f"{x:.2f}"


print("median, IQR and min-max of each; diff: container against bare, of the medians and "
      "(paired) the median of the per-round ratios")
for (name, fig), by in res.items():
    b, s = by["bare"], by["slipway exec"]
    mb, ms = statistics.median(b), statistics.median(s)
    diff = (ms - mb) / mb * 100
    paired = (statistics.median([y / x for x, y in zip(b, s)]) - 1) * 100
    worse = diff > 0 if "latency" in fig else diff < 0
    print(f"{name}: {fig}, {len(b)} runs each")
    for label, v in (("bare", b), ("slipway exec", s)):
        q1, _, q3 = q(v)
        print(f"  {label:13} {fmt(statistics.median(v), fig):>8}   IQR {fmt(q1, fig)}-{fmt(q3, fig)}"
              f"   min-max {fmt(min(v), fig)}-{fmt(max(v), fig)}")
    print(f"  diff {diff:+.1f}% ({'container slower' if worse else 'container not slower'}), "
          f"paired {paired:+.1f}%")
    print(f"  raw bare {[round(x, 3) for x in b]}", file=sys.stderr)
    print(f"  raw slipway {[round(x, 3) for x in s]}", file=sys.stderr)
print("goal: within 2%; the IQR and min-max show this rig's run-to-run noise")
PY
