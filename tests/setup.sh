#!/usr/bin/env bash
# Installs what Slipway's build and tests need on Debian 12 (run as root; idempotent).
# Used by tests/run.sh, tests/cluster/demo.sh and .ci/run.
set -euo pipefail

PACKAGES=(
  # images
  squashfs-tools squashfuse fuse3 umoci skopeo erofs-utils zstd tar python3 coreutils
  # entering containers, and what the benchmarks compare against
  util-linux uidmap bubblewrap charliecloud-runtime
  # Slurm cluster, MPI
  slurm-wlm slurm-client libslurm-dev munge openmpi-bin libopenmpi-dev libpmix-dev
  iproute2 procps psmisc
  # building: bindgen needs libclang; the test probe is linked statically
  libclang-dev gcc libc6-dev pkg-config jq
  # an image with an older glibc than the host's (Debian 11), for the host's srun inside
  # (tests/cluster/old-glibc-image.sh)
  debootstrap debian-archive-keyring gpgv
  # environments: a static busybox is the test images' /bin/sh (tests/tests/environment.rs)
  busybox-static
  # GPUs: NVIDIA's real 535 user space (contrib/non-free) and AMD's ROCm 5.2 runtime, for
  # --nv and --rocm without a GPU
  libcuda1 libnvidia-ml1 nvidia-smi libhsa-runtime64-1 rocminfo
)

if [ "$(id -u)" -ne 0 ]; then
  echo "tests/setup.sh: run as root (it installs Debian packages)" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  # NVIDIA's user space is in Debian's contrib and non-free components.
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    sed -i -E 's/^(Components:.*\bmain\b)$/\1 contrib non-free/; s/^(Components:.*) contrib non-free( contrib non-free)+$/\1 contrib non-free/' \
      /etc/apt/sources.list.d/debian.sources
    grep -q '^Components:.*non-free' /etc/apt/sources.list.d/debian.sources ||
      sed -i -E '/^Components:/ s/$/ contrib non-free/' /etc/apt/sources.list.d/debian.sources
  elif [ -f /etc/apt/sources.list ]; then
    sed -i -E '/^deb .* main$/ s/ main$/ main contrib non-free/' /etc/apt/sources.list
  fi
  echo "tests/setup.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# No udev here: /dev/fuse comes up 0600. On a normal node it is 0666, which unprivileged
# squashfuse mounts need.
if [ -e /dev/fuse ]; then chmod 0666 /dev/fuse; fi

# Debian's slurm packages start nothing without systemd; make sure no stale daemon from an
# earlier run holds ports or pid files (tests start their own).
command -v cargo >/dev/null || { echo "tests/setup.sh: cargo not found (install Rust)" >&2; exit 1; }
