#!/usr/bin/env bash
# A real multi-node Slurm cluster on one machine, for Slipway's tests.
#
#   cluster.sh up [N]   start munged, slurmctld and N slurmd (default 4); wait until all idle
#   cluster.sh down     stop everything `up` started and remove every trace (idempotent)
#   cluster.sh restart I  restart node I's slurmd in the namespaces it ran in (a slurmd
#                       restarted on a real node: the node's mounts and its running jobs'
#                       slurmstepds are still there); wait until it serves again
#   cluster.sh status   what runs, what sinfo says
#   cluster.sh env      `export SLURM_CONF=...` lines for a shell: eval "$(cluster.sh env)"
#
# Layout: one state directory ($SLIPWAY_CLUSTER_DIR, default /tmp/slipway-cluster) holds the
# config, munge key and socket, spools, logs and pid files. slurmctld and every slurmd run in
# their own network namespace (a veth on the bridge $SLIPWAY_CLUSTER_BRIDGE), UTS namespace
# (own hostname: OpenMPI's shared-memory path assumes one host per hostname) and mount
# namespace (a private /tmp and /dev/shm per node: PMIx and MPI keep per-node state there), and
# IPC namespace. Namespaces are entered
# with `nsenter --net=`, not `ip netns exec`, which remounts /sys and hides the cgroup tree.
# Needs root. See README.md beside this file.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
STATE=${SLIPWAY_CLUSTER_DIR:-/tmp/slipway-cluster}
NAME=${SLIPWAY_CLUSTER_NAME:-slip}             # prefix of netns and veth names
BRIDGE=${SLIPWAY_CLUSTER_BRIDGE:-slipbr0}
NET=${SLIPWAY_CLUSTER_NET:-10.77.0}            # a /24 that exists only on our bridge
TEST_USER=${SLIPWAY_CLUSTER_USER:-slipuser}
TIMEOUT=${SLIPWAY_CLUSTER_TIMEOUT:-60}         # seconds for `up` to see all nodes idle
CTL_HOST=slipctl
CTL_ADDR=$NET.2
HOST_ADDR=$NET.1

