#!/usr/bin/env bash
# demo.sh: Slipway's main job on one Debian 12 machine, as root, in one command.
#
#   1. tests/setup.sh installs the packages (Slurm, munge, Open MPI + PMIx, squashfs tools);
#   2. builds the workspace: the SPANK plugin, `slipway` and the static `slipway-hostexec`;
#   3. starts a 4-node Slurm cluster with the plugin loaded (cluster.sh up 4);
#   4. builds demo.sif from this host's Open MPI with `slipway build` (mpi-image.sh);
#   5. runs `sbatch --wait -N4 --container=demo.sif job.sh`: the script runs inside the
#      image (it reads the image's /marker) and calls the host's srun from there; the
#      `srun --mpi=pmix` ranks run inside the image too and report rank, host, the image's
#      /marker and the Allreduce result;
#   6. shows the job's output, and always stops the cluster (trap).
#
# Settings: SLIPWAY_DEMO_DIR (images and policy, default /var/lib/slipway-demo), and
# cluster.sh's SLIPWAY_CLUSTER_* variables.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DEMO=${SLIPWAY_DEMO_DIR:-/var/lib/slipway-demo}
CLUSTER=${SLIPWAY_CLUSTER_DIR:-/tmp/slipway-cluster}
USER_=${SLIPWAY_CLUSTER_USER:-slipuser}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [[ $(id -u) != 0 ]]; then
    echo "demo.sh: run as root (it installs packages and starts Slurm daemons)" >&2
    exit 1
fi

say "packages (tests/setup.sh)"
"$ROOT/tests/setup.sh"

say "build: plugin and slipway"
(cd "$ROOT" && cargo build --quiet -p spank-slipway -p slipway)
# Static (it must run in any image): its own target directory, so the workspace's build stays.
(cd "$ROOT" && cargo rustc --quiet -p slipway-hostexec --bin slipway-hostexec \
    --target-dir target/static -- -C target-feature=+crt-static)
SO=$ROOT/target/debug/libspank_slipway.so
SLIPWAY=$ROOT/target/debug/slipway

say "policy and image ($DEMO)"
rm -rf "$DEMO"
install -d -m 755 "$DEMO"
cat >"$DEMO/policy.toml" <<EOF
# Slipway demo policy: only images of $DEMO, mounted by the kernel.
[images]
allowed = ["$DEMO/**"]
trusted_dirs = ["$DEMO"]

[slurm]
hostexec = "$DEMO/slipway-hostexec"
EOF
chmod 644 "$DEMO/policy.toml"
install -m 755 "$ROOT/target/static/debug/slipway-hostexec" "$DEMO/slipway-hostexec"
SLIPWAY=$SLIPWAY "$HERE/mpi-image.sh" "$DEMO/demo.sif" /usr/bin/sort

cleanup() {
    say "cluster down"
    "$HERE/cluster.sh" down || true
}
trap cleanup EXIT

say "cluster: 4 nodes with the Slipway plugin"
"$HERE/cluster.sh" down >/dev/null 2>&1 || true
SLIPWAY_SPANK_PLUGIN=$SO SLIPWAY_SPANK_ARGS="policy=$DEMO/policy.toml" "$HERE/cluster.sh" up 4
eval "$("$HERE/cluster.sh" env)"
cat "$CLUSTER/etc/plugstack.conf"

WORK=$CLUSTER/work
install -d -o "$USER_" "$WORK"
cat >"$WORK/job.sh" <<EOF
#!/bin/sh
#SBATCH --job-name=slipway-demo
#SBATCH --container=$DEMO/demo.sif
#SBATCH -N4 --ntasks-per-node=2
#SBATCH -o demo-%j.out
# The script runs inside demo.sif (srun is the host's, put inside by Slipway); so does
# every step it starts.
export OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader,tcp OMPI_MCA_btl_tcp_if_include=eth0
echo "batch script on \$(hostname), in the image: \$(cat /marker), srun: \$(command -v srun)"
srun --mpi=pmix mpi_hello | sort -t= -k2 -n
EOF
chown "$USER_" "$WORK/job.sh"

say "sbatch --wait -N4 --container=$DEMO/demo.sif job.sh (as $USER_)"
cd "$WORK"
rc=0
runuser -u "$USER_" -- env SLURM_CONF="$SLURM_CONF" \
    sbatch --parsable --wait -N4 --container="$DEMO/demo.sif" job.sh >job.id || rc=$?
job=$(cut -d';' -f1 job.id)

say "job $job output"
cat "demo-$job.out"
ranks=$(grep -c 'marker=slipway-mpi-image' "demo-$job.out" || true)
good=$(grep -c 'size=8 .*sum=28 marker=slipway-mpi-image' "demo-$job.out" || true)
script=$(grep -c 'in the image: slipway-mpi-image' "demo-$job.out" || true)
if [[ $rc == 0 && $ranks == 8 && $good == 8 && $script == 1 ]]; then
    say "OK: the batch script and 8 MPI ranks on 4 nodes inside the image, Allreduce correct"
else
    say "FAILED (sbatch exit $rc, $good of 8 ranks correct)"
    exit 1
fi
