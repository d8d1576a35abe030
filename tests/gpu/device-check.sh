#!/usr/bin/env bash
# Checks `slipway exec --nv` on a machine with NVIDIA GPUs. Run as root from the repository
# root, with tests/gpu/out built by tests/gpu/prepare.sh on the development machine (this one
# needs no network, compiler or package archive).
#
# Prints facts about the host first, then parts:
#   cold  exec --nv before anything used CUDA on the host, when /dev/nvidia-uvm is not there yet
#         (libcuda creates it through the setuid nvidia-modprobe, which is not in a container)
#   a  gpu_probe and cuda_probe on the bare host (the reference)
#   b  exec --nv of the driver-less image as root: cuda_probe, gpu_probe, nvidia-smi; and
#      without --nv (no driver, no GPU node)
#   c  the same as an unprivileged user (SIF through squashfuse, and the directory image)
#   d  GPU selection: CUDA_VISIBLE_DEVICES=0, a UUID, an index the node lacks
#   e  slipway explain --nv
#   f  launch time: median of 20 interleaved runs with and without --nv
# Each check prints PASS/FAIL/SKIP with the reason; the script goes on after a failure.
# Exit status: 0 every check passed, 1 some failed, 2 no NVIDIA GPU here (facts only).
#
# Environment: SLIPWAY_GPU_OUT (default tests/gpu/out), SLIPWAY_GPU_LOG_DIR (a directory to
# copy every command's output into), SLIPWAY_GPU_FORCE=1 (run the parts without a GPU: they
# fail, but the script's own logic is exercised).
#
# With the device tool: run `tests/gpu/device-check.sh` with carry ["tests/gpu/out"] and
# SLIPWAY_GPU_LOG_DIR=$OUT/logs to get every command's output back.
set -u
export LC_ALL=C

START=$(date +%s)
BUDGET_S=270               # stop starting parts after this many seconds
OUT_DIR=${SLIPWAY_GPU_OUT:-tests/gpu/out}
LOG_COPY=${SLIPWAY_GPU_LOG_DIR:-}
NV_MAJOR=195
TEST_USER=slipgpu
PASSES=0 FAILS=0 SKIPS=0
FAILED=()

header() { printf '\n== %s\n' "$*"; }
fact() { printf '\n-- %s\n' "$*"; }
pass() { PASSES=$((PASSES + 1)); echo "PASS: $*"; }
fail() { FAILS=$((FAILS + 1)); FAILED+=("$PART: $*"); echo "FAIL: $*"; }
skip() { SKIPS=$((SKIPS + 1)); echo "SKIP: $*"; }
info() { echo "  note: $*"; }
elapsed() { echo $(($(date +%s) - START)); }
indent() { sed 's/^/  | /'; }
# check COND-RESULT MESSAGE: pass or fail on the status of the previous test command.
check() { if [ "$1" = 0 ]; then pass "$2"; else fail "$2"; fi; }
# t SECONDS CMD...: a command under a timeout (killed 5 s after the TERM).
t() { local s=$1; shift; timeout -k 5 "$s" "$@"; }
# kv FILE KEY: the value of KEY= in a probe report.
kv() { sed -n "s/^$2=//p" "$1" | head -1; }
have() { command -v "$1" >/dev/null 2>&1; }

