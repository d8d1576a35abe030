#!/bin/bash
# old-glibc-image.sh OUT_DIR: a Debian 11 "bullseye" root filesystem (glibc 2.31, older than
# Debian 12's 2.36) in OUT_DIR, which must not exist yet.
#
# Made by debootstrap (package `debootstrap`; needs root) from $SLIPWAY_DEBIAN_MIRROR (default
# http://deb.debian.org/debian), Release signature checked against debian-archive-keyring.
# Only the first stage runs (--foreign), with a suite script naming exactly the 12 packages
# the tree needs: libc6 and what it loads, dash (/bin/sh), coreutils (cat, env, ls, id, head)
# and its libraries, base-files (/etc/os-release, /tmp 1777). Nothing is configured, there is
# no dpkg or apt, and no /etc/passwd or /etc/group (the runtime adds the user, and Slurm's own
# users where the host client needs them): a full `--variant=minbase` fetches and installs 96
# packages (27 s, 215 MB); this takes about 3 s and makes 22 MB. /bin, /lib, /lib64 and /sbin
# are symlinks into /usr (merged /usr). /dev is empty (the runtime provides /dev); /proc, /sys,
# /run and /home are empty directories. /marker says "slipway-old-image". No .debs, package lists or
# /debootstrap are left, nor the host's /etc/resolv.conf and /etc/hostname. The tree's own
# tools are run in a chroot before the script says it is done. On failure OUT_DIR is removed
# and the last line names the step that failed.
set -euo pipefail
me=old-glibc-image.sh
OUT=${1:?usage: $me OUT_DIR}
MIRROR=${SLIPWAY_DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
# libc6 needs libgcc-s1 (needs gcc-10-base) and libcrypt1; coreutils loads the other five.
PACKAGES=(libc6 libgcc-s1 gcc-10-base libcrypt1 dash coreutils libacl1 libattr1 libgmp10
    libselinux1 libpcre2-8-0 base-files)

fail() {
    echo "$me: $*" >&2
    exit 1
}

DEBOOTSTRAP=$(command -v debootstrap || echo /usr/sbin/debootstrap)
[[ -x $DEBOOTSTRAP ]] || fail "debootstrap not installed (apt-get install debootstrap)"
[[ -r $KEYRING ]] || fail "$KEYRING missing (apt-get install debian-archive-keyring)"
[[ $(id -u) == 0 ]] || fail "needs root (debootstrap and chroot)"
[[ ! -e $OUT && ! -L $OUT ]] || fail "$OUT already exists"

WORK=$(mktemp -d /var/tmp/slipway-old-image.XXXXXX)
step="mkdir $OUT"
created=0
on_exit() {
    local rc=$?
    rm -rf "$WORK"
    if [[ $rc != 0 ]]; then
        # --one-file-system: never reach into something mounted inside the tree.
        [[ $created == 1 ]] && rm -rf --one-file-system -- "$OUT"
        echo "$me: $step failed (exit $rc); $OUT not made" >&2
    fi
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -- "$OUT"
created=1

# A suite script is debootstrap's own way to define a distribution (debootstrap(8), SCRIPT):
# the one for bullseye (scripts/sid) with our package list in place of "Priority: required".
cat >"$WORK/bullseye-small" <<EOF
mirror_style release
download_style apt
finddebs_style from-indices
variants -
keyring $KEYRING
. "\$DEBOOTSTRAP_DIR/scripts/debian-common"
work_out_debs () {
	required="${PACKAGES[*]}"
	base=""
}
EOF

step="debootstrap bullseye from $MIRROR (log above)"
if ! "$DEBOOTSTRAP" --foreign --no-resolve-deps --force-check-gpg --merged-usr --arch=amd64 \
    bullseye "$OUT" "$MIRROR" "$WORK/bullseye-small" >"$WORK/log" 2>&1; then
    tail -n 20 "$WORK/log" >&2
    exit 1
fi

step="cleaning the tree"
# Downloads, package lists and debootstrap's second stage; translations and documentation
# (11 of 34 MB); host files copied by setup_etc.
rm -rf "$OUT/debootstrap" "$OUT/var/cache/apt/archives" "$OUT/var/lib/apt/lists" \
    "$OUT"/usr/share/{locale,man,doc,info}
rm -f "$OUT/etc/resolv.conf" "$OUT/etc/hostname"
mkdir -p "$OUT/var/cache/apt/archives/partial" "$OUT/var/lib/apt/lists/partial"
# Inside a container debootstrap makes /proc a symlink to the host's /proc, and it mknods a
# few nodes in /dev: both become empty directories, as the runtime mounts its own.
for d in proc dev; do
    if [[ -L $OUT/$d ]]; then rm -f "$OUT/$d"; else rm -rf --one-file-system "${OUT:?}/$d"; fi
done
mkdir -p "$OUT"/{proc,sys,dev,run,home,tmp}
chmod 755 "$OUT"/{proc,sys,dev,run,home}
chmod 1777 "$OUT/tmp"
echo slipway-old-image >"$OUT/marker"
chmod 644 "$OUT/marker"

step="checking the tree (chroot $OUT)"
# shellcheck disable=SC2016 # $VERSION_CODENAME is the tree's, expanded by its own sh
check=$(chroot "$OUT" /bin/sh -c '
    set -e
    /bin/cat /marker
    /usr/bin/env /usr/bin/id -u
    /bin/ls -d /tmp
    . /etc/os-release && echo "$VERSION_CODENAME"
    /lib/x86_64-linux-gnu/libc.so.6 | /usr/bin/head -n 1' </dev/null 2>&1) || true
expected="slipway-old-image
0
/tmp
bullseye"
if [[ $check != "$expected"$'\n'*"release version 2.31."* ]]; then
    printf '%s\n' "$check" >&2
    exit 1
fi
echo "$me: $OUT (Debian 11, glibc 2.31, $(du -sh "$OUT" | cut -f1))"
