#!/usr/bin/env bash
# Installs Slipway's PBS hook on a PBS Professional / OpenPBS server: the job resources users
# ask for (`qsub -l container=app.sif ...`), the hook, its events and its configuration.
# Run it as root on the server host; PBS copies the hook and its configuration to every MoM.
# Running it again updates the hook and its configuration and keeps the resources.
#
#   packaging/pbs/setup-pbs.sh [--dry-run] [--hook PATH] [--config PATH |
#                              --slipway PATH --policy PATH] [--order N] [--qmgr PATH]
#
# See docs/pbs.md (the guide) and docs/pbs-hook.md (what the hook does).
set -euo pipefail

HOOK_NAME=slipway
EVENTS="queuejob,execjob_begin,execjob_launch,execjob_end"
# The hook runs `slipway pbs begin` with a 25 s limit: keep the alarm above it.
ALARM=30
# name:type. flag=m: without it PBS does not send the resource to the MoMs, and the MoM
# hooks (execjob_begin, execjob_launch, execjob_end) would never see the job's request.
RESOURCES="container:string container_nv:boolean container_rocm:boolean
container_mounts:string container_workdir:string"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
hook="$here/../../pbs-hook/slipway_hook.py"
config=""
slipway=/usr/bin/slipway
policy=""
order=900
qmgr=""
dry_run=0
config_opts=""

usage() {
    cat <<EOF
Usage: $0 [options]

Creates the resources container (string), container_nv, container_rocm (boolean),
container_mounts, container_workdir (string), all with flag=m; creates the hook
'$HOOK_NAME' (events $EVENTS, alarm $ALARM s), imports the hook file and its configuration,
and enables it.

Options:
  --dry-run        print the commands (a script you can run), change nothing
  --hook PATH      the hook file (default: pbs-hook/slipway_hook.py beside this script)
  --config PATH    the hook's configuration file to import (JSON); without it, one is
                   written from --slipway and --policy
  --slipway PATH   the slipway binary on the nodes (default /usr/bin/slipway)
  --policy PATH    the policy file slipway enforces (default: slipway's own,
                   /etc/slipway/policy.toml, with built-in defaults when it is missing)
  --order N        the hook's order among the site's hooks, 1-1000 (default $order: late, so
                   that the launch it wraps is the one the other hooks decided)
  --qmgr PATH      qmgr (default: qmgr on PATH, else \$PBS_EXEC/bin/qmgr from /etc/pbs.conf)
  -h, --help       this text
EOF
}

die() {
    echo "setup-pbs.sh: $*" >&2
    exit 1
}

need_value() {
    if [ $# -lt 2 ] || [ -z "$2" ]; then
        die "$1 needs a value (see --help)"
    fi
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --hook | --config | --slipway | --policy | --order | --qmgr)
            need_value "$@"
            case "$1" in
                --hook) hook=$2 ;;
                --config) config=$2 ;;
                --slipway) slipway=$2 config_opts+=" $1" ;;
                --policy) policy=$2 config_opts+=" $1" ;;
                --order) order=$2 ;;
                --qmgr) qmgr=$2 ;;
            esac
            shift
            ;;
        --hook=* | --config=* | --slipway=* | --policy=* | --order=* | --qmgr=*)
            set -- "${1%%=*}" "${1#*=}" "${@:2}"
            continue
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done