# ---- facts ----------------------------------------------------------------------------------
header "facts ($(date -u +%FT%TZ))"
fact "host"
uname -a
(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")
echo "glibc: $(getconf GNU_LIBC_VERSION 2>/dev/null || echo unknown)"
echo "id: $(id)"
echo "cpus: $(nproc), memory: $(awk '/MemTotal/{print int($2/1024) " MiB"}' /proc/meminfo)"
for v in CUDA_VISIBLE_DEVICES NVIDIA_VISIBLE_DEVICES SLURM_JOB_ID SLURM_STEP_GPUS SLURM_JOB_GPUS; do
  [ -n "${!v+x}" ] && echo "$v=${!v} (unset for the checks)"
done
unset CUDA_VISIBLE_DEVICES NVIDIA_VISIBLE_DEVICES SLURM_JOB_ID SLURM_STEP_GPUS SLURM_JOB_GPUS

fact "/dev/nvidia*"
DEV_BEFORE=$(ls -l /dev/nvidia* 2>/dev/null)
ls -l /dev/nvidia* 2>&1
ls -l /dev/nvidia-caps 2>/dev/null

fact "driver"
cat /proc/driver/nvidia/version 2>&1
for f in /proc/driver/nvidia/gpus/*/information; do
  [ -e "$f" ] || continue
  echo "$f:"
  indent <"$f"
done

fact "nvidia-smi -L"
NVSMI_HOST=$(t 30 nvidia-smi -L 2>&1)
NVSMI_RC=$?
echo "$NVSMI_HOST"
echo "(exit $NVSMI_RC)"
if [ "$NVSMI_RC" = 0 ]; then
  t 30 nvidia-smi --query-gpu=index,name,pci.bus_id,uuid,driver_version,persistence_mode,compute_mode,mig.mode.current --format=csv 2>&1
fi

fact "ldconfig -p | grep -E 'cuda|nvidia'"
{ ldconfig -p 2>/dev/null || /sbin/ldconfig -p; } | grep -E 'cuda|nvidia' || echo "(none)"

fact "containers"
for s in user.max_user_namespaces kernel.unprivileged_userns_clone kernel.apparmor_restrict_unprivileged_userns; do
  f=/proc/sys/${s//.//}
  [ -e "$f" ] && echo "$s = $(cat "$f")"
done
echo "squashfuse_ll: $(command -v squashfuse_ll || echo 'not installed (the bundled one is used)')"
ls -l /dev/fuse /dev/loop-control 2>&1
echo "setpriv: $(command -v setpriv || echo missing), useradd: $(command -v useradd || echo missing)"
echo "nvidia-modprobe: $(command -v nvidia-modprobe || echo missing), nvidia-persistenced: $(pgrep -x nvidia-persiste >/dev/null 2>&1 && echo running || echo 'not running')"
echo "/etc/slipway: $(ls -la /etc/slipway 2>&1 | tr '\n' ' ')"
[ -f /etc/slipway/policy.toml ] && { echo "existing /etc/slipway/policy.toml:"; indent </etc/slipway/policy.toml; }
[ -f "$OUT_DIR/BUILD-INFO" ] && { echo "$OUT_DIR/BUILD-INFO:"; indent <"$OUT_DIR/BUILD-INFO"; }

# ---- is there anything to check? -----------------------------------------------------------
GPU_DIRS=()
for d in /proc/driver/nvidia/gpus/*; do [ -d "$d" ] && GPU_DIRS+=("$d"); done
GPU_NODES=$(ls /dev/nvidia[0-9]* 2>/dev/null)
# libcuda and nvidia-smi, run as root, mknod /dev/nvidiactl even when no driver is loaded:
# on such a host, leave /dev as it was.
undo_stray_nodes() {
  if [ -z "$DEV_BEFORE" ] && [ ! -d /proc/driver/nvidia ]; then
    for n in /dev/nvidia*; do [ -c "$n" ] && rm -f "$n"; done
  fi
}
if [ "${#GPU_DIRS[@]}" -eq 0 ] && [ -z "$GPU_NODES" ] && [ "${SLIPWAY_GPU_FORCE:-}" != 1 ]; then
  undo_stray_nodes
  header "result"
  echo "no NVIDIA GPU here: no /proc/driver/nvidia/gpus/*, no /dev/nvidia<N> (nvidia-smi exit $NVSMI_RC); nothing to check"
  exit 2
fi

if [ "$(id -u)" -ne 0 ]; then
  header "result"
  echo "FAIL: run as root (it checks both modes, writes a policy and creates a test user)"
  exit 1
fi
for f in slipway cuda_probe gpu_probe nodriver.sif nodriver/probe/cuda_probe bare.sqfs squashfuse_ll hostlib; do
  if [ ! -e "$OUT_DIR/$f" ]; then
    header "result"
    echo "FAIL: $OUT_DIR/$f missing: run tests/gpu/prepare.sh on the development machine and carry $OUT_DIR"
    exit 1
  fi
done

# ---- set-up (undone by cleanup) -------------------------------------------------------------
CREATED_POLICY="" CREATED_POLICY_DIR="" CREATED_USER="" FUSE_MODE="" STAGE=""
cleanup() {
  cd /
  undo_stray_nodes
  [ -n "$CREATED_POLICY" ] && rm -f "$CREATED_POLICY"
  [ -n "$CREATED_POLICY_DIR" ] && rmdir "$CREATED_POLICY_DIR" 2>/dev/null
  [ -n "$CREATED_USER" ] && userdel -r "$CREATED_USER" >/dev/null 2>&1
  [ -n "$FUSE_MODE" ] && chmod "$FUSE_MODE" /dev/fuse
  if [ -n "$LOG_COPY" ] && [ -n "$STAGE" ] && [ -d "$STAGE/logs" ]; then
    mkdir -p "$LOG_COPY" && cp -r "$STAGE/logs/." "$LOG_COPY/"
  fi
  [ -n "$STAGE" ] && rm -rf "$STAGE"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A staging directory the kernel-mount policy can trust and the test user can read: root-owned
# and not group/other-writable all the way up (so not /tmp).
trusted_chain() {
  local d=$1
  while :; do
    [ "$(stat -c %u "$d")" = 0 ] || return 1
    [ $((0$(stat -c %a "$d") & 022)) = 0 ] || return 1
    [ "$d" = / ] && return 0
    d=$(dirname "$d")
  done
}
for base in /run /opt /var/lib /; do
  if [ -d "$base" ] && trusted_chain "$base"; then
    STAGE=$base/slipway-gpu-check.$$
    break
  fi
done
[ -n "$STAGE" ] || { echo "FAIL: no root-owned directory chain for the staging directory"; exit 1; }
mkdir -m 0755 "$STAGE" && cp -a "$OUT_DIR/." "$STAGE/" && mkdir -p "$STAGE/logs" || {
  echo "FAIL: cannot stage $OUT_DIR in $STAGE"
  exit 1
}
chown -R 0:0 "$STAGE" && chmod -R go-w,a+rX "$STAGE"
SIF=$STAGE/nodriver.sif
DIRIMG=$STAGE/nodriver
BARE=$STAGE/bare.sqfs
cd "$STAGE" || exit 1
echo
echo "staged in $STAGE"

# slipway needs the glibc it was linked against (Debian 12's); older hosts run it through
# the bundled loader.
SW=("$STAGE/slipway")
if ! "${SW[@]}" --version >/dev/null 2>&1; then
  echo "out/slipway does not start here ($("${SW[@]}" --version 2>&1 | head -1)): using the bundled glibc"
  SW=("$STAGE/hostlib/ld-linux-x86-64.so.2" --library-path "$STAGE/hostlib" "$STAGE/slipway")
fi
echo "slipway: $("${SW[@]}" --version 2>&1)"
if ! have squashfuse_ll; then
  export SLIPWAY_SQUASHFUSE=$STAGE/squashfuse_ll
fi
if [ -c /dev/fuse ]; then
  m=$(stat -c %a /dev/fuse)
  if [ "$m" != 666 ]; then FUSE_MODE=$m; chmod 0666 /dev/fuse; echo "/dev/fuse: $m -> 666 for the run"; fi
fi

# The policy: the admin's, if there is one; else ours, removed at the end.
if [ -e /etc/slipway/policy.toml ]; then
  echo "using the existing /etc/slipway/policy.toml (shown above)"
else
  if [ ! -d /etc/slipway ]; then
    install -d -o root -g root -m 0755 /etc/slipway && CREATED_POLICY_DIR=/etc/slipway
  fi
  cat >/etc/slipway/policy.toml <<EOF
# Written by tests/gpu/device-check.sh for its run; removed at its end.
[images]
kernel_mount = "trusted"
trusted_dirs = ["$STAGE"]

[gpu]
nvidia = "on-request"
EOF
  chown 0:0 /etc/slipway/policy.toml && chmod 0644 /etc/slipway/policy.toml
  CREATED_POLICY=/etc/slipway/policy.toml
  echo "wrote /etc/slipway/policy.toml:"
  indent </etc/slipway/policy.toml
fi
echo "slipway policy check:"
t 30 "${SW[@]}" policy check 2>&1 | indent

# The unprivileged user.
if id "$TEST_USER" >/dev/null 2>&1; then
  :
elif have useradd && useradd -m -s /bin/sh "$TEST_USER" >/dev/null 2>&1; then
  CREATED_USER=$TEST_USER
else
  TEST_USER=nobody
fi
U_UID=$(id -u "$TEST_USER") U_GID=$(id -g "$TEST_USER")
U_HOME=$(getent passwd "$TEST_USER" | cut -d: -f6)
echo "unprivileged user: $(id "$TEST_USER")"
# "${AS_USER[@]}" [VAR=VALUE...] CMD...: runs CMD as the test user with a clean environment.
U_GROUPS=--init-groups
[ "$TEST_USER" = nobody ] && U_GROUPS=--clear-groups
AS_USER=(setpriv --reuid="$U_UID" --regid="$U_GID" "$U_GROUPS"
  env -i HOME="$U_HOME" USER="$TEST_USER" LOGNAME="$TEST_USER" PATH=/usr/local/bin:/usr/bin:/bin)
[ -n "${SLIPWAY_SQUASHFUSE:-}" ] && AS_USER+=(SLIPWAY_SQUASHFUSE="$SLIPWAY_SQUASHFUSE")
USERNS_OK=0
if have setpriv && t 10 setpriv --reuid="$U_UID" --regid="$U_GID" --clear-groups unshare --user --map-root-user true 2>/dev/null; then
  USERNS_OK=1
  echo "unprivileged user namespaces: work"
else
  echo "unprivileged user namespaces: do NOT work for $TEST_USER here"
fi

# ---- helpers for the parts -------------------------------------------------------------------
N=0
# runlog NAME SECONDS CMD...: runs CMD, output (stdout and stderr) to logs/NAME.out, shown
# indented; returns CMD's status.
runlog() {
  local name=$1 secs=$2 rc
  shift 2
  N=$((N + 1))
  local log
  log=$STAGE/logs/$(printf '%02d' $N)-$name.out
  echo "\$ $*" | sed -e "s|^\\$ setpriv .* PATH=[^ ]* |\\$ (as $TEST_USER) |" -e "s|$STAGE|\$STAGE|g"
  t "$secs" "$@" >"$log" 2>&1
  rc=$?
  indent <"$log"
  echo "  (exit $rc)"
  LAST=$log
  return $rc
}
budget_ok() {
  if [ "$(elapsed)" -gt "$BUDGET_S" ]; then
    fail "not run: the script's ${BUDGET_S}s budget is spent ($(elapsed)s)"
    return 1
  fi
}
# The GPUs in PCI bus order (nvidia-smi's and slipway's index order): bus id, minor, UUID.
GPU_BUS=() GPU_MINOR=() GPU_UUID=()
for d in $(printf '%s\n' "${GPU_DIRS[@]}" | sort); do
  GPU_BUS+=("$(basename "$d")")
  GPU_MINOR+=("$(awk -F: '/^Device Minor/{gsub(/[ \t]/, "", $2); print $2}' "$d/information")")
  GPU_UUID+=("$(awk -F': *' '/^GPU UUID/{print $2}' "$d/information" | tr -d ' \t')")
done
NGPU=${#GPU_BUS[@]}
# minors_in REPORT: the /dev/nvidia<N> minors a cuda_probe report lists, sorted.
minors_in() {
  kv "$1" dev_nvidia | tr ',' '\n' | sed -n "s/^nvidia[0-9][0-9]*@$NV_MAJOR:\([0-9]*\)$/\1/p" | sort -n | tr '\n' ' '
}
sorted_words() { printf '%s\n' "$@" | sed '/^$/d' | sort -n | tr '\n' ' '; }
seq_csv() { [ "$1" -gt 0 ] && seq -s, 0 $(($1 - 1)); }
# check_nv REPORT LABEL EXPECTED_MINORS...: what exec --nv must give cuda_probe.
check_nv() {
  local r=$1 label=$2
  shift 2
  local want_minors n_want=$#
  want_minors=$(sorted_words "$@")
  local lib ver cuinit count ldp devs vis
  lib=$(kv "$r" libcuda) ver=$(kv "$r" driver_version) cuinit=$(kv "$r" cuinit)
  count=$(kv "$r" device_count) ldp=$(kv "$r" ld_library_path) devs=$(kv "$r" dev_nvidia)
  vis=$(kv "$r" visible)
  case $lib in
    /.singularity.d/libs/*) pass "$label: libcuda from the host's driver at $lib" ;;
    none) fail "$label: no libcuda.so.1 inside ($(kv "$r" dlerror))" ;;
    *) fail "$label: libcuda loaded from $lib, not /.singularity.d/libs" ;;
  esac
  case ":$ldp:" in
    *:/.singularity.d/libs:*) pass "$label: LD_LIBRARY_PATH has /.singularity.d/libs ($ldp)" ;;
    *) fail "$label: LD_LIBRARY_PATH=$ldp lacks /.singularity.d/libs" ;;
  esac
  [ -n "$ver" ] && [ "$ver" = "$HOST_DRIVER" ]
  check $? "$label: driver_version=$ver (host $HOST_DRIVER)"
  [ "$cuinit" = 0 ]
  check $? "$label: cuInit=$cuinit $(kv "$r" cuinit_name)"
  [ "$count" = "$n_want" ]
  check $? "$label: device_count=${count:-none}, want $n_want"
  [ "$(minors_in "$r")" = "$want_minors" ]
  check $? "$label: GPU nodes (minors) '$(minors_in "$r")', want '$want_minors'"
  case ",$devs," in
    *,nvidiactl@$NV_MAJOR:255,*) pass "$label: /dev/nvidiactl bound" ;;
    *) fail "$label: no /dev/nvidiactl ($devs)" ;;
  esac
  if [ -c /dev/nvidia-uvm ]; then
    case ",$devs," in
      *,nvidia-uvm@*) pass "$label: /dev/nvidia-uvm bound" ;;
      *) fail "$label: /dev/nvidia-uvm exists on the host but not inside" ;;
    esac
  fi
  if [ "$vis" = "$(seq_csv "$n_want")" ]; then
    pass "$label: CUDA_VISIBLE_DEVICES inside is $vis (renumbered)"
  elif [ "$vis" = unset ]; then
    info "$label: CUDA_VISIBLE_DEVICES unset inside (fine: only the selected nodes are there)"
  else
    fail "$label: CUDA_VISIBLE_DEVICES inside is '$vis', want '$(seq_csv "$n_want")'"
  fi
}
# check_gpu REPORT LABEL EXPECTED_UUIDS...: gpu_probe's report.
check_gpu() {
  local r=$1 label=$2
  shift 2
  local res got want
  res=$(kv "$r" result)
  [ "$res" = PASS ]
  check $? "$label: gpu_probe result=$res"
  got=$(sed -n 's/^device[0-9]*\.uuid=//p' "$r" | sort | tr '\n' ' ')
  want=$(printf '%s\n' "$@" | sort | tr '\n' ' ')
  if [ -n "$want" ] && [ "$want" != " " ]; then
    [ "$got" = "$want" ]
    check $? "$label: GPUs seen '$got', want '$want'"
  fi
}
# check_ro MOUNTINFO LABEL: every mount under /.singularity.d/libs and of /usr/bin/nvidia-* is
# read-only.
check_ro() {
  local mi=$1 label=$2 rw
  rw=$(awk '$5 ~ /^\/\.singularity\.d\/libs\// || $5 ~ /^\/usr\/bin\/nvidia/ { split($6, o, ","); if (o[1] != "ro") print $5 }' "$mi")
  local n
  n=$(awk '$5 ~ /^\/\.singularity\.d\/libs\// || $5 ~ /^\/usr\/bin\/nvidia/' "$mi" | wc -l)
  if [ "$n" -eq 0 ]; then
    fail "$label: no driver file mounts in /proc/self/mountinfo"
  elif [ -z "$rw" ]; then
    pass "$label: all $n driver file mounts read-only"
  else
    fail "$label: writable driver mounts: $(echo $rw)"
  fi
}

ALL_MINORS=("${GPU_MINOR[@]}")
ALL_UUIDS=("${GPU_UUID[@]}")
HOST_DRIVER=""

# ---- cold: before the host used CUDA --------------------------------------------------------
PART=cold
header "cold: exec --nv on a node where nothing used CUDA yet"
if [ -c /dev/nvidia-uvm ]; then
  info "/dev/nvidia-uvm already exists: the cold-node case cannot be checked on this host"
else
  runlog cold-nv-gpu_probe 120 "${SW[@]}" exec --nv "$SIF" /probe/gpu_probe
  check_gpu "$LAST" "cold node (no /dev/nvidia-uvm before the launch)" "${ALL_UUIDS[@]}"
  echo "/dev/nvidia-uvm after it: $(ls -l /dev/nvidia-uvm 2>&1)"
fi

# ---- a: bare host ---------------------------------------------------------------------------
PART=a
header "a: bare host (reference)"
runlog host-cuda_probe 60 "$STAGE/cuda_probe"
HOST_CP=$LAST
HOST_DRIVER=$(kv "$HOST_CP" driver_version)
[ "$(kv "$HOST_CP" cuinit)" = 0 ]
check $? "host cuda_probe: cuInit=$(kv "$HOST_CP" cuinit) $(kv "$HOST_CP" cuinit_name), driver_version=$HOST_DRIVER, device_count=$(kv "$HOST_CP" device_count)"
[ "$(kv "$HOST_CP" device_count)" = "$NGPU" ]
check $? "host cuda_probe: device_count=$(kv "$HOST_CP" device_count), /proc/driver/nvidia/gpus has $NGPU"
if runlog host-gpu_probe 120 "$STAGE/gpu_probe"; then :; fi
check_gpu "$LAST" "host" "${ALL_UUIDS[@]}"

# ---- b: root --------------------------------------------------------------------------------
PART=b
header "b: exec --nv as root (image without a driver: $(basename "$SIF"))"
if budget_ok; then
  runlog root-nv-cuda_probe 60 "${SW[@]}" exec --nv "$SIF" /probe/cuda_probe
  check_nv "$LAST" "root SIF" "${ALL_MINORS[@]}"
  runlog root-nv-gpu_probe 120 "${SW[@]}" exec --nv "$SIF" /probe/gpu_probe
  check_gpu "$LAST" "root SIF" "${ALL_UUIDS[@]}"
  runlog root-nv-nvidia-smi 60 "${SW[@]}" exec --nv "$SIF" /usr/bin/nvidia-smi -L
  [ "$(cat "$LAST")" = "$NVSMI_HOST" ]
  check $? "root SIF: nvidia-smi -L inside prints what it prints on the host"
  runlog root-nv-mountinfo 60 "${SW[@]}" exec --nv "$SIF" /bin/cat /proc/self/mountinfo >/dev/null
  check_ro "$LAST" "root SIF"
  runlog root-nv-ls 60 "${SW[@]}" exec --nv "$SIF" /bin/ls -la /.singularity.d/libs /usr/bin /dev
  runlog root-plain-cuda_probe 60 "${SW[@]}" exec "$SIF" /probe/cuda_probe
  [ "$(kv "$LAST" libcuda)" = none ] && [ -z "$(kv "$LAST" dev_nvidia)" ]
  check $? "root SIF without --nv: no libcuda ($(kv "$LAST" libcuda)), no /dev/nvidia* ('$(kv "$LAST" dev_nvidia)')"
  runlog root-nv-dir-cuda_probe 60 "${SW[@]}" exec --nv "$DIRIMG" /probe/cuda_probe
  check_nv "$LAST" "root dir" "${ALL_MINORS[@]}"
  # An image with neither /.singularity.d/libs nor /usr/bin to mount on.
  runlog root-nv-bare-cuda_probe 60 "${SW[@]}" exec --nv "$BARE" /probe/cuda_probe
  check_nv "$LAST" "root bare squashfs (no mount points)" "${ALL_MINORS[@]}"
  runlog root-nv-bare-nvidia-smi 60 "${SW[@]}" exec --nv "$BARE" /usr/bin/nvidia-smi -L
  [ "$(cat "$LAST")" = "$NVSMI_HOST" ]
  check $? "root bare squashfs: nvidia-smi -L inside prints what it prints on the host"
fi

# ---- c: unprivileged ------------------------------------------------------------------------
PART=c
header "c: exec --nv as $TEST_USER (uid $U_UID)"
if [ "$USERNS_OK" != 1 ]; then
  skip "unprivileged user namespaces do not work on this host (see facts): slipway's unprivileged mode cannot run"
elif budget_ok; then
  for img in "$SIF" "$DIRIMG"; do
    kind=SIF
    [ -d "$img" ] && kind=dir
    runlog user-nv-$kind-cuda_probe 60 "${AS_USER[@]}" "${SW[@]}" exec --nv "$img" /probe/cuda_probe
    check_nv "$LAST" "user $kind" "${ALL_MINORS[@]}"
    runlog user-nv-$kind-gpu_probe 120 "${AS_USER[@]}" "${SW[@]}" exec --nv "$img" /probe/gpu_probe
    check_gpu "$LAST" "user $kind" "${ALL_UUIDS[@]}"
  done
  runlog user-nv-nvidia-smi 60 "${AS_USER[@]}" "${SW[@]}" exec --nv "$SIF" /usr/bin/nvidia-smi -L
  [ "$(cat "$LAST")" = "$NVSMI_HOST" ]
  check $? "user SIF: nvidia-smi -L inside prints what it prints on the host"
  runlog user-nv-mountinfo 60 "${AS_USER[@]}" "${SW[@]}" exec --nv "$SIF" /bin/cat /proc/self/mountinfo >/dev/null
  check_ro "$LAST" "user SIF"
fi

# ---- d: selection ---------------------------------------------------------------------------
PART=d
header "d: GPU selection (indices are PCI bus order: $(printf '%s ' "${GPU_BUS[@]}"))"
if [ "$NGPU" -eq 0 ]; then
  fail "no GPU in /proc/driver/nvidia/gpus to select"
elif budget_ok; then
  runlog sel-index0-cuda_probe 60 env CUDA_VISIBLE_DEVICES=0 "${SW[@]}" exec --nv "$SIF" /probe/cuda_probe
  check_nv "$LAST" "CUDA_VISIBLE_DEVICES=0" "${GPU_MINOR[0]}"
  runlog sel-index0-gpu_probe 120 env CUDA_VISIBLE_DEVICES=0 "${SW[@]}" exec --nv "$SIF" /probe/gpu_probe
  check_gpu "$LAST" "CUDA_VISIBLE_DEVICES=0" "${GPU_UUID[0]}"
  last=$((NGPU - 1))
  if [ -n "${GPU_UUID[$last]}" ]; then
    runlog sel-uuid-cuda_probe 60 env "CUDA_VISIBLE_DEVICES=${GPU_UUID[$last]}" "${SW[@]}" exec --nv "$SIF" /probe/cuda_probe
    check_nv "$LAST" "CUDA_VISIBLE_DEVICES=${GPU_UUID[$last]}" "${GPU_MINOR[$last]}"
  fi
  if [ "$NGPU" -ge 2 ] && [ "$USERNS_OK" = 1 ]; then
    runlog sel-index1-user 60 "${AS_USER[@]}" CUDA_VISIBLE_DEVICES=1 "${SW[@]}" exec --nv "$SIF" /probe/cuda_probe
    check_nv "$LAST" "user CUDA_VISIBLE_DEVICES=1" "${GPU_MINOR[1]}"
  fi
  runlog sel-missing 60 env CUDA_VISIBLE_DEVICES=$NGPU "${SW[@]}" exec --nv "$SIF" /probe/cuda_probe
  rc=$?
  if [ "$rc" = 255 ]; then
    pass "CUDA_VISIBLE_DEVICES=$NGPU (no such GPU): refused: $(head -1 "$LAST")"
  elif [ -z "$(minors_in "$LAST")" ]; then
    pass "CUDA_VISIBLE_DEVICES=$NGPU (no such GPU): ran with no GPU node (exit $rc)"
  else
    fail "CUDA_VISIBLE_DEVICES=$NGPU (no such GPU): GPU nodes inside: $(minors_in "$LAST")"
  fi
  runlog sel-none 60 env NVIDIA_VISIBLE_DEVICES=none "${SW[@]}" exec --nv "$SIF" /probe/cuda_probe
  info "NVIDIA_VISIBLE_DEVICES=none: exit $?, GPU nodes '$(minors_in "$LAST")', libcuda=$(kv "$LAST" libcuda)"
fi

# ---- e: explain -----------------------------------------------------------------------------
PART=e
header "e: slipway explain --nv"
if budget_ok; then
  runlog explain 60 "${SW[@]}" explain --nv "$SIF" /probe/cuda_probe
  rc=$?
  missing=""
  for w in /.singularity.d/libs libcuda nvidiactl ${GPU_MINOR[0]:+"/dev/nvidia${GPU_MINOR[0]}"} nvidia-smi; do
    grep -qF -- "$w" "$LAST" || missing="$missing $w"
  done
  [ "$rc" = 0 ] && [ -z "$missing" ]
  check $? "explain --nv: exit $rc${missing:+, does not mention:$missing}"
  runlog explain-json 60 "${SW[@]}" explain --nv --json "$SIF" /probe/cuda_probe >/dev/null
  rc=$?
  if have python3; then
    python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$LAST" 2>/dev/null
    check $? "explain --nv --json: exit $rc, valid JSON"
  fi
  if [ "$USERNS_OK" = 1 ]; then
    runlog explain-user-idx0 60 "${AS_USER[@]}" CUDA_VISIBLE_DEVICES=0 "${SW[@]}" explain --nv "$SIF" /probe/cuda_probe
    check $? "explain --nv as $TEST_USER with CUDA_VISIBLE_DEVICES=0"
  fi
fi

# ---- f: timing ------------------------------------------------------------------------------
PART=f
header "f: launch time, 20 interleaved runs each (root, SIF, cuda_probe --no-init: no GPU initialisation)"
# ms CMD...: runs CMD quietly, prints its wall time in ms (or FAIL).
ms() {
  local a b
  a=$(date +%s%N)
  if t 30 "$@" >/dev/null 2>&1; then
    b=$(date +%s%N)
    echo $(((b - a) / 1000))
  else
    echo FAIL
  fi
}
median() { sort -n | awk '{v[NR] = $1} END {if (NR == 0) print "none"; else if (NR % 2) printf "%.2f", v[(NR + 1) / 2] / 1000; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2000}'; }
if budget_ok; then
  nv=() plain=() host=() bad=0
  for _ in $(seq 20); do
    [ "$bad" -gt 2 ] && break
    x=$(ms "${SW[@]}" exec --nv "$SIF" /probe/cuda_probe --no-init); [ "$x" = FAIL ] && bad=$((bad + 1)) || nv+=("$x")
    x=$(ms "${SW[@]}" exec "$SIF" /probe/cuda_probe --no-init); [ "$x" = FAIL ] && bad=$((bad + 1)) || plain+=("$x")
    x=$(ms "$STAGE/cuda_probe" --no-init); [ "$x" = FAIL ] && bad=$((bad + 1)) || host+=("$x")
  done
  m_nv=$(printf '%s\n' "${nv[@]}" | sed '/^$/d' | median)
  m_plain=$(printf '%s\n' "${plain[@]}" | sed '/^$/d' | median)
  m_host=$(printf '%s\n' "${host[@]}" | sed '/^$/d' | median)
  echo "median ms: exec --nv $m_nv, exec $m_plain, bare host $m_host"
  echo "--nv adds: $(awk -v a="$m_nv" -v b="$m_plain" 'BEGIN { if (b + 0 > 0) printf "%.2f ms (x%.2f)", a - b, a / b; else print "n/a" }')"
  [ "$bad" = 0 ]
  check $? "timing: $bad of 60 runs failed"
  # With cuInit, for scale: what the GPU's initialisation costs with and without the container.
  full_nv=() full_host=()
  for _ in 1 2 3; do
    full_nv+=("$(ms "${SW[@]}" exec --nv "$SIF" /probe/cuda_probe)")
    full_host+=("$(ms "$STAGE/cuda_probe")")
  done
  echo "with cuInit (3 runs each, ms): exec --nv $(printf '%s\n' "${full_nv[@]}" | grep -v FAIL | median), bare host $(printf '%s\n' "${full_host[@]}" | grep -v FAIL | median)"
fi

# ---- result ---------------------------------------------------------------------------------
PART=z
header "host /dev after the run"
DEV_AFTER=$(ls -l /dev/nvidia* 2>/dev/null)
if [ "$DEV_BEFORE" = "$DEV_AFTER" ]; then
  echo "unchanged"
else
  echo "changed (the driver creates nodes such as /dev/nvidia-uvm on first use):"
  diff <(echo "$DEV_BEFORE") <(echo "$DEV_AFTER") | indent
fi
header "result: $PASSES passed, $FAILS failed, $SKIPS skipped in $(elapsed)s"
for f in "${FAILED[@]}"; do echo "  FAIL $f"; done
[ "$FAILS" -eq 0 ] && exit 0
exit 1
