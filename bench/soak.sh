#!/usr/bin/env bash
# Soak (issue 16): the cluster test's leak checks at full count. `containers_in_cluster`
# (tests/tests/cluster.rs) runs STEPS consecutive container steps, then CONCURRENT container
# steps at once across the 4 nodes (`srun --overlap`), and after each compares what the nodes
# hold with what they held before: loop devices, mounts in every slurmd's namespace, slurmd's
# open fds, processes in the nodes, squashfuse processes, the nodes' spool and tmp files and
# Slipway's files in /tmp. CI runs the same test with 200 and 48.
#
#   bench/soak.sh [STEPS] [CONCURRENT]     (as root; default 1000 and 200)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench/soak.sh: run as root" >&2; exit 1; }
STEPS=${1:-1000}
CONCURRENT=${2:-200}
t0=$(date +%s)
LOG=$(mktemp /tmp/slipway-soak.XXXXXX)
trap 'rm -f "$LOG"' EXIT
rc=0
SLIPWAY_TESTS_MUST_RUN=1 SLIPWAY_LEAK_STEPS=$STEPS SLIPWAY_SOAK_CONCURRENT=$CONCURRENT \
  cargo test -q -p slipway-tests --test cluster containers_in_cluster -- --nocapture \
  >"$LOG" 2>&1 || rc=$?
grep -E "container steps|test result" "$LOG" || true
if [ "$rc" -ne 0 ]; then
  echo "bench/soak.sh: the soak failed; its assertion and the end of its output:" >&2
  grep -A25 "panicked" "$LOG" | grep -v "^ *[0-9]*: \|^ *at " >&2 || true
  tail -40 "$LOG" >&2
  exit "$rc"
fi
echo "bench/soak.sh: $STEPS consecutive and $CONCURRENT concurrent container steps, nothing left, in $(( $(date +%s) - t0 )) s"