log() { echo "cluster.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

node_addr() { echo "$NET.$((10 + $1))"; }

# ---------------------------------------------------------------------------------------------
# Inside a fresh UTS + mount namespace (called through `unshare`): set the hostname, give the
# daemon a private /tmp, then exec it. Internal; not for users.
ns_exec() {
    local host=$1 tmpdir=$2 hosts=$3
    shift 3
    hostname "$host"
    if [[ -n $tmpdir ]]; then
        # The state directory, the checkout (plugin, slipway, test images) and any
        # $SLIPWAY_CLUSTER_KEEP paths (colon-separated) may live under /tmp: keep each visible
        # at the same path inside the private /tmp, as a shared file system would be on a
        # real cluster.
        local keep rel
        local -a keeps=("$STATE" "$REPO")
        IFS=: read -r -a extra <<<"${SLIPWAY_CLUSTER_KEEP:-}"
        keeps+=("${extra[@]}")
        for keep in "${keeps[@]}"; do
            case $keep/ in
            /tmp/?*)
                [[ -d $keep ]] || continue
                rel=${keep#/tmp/}
                mkdir -p "$tmpdir/$rel"
                mount --bind "$keep" "$tmpdir/$rel"
                ;;
            esac
        done
        mount --rbind "$tmpdir" /tmp
        # Its own /dev/shm (and, with --ipc below, its own SysV IPC), as a separate machine
        # has: MPI and PMIx shared-memory segments of different nodes, or of an earlier
        # cluster that reused the same job ids, never meet. Freed with the namespace.
        mount -t tmpfs -o mode=1777,nosuid,nodev,size=512m slipway-shm /dev/shm
    fi
    # Every node resolves every other node by name, without touching the host's /etc/hosts.
    mount --bind "$hosts" /etc/hosts
    exec "$@"
}

# Creates netns $1 with address $2 on the bridge, veth host side $3.
make_netns() {
    local ns=$1 addr=$2 veth=$3
    ip netns add "$ns"
    echo "$ns" >>"$STATE/netns.list"
    ip link add "$veth" type veth peer name eth0 netns "$ns"
    ip link set "$veth" master "$BRIDGE" up
    nsenter --net="/run/netns/$ns" ip link set lo up
    nsenter --net="/run/netns/$ns" ip addr add "$addr/24" dev eth0
    nsenter --net="/run/netns/$ns" ip link set eth0 up
    # No default route: a node reaches the bridge's /24 and nothing else.
}

# Starts a daemon in netns $1 with hostname $2 and private /tmp $3 ("" for none).
start_in_ns() {
    local ns=$1 host=$2 tmpdir=$3
    shift 3
    nsenter --net="/run/netns/$ns" \
        unshare --uts --ipc --mount --propagation private -- \
        "$HERE/cluster.sh" _ns-exec "$host" "$tmpdir" "$STATE/etc/hosts" "$@"
}

# Which process tracking works here. cgroup/v1 (a hybrid hierarchy, as on this kind of
# machine): proctrack/cgroup + task/cgroup. Otherwise Slurm 22.05's cgroup/v2 wants systemd to
# delegate a tree, which a machine without systemd lacks: fall back to proctrack/linuxproc.
choose_tracking() {
    if [[ -n ${SLIPWAY_CLUSTER_PROCTRACK:-} ]]; then
        PROCTRACK=$SLIPWAY_CLUSTER_PROCTRACK
    elif [[ -d /sys/fs/cgroup/freezer && -d /sys/fs/cgroup/devices ]]; then
        PROCTRACK=proctrack/cgroup
    else
        PROCTRACK=proctrack/linuxproc
    fi
    if [[ $PROCTRACK == proctrack/cgroup ]]; then
        TASKPLUGIN=task/cgroup
        CGROUP_PLUGIN=cgroup/v1
    else
        TASKPLUGIN=task/none
        CGROUP_PLUGIN=autodetect
    fi
}

write_config() {
    local n=$1
    mkdir -p "$STATE/etc"
    local plugstack_line="# no SPANK plugin (set SLIPWAY_SPANK_PLUGIN to load spank_slipway.so)"
    if [[ -n ${SLIPWAY_SPANK_PLUGIN:-} ]]; then
        [[ -f $SLIPWAY_SPANK_PLUGIN ]] || die "SLIPWAY_SPANK_PLUGIN=$SLIPWAY_SPANK_PLUGIN: no such file"
        plugstack_line="PlugStackConfig=$STATE/etc/plugstack.conf"
        # Arguments after the path (SLIPWAY_SPANK_ARGS) go to the plugin as given.
        echo "required $SLIPWAY_SPANK_PLUGIN ${SLIPWAY_SPANK_ARGS:-}" >"$STATE/etc/plugstack.conf"
    fi
    sed -e "s|@STATE@|$STATE|g" -e "s|@CTL_HOST@|$CTL_HOST|g" -e "s|@CTL_ADDR@|$CTL_ADDR|g" \
        -e "s|@CTL_PORT@|${SLIPWAY_CLUSTER_CTL_PORT:-6817}|g" \
        -e "s|@SLURMD_PORT@|${SLIPWAY_CLUSTER_SLURMD_PORT:-6818}|g" \
        -e "s|@SLURMD_DEBUG@|${SLIPWAY_CLUSTER_SLURMD_DEBUG:-info}|g" \
        -e "s|@PROCTRACK@|$PROCTRACK|g" -e "s|@TASKPLUGIN@|$TASKPLUGIN|g" \
        -e "s|@PLUGSTACK_LINE@|$plugstack_line|g" \
        "$HERE/slurm.conf.in" >"$STATE/etc/slurm.conf"
    # Stand-in GPUs ($SLIPWAY_CLUSTER_GPUS per node): device nodes made with mknod (NVIDIA's
    # major 195) that every node shares, listed in gres.conf last-first, so that a gres index
    # is never the device minor (Slurm's SLURM_STEP_GPUS indexes this File= order).
    local gres=""
    local gpus=${SLIPWAY_CLUSTER_GPUS:-0}
    if ((gpus > 0)); then
        local g=$STATE/gpudev
        mkdir -p "$g"
        for ((i = 0; i < gpus; i++)); do mknod -m 0666 "$g/nvidia$i" c 195 "$i"; done
        mknod -m 0666 "$g/nvidiactl" c 195 255
        for ((i = gpus - 1; i >= 0; i--)); do echo "Name=gpu File=$g/nvidia$i"; done >"$STATE/etc/gres.conf"
        echo "GresTypes=gpu" >>"$STATE/etc/slurm.conf"
        gres=" Gres=gpu:$gpus"
    fi
    for ((i = 1; i <= n; i++)); do
        echo "NodeName=node$i NodeAddr=$(node_addr "$i") CPUs=${SLIPWAY_CLUSTER_CPUS:-2} RealMemory=1000$gres State=UNKNOWN"
    done >>"$STATE/etc/slurm.conf"
    sed -e "s|@CGROUP_PLUGIN@|$CGROUP_PLUGIN|g" "$HERE/cgroup.conf.in" >"$STATE/etc/cgroup.conf"
    cp "$HERE/mpi.conf" "$STATE/etc/mpi.conf"
    {
        echo "127.0.0.1 localhost"
        echo "$HOST_ADDR slipway-host"
        echo "$CTL_ADDR $CTL_HOST"
        for ((i = 1; i <= n; i++)); do echo "$(node_addr "$i") node$i"; done
    } >"$STATE/etc/hosts"
    chmod 0644 "$STATE"/etc/*
}

start_munge() {
    local m=$STATE/munge
    mkdir -p "$m"
    chmod 0755 "$m" # munged refuses a socket directory that others can write to
    dd if=/dev/urandom of="$m/munge.key" bs=1024 count=1 status=none
    chmod 0400 "$m/munge.key"
    # --force: munged runs as root here; this cluster has no munge user of its own.
    munged --force --socket="$m/munge.socket.2" --key-file="$m/munge.key" \
        --pid-file="$m/munged.pid" --log-file="$m/munged.log" --seed-file="$m/munged.seed" \
        || die "munged failed: $(tail -n 5 "$m/munged.log" 2>/dev/null)"
}

ensure_user() {
    if ! id "$TEST_USER" >/dev/null 2>&1; then
        useradd --create-home --shell /bin/bash "$TEST_USER"
    fi
    local home
    home=$(getent passwd "$TEST_USER" | cut -d: -f6)
    [[ -d $home ]] || { mkdir -p "$home" && chown "$TEST_USER": "$home"; }
}

# Prints the last log lines of every daemon: what a failed `up` needs to show.
show_logs() {
    local f
    for f in "$STATE/munge/munged.log" "$STATE/ctl/slurmctld.log" "$STATE"/nodes/*/slurmd.log; do
        [[ -f $f ]] || continue
        echo "---- $f (last 15 lines)" >&2
        tail -n 15 "$f" >&2
    done
}

cmd_up() {
    local n=${1:-4}
    # Addresses $NET.11 .. $NET.(10+N) on the bridge: at most 128 nodes (a slurmd is ~10 MiB).
    [[ $n =~ ^[1-9][0-9]{0,2}$ && $n -le 128 ]] || die "node count must be 1..128, got '$n'"
    [[ $(id -u) == 0 ]] || die "needs root"
    local p
    for p in munged slurmctld slurmd sinfo srun nsenter unshare ip; do
        command -v "$p" >/dev/null || die "$p not found (install munge, slurmctld, slurmd, slurm-client, iproute2, util-linux)"
    done
    if [[ -e $STATE/etc/slurm.conf ]]; then
        die "$STATE holds a cluster already: run '$0 down' first"
    fi
    local t0=$SECONDS
    # Whatever fails from here on, leave nothing half-started behind.
    trap up_failed EXIT
    mkdir -p "$STATE"
    chmod 0755 "$STATE"
    echo "$n" >"$STATE/nodes.count"
    # Names used, so that `down` removes exactly these even if the environment changed.
    printf 'BRIDGE=%q\nNAME=%q\n' "$BRIDGE" "$NAME" >"$STATE/names"
    choose_tracking
    write_config "$n"
    ensure_user

    # `ip netns add` makes /run/netns a mount point the first time; note whether that is us,
    # so `down` can undo it when no namespace is left.
    if ! mountpoint -q /run/netns 2>/dev/null; then
        touch "$STATE/run-netns-mounted-by-us"
    fi
    ip link add "$BRIDGE" type bridge
    ip addr add "$HOST_ADDR/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up

    start_munge

    mkdir -p "$STATE/ctl/state"
    make_netns "$NAME-ctl" "$CTL_ADDR" "$NAME-vctl"
    start_in_ns "$NAME-ctl" "$CTL_HOST" "" slurmctld -f "$STATE/etc/slurm.conf" -i

    local i
    for ((i = 1; i <= n; i++)); do
        mkdir -p "$STATE/nodes/node$i/spool" "$STATE/nodes/node$i/tmp"
        chmod 1777 "$STATE/nodes/node$i/tmp"
        make_netns "$NAME-node$i" "$(node_addr "$i")" "$NAME-v$i"
        start_in_ns "$NAME-node$i" "node$i" "$STATE/nodes/node$i/tmp" \
            slurmd -f "$STATE/etc/slurm.conf" -N "node$i"
    done

    export SLURM_CONF=$STATE/etc/slurm.conf
    local idle=0
    local tries=0 ns
    while ((SECONDS - t0 < TIMEOUT)); do
        idle=$(sinfo -h -N -t idle -o '%N' 2>/dev/null | sort -u | wc -l)
        ((idle == n)) && break
        # A daemon that died (bad config, plugin that fails to load) leaves its namespace
        # empty: say so now rather than at the timeout.
        if ((++tries % 10 == 0)); then
            while read -r ns; do
                [[ -n $(ip netns pids "$ns" 2>/dev/null) ]] || die "the daemon in netns $ns exited"
            done <"$STATE/netns.list"
        fi
        sleep 0.1
    done
    if ((idle != n)); then
        log "only $idle of $n nodes idle after ${TIMEOUT}s:"
        sinfo -N -o '%N %T %E' >&2 || true
        die "cluster did not come up"
    fi
    trap - EXIT
    log "up: $n nodes idle in $((SECONDS - t0))s ($PROCTRACK); eval \"\$($0 env)\""
}

up_failed() {
    log "up failed; the daemons' last log lines follow, then everything is taken down"
    show_logs
    cmd_down >/dev/null 2>&1 || true
}

# Kills the processes in pid files "$2..." together with signal $1, then KILL those still
# alive after 1 s (slurmd and slurmctld take about 2 s to exit on TERM; a test cluster has no
# state worth that wait).
kill_pidfiles() {
    local sig=$1 f pid pids=()
    shift
    for f in "$@"; do
        [[ -f $f ]] || continue
        pid=$(cat "$f" 2>/dev/null || true)
        rm -f "$f"
        [[ $pid =~ ^[0-9]+$ ]] && kill "-$sig" "$pid" 2>/dev/null && pids+=("$pid")
    done
    local i alive
    for ((i = 0; i < 10; i++)); do
        alive=0
        for pid in "${pids[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        ((alive)) || return 0
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
}

cmd_down() {
    [[ $(id -u) == 0 ]] || die "needs root"
    if [[ -f $STATE/names ]]; then
        # shellcheck disable=SC1091
        source "$STATE/names"
    fi
    local ns pids
    # slurmd first (its steps go with it), then slurmctld, then munged.
    kill_pidfiles TERM "$STATE"/nodes/*/slurmd.pid "$STATE/ctl/slurmctld.pid"
    # munged has nothing to save, and takes seconds to exit on TERM.
    kill_pidfiles KILL "$STATE/munge/munged.pid"
    # Anything still in our namespaces (a slurmstepd, a job's task, a daemon whose pid file was
    # never written): kill it. The namespace list is what `up` recorded, plus the names `up`
    # would use, so a half-written list still gets cleaned.
    local all_ns
    all_ns=$( {
        cat "$STATE/netns.list" 2>/dev/null || true
        ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$NAME-(ctl|node[0-9]+)$" || true
    } | sort -u)
    for ns in $all_ns; do
        [[ -e /run/netns/$ns ]] || continue
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        if [[ -n $pids ]]; then
            # shellcheck disable=SC2086
            kill -KILL $pids 2>/dev/null || true
        fi
    done
    for ns in $all_ns; do
        local i
        for ((i = 0; i < 50; i++)); do
            [[ -z $(ip netns pids "$ns" 2>/dev/null) ]] && break
            sleep 0.1
        done
        ip netns del "$ns" 2>/dev/null || true
    done
    # munged without a pid file (killed before it wrote one): find it by its socket argument.
    pids=$(pgrep -f -- "--socket=$STATE/munge/munge.socket.2" || true)
    if [[ -n $pids ]]; then
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
    fi
    # Veths vanish with their namespace; the bridge is ours to delete.
    ip link del "$BRIDGE" 2>/dev/null || true
    if [[ -e $STATE/run-netns-mounted-by-us ]] && mountpoint -q /run/netns 2>/dev/null &&
        [[ -z $(ls -A /run/netns 2>/dev/null) ]]; then
        umount /run/netns 2>/dev/null || true
    fi
    # Host-side mounts under the state directory: none are made, but an interrupted run of an
    # older script, or a user's experiment, may have left some.
    local m
    while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done < <(awk -v s="$STATE" '$5 == s || index($5, s "/") == 1 {print $5}' /proc/self/mountinfo | sort -r)
    # Empty cgroups that slurmd made (cgroup/v1: /slurm_<node> in each controller).
    local n=0
    n=$(cat "$STATE/nodes.count" 2>/dev/null || echo 0)
    if [[ -d /sys/fs/cgroup/freezer ]]; then
        local c i
        for c in /sys/fs/cgroup/*/; do
            for ((i = 1; i <= n; i++)); do
                [[ -d $c/slurm_node$i ]] || continue
                find "$c/slurm_node$i" -depth -type d -exec rmdir {} + 2>/dev/null || true
            done
        done
    fi
    if [[ ${SLIPWAY_CLUSTER_KEEP:-0} == 1 ]]; then
        log "down; state kept in $STATE (SLIPWAY_CLUSTER_KEEP=1)"
        rm -f "$STATE/etc/slurm.conf"
    else
        rm -rf "$STATE"
        log "down"
    fi
}

cmd_restart() {
    local i=${1:-}
    local pidfile=$STATE/nodes/node$i/slurmd.pid log=$STATE/nodes/node$i/slurmd.log
    [[ $i =~ ^[0-9]+$ && -f $pidfile ]] || die "no node '$i' runs here"
    # shellcheck disable=SC1091
    source "$STATE/names"
    local pid started mnt uts ipc
    pid=$(cat "$pidfile")
    started=$(grep -c 'started on' "$log" || true)
    # Hold the node's namespaces while no slurmd is in them (a job's slurmstepd may not be).
    exec {mnt}<"/proc/$pid/ns/mnt" {uts}<"/proc/$pid/ns/uts" {ipc}<"/proc/$pid/ns/ipc"
    kill_pidfiles TERM "$pidfile"
    # Gone, or a zombie nobody reaps yet (its port and files are closed either way).
    local t0=$SECONDS
    while kill -0 "$pid" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; do
        ((SECONDS - t0 < 10)) || die "node$i's slurmd (pid $pid) did not exit"
        sleep 0.1
    done
    nsenter --net="/run/netns/$NAME-node$i" --mount="/proc/$$/fd/$mnt" \
        --uts="/proc/$$/fd/$uts" --ipc="/proc/$$/fd/$ipc" \
        slurmd -f "$STATE/etc/slurm.conf" -N "node$i"
    exec {mnt}<&- {uts}<&- {ipc}<&-
    t0=$SECONDS
    until (($(grep -c 'started on' "$log" || true) > started)); do
        ((SECONDS - t0 < TIMEOUT)) || die "node$i's slurmd did not start again in ${TIMEOUT}s"
        sleep 0.1
    done
    log "node$i: slurmd restarted"
}

cmd_status() {
    [[ -f $STATE/etc/slurm.conf ]] || {
        echo "no cluster in $STATE"
        return 1
    }
    local f pid
    for f in "$STATE/munge/munged.pid" "$STATE/ctl/slurmctld.pid" "$STATE"/nodes/*/slurmd.pid; do
        pid=$(cat "$f" 2>/dev/null || true)
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
            echo "running  $pid  $f"
        else
            echo "DEAD         $f"
        fi
    done
    echo "netns: $(tr '\n' ' ' <"$STATE/netns.list" 2>/dev/null)"
    SLURM_CONF=$STATE/etc/slurm.conf sinfo -N -o '%N %T %E' || true
}

cmd_env() {
    echo "export SLURM_CONF=$STATE/etc/slurm.conf"
    echo "export SLIPWAY_CLUSTER_DIR=$STATE"
}

case ${1:-} in
up) shift && cmd_up "$@" ;;
down) cmd_down ;;
restart) shift && cmd_restart "$@" ;;
status) cmd_status ;;
env) cmd_env ;;
_ns-exec) shift && ns_exec "$@" ;;
*)
    echo "usage: $0 up [N] | down | restart I | status | env" >&2
    exit 2
    ;;
esac