# A path qmgr reads as one word, or that goes into JSON as it is.
plain_path() {
    case "$2" in
        /*) ;;
        *) [ "$1" = --hook ] || [ "$1" = --config ] || die "$1 $2: not an absolute path" ;;
    esac
    case "$2" in
        *[[:space:][:cntrl:]\'\"\\,]*)
            die "$1 '$2': a path with spaces, quotes, backslashes or commas; use a plain one" ;;
    esac
}

case "$order" in
    '' | *[!0-9]*) die "--order $order: not a number from 1 to 1000" ;;
esac
if [ "$order" -lt 1 ] || [ "$order" -gt 1000 ]; then
    die "--order $order: not a number from 1 to 1000"
fi
plain_path --hook "$hook"
if [ -n "$config" ]; then
    plain_path --config "$config"
    [ -z "$config_opts" ] || die "--config with$config_opts: give one or the other"
else
    plain_path --slipway "$slipway"
    [ -z "$policy" ] || plain_path --policy "$policy"
fi

if [ -f "$hook" ]; then
    hook="$(cd "$(dirname "$hook")" && pwd -P)/$(basename "$hook")"
elif [ "$dry_run" = 0 ]; then
    die "--hook $hook: no such file"
fi
if [ -n "$config" ] && [ "$dry_run" = 0 ]; then
    [ -f "$config" ] || die "--config $config: no such file"
fi

if [ "$dry_run" = 0 ]; then
    if [ -z "$qmgr" ]; then
        if command -v qmgr >/dev/null; then
            qmgr=qmgr
        else
            conf=${PBS_CONF_FILE:-/etc/pbs.conf}
            pbs_exec=$(sed -n 's/^[[:space:]]*PBS_EXEC=//p' "$conf" 2>/dev/null | tail -n 1) || true
            if [ -z "$pbs_exec" ] || [ ! -x "$pbs_exec/bin/qmgr" ]; then
                die "qmgr not found (not on PATH, no PBS_EXEC in $conf); give --qmgr PATH"
            fi
            qmgr=$pbs_exec/bin/qmgr
        fi
    fi
fi

# One qmgr command: run it (echoed first), or print it under --dry-run.
q() {
    if [ "$dry_run" = 1 ]; then
        printf "qmgr -c '%s'\n" "$1"
    else
        printf "+ qmgr -c '%s'\n" "$1"
        "$qmgr" -c "$1"
    fi
}

# Creates a resource, or checks the one that exists: the right type, and flag m.
resource() {
    local name=$1 type=$2 out have_type have_flag
    if [ "$dry_run" = 0 ] && out=$("$qmgr" -c "list resource $name" 2>/dev/null); then
        have_type=$(printf '%s\n' "$out" | sed -n 's/^[[:space:]]*type = //p')
        have_flag=$(printf '%s\n' "$out" | sed -n 's/^[[:space:]]*flag = //p')
        [ "$have_type" = "$type" ] ||
            die "resource $name exists with type=$have_type, not $type: remove it or rename yours"
        case "$have_flag" in
            *m*) ;;
            *) die "resource $name exists without flag m (flag=${have_flag:-none}): the MoM" \
                "hooks cannot see it. Add it: qmgr -c 'set resource $name flag=${have_flag}m'" ;;
        esac
        echo "resource $name exists (type=$type, flag=$have_flag): kept"
        return
    fi
    q "create resource $name type=$type,flag=m"
}

[ "$dry_run" = 1 ] && echo "# Slipway's PBS hook: run on the PBS server host, as root."

for r in $RESOURCES; do
    resource "${r%%:*}" "${r#*:}"
done

if [ "$dry_run" = 0 ] && "$qmgr" -c "list hook $HOOK_NAME" >/dev/null 2>&1; then
    echo "hook $HOOK_NAME exists: updating it"
else
    q "create hook $HOOK_NAME"
fi
q "set hook $HOOK_NAME event = \"$EVENTS\""
q "set hook $HOOK_NAME order = $order"
q "set hook $HOOK_NAME alarm = $ALARM"
q "import hook $HOOK_NAME application/x-python default $hook"

json="{\"slipway\": \"$slipway\"${policy:+, \"policy\": \"$policy\"}}"
if [ -n "$config" ]; then
    q "import hook $HOOK_NAME application/x-config default $config"
elif [ "$dry_run" = 1 ]; then
    echo "cat > slipway.json <<'EOF'"
    echo "$json"
    echo "EOF"
    q "import hook $HOOK_NAME application/x-config default slipway.json"
else
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    echo "$json" >"$tmp/slipway.json"
    echo "hook configuration: $json"
    q "import hook $HOOK_NAME application/x-config default $tmp/slipway.json"
fi
# Last: the hook runs only once its file and its configuration are in place.
q "set hook $HOOK_NAME enabled = true"

if [ "$dry_run" = 0 ]; then
    "$qmgr" -c "list hook $HOOK_NAME"
    echo "done: users can now run qsub -l container=IMAGE ... (docs/pbs.md)"
fi
