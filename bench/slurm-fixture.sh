# Sourced by bench/slurm.sh and bench/scale.sh (not run alone): the release build of the
# plugin and slipway, and a trusted fixture directory $W holding a static `true` (on the host
# and in img.sif) and a policy admitting it. Sets SO, SLIPWAY, W and USER_, and an EXIT trap
# that takes the cluster down and removes $W. $1: the fixture directory (outside /tmp: every
# node has its own /tmp; root-owned: a trusted directory).
USER_=${SLIPWAY_CLUSTER_USER:-slipuser}
cargo build --quiet --release -p spank-slipway -p slipway >&2
SO=$PWD/target/release/libspank_slipway.so
SLIPWAY=$PWD/target/release/slipway
W=$1
rm -rf "$W"
install -d -m 755 "$W" "$W/tree" "$W/tree/bin" "$W/tree/tmp"
chmod 1777 "$W/tree/tmp"
printf 'int main(void) { return 0; }\n' >"$W/true.c"
gcc -static -O2 -o "$W/tree/bin/true" "$W/true.c"
cp "$W/tree/bin/true" "$W/true"
"$SLIPWAY" build -q --force "$W/img.sif" "$W/tree"
chmod 644 "$W/img.sif"
printf '[images]\nallowed = ["%s/**"]\ntrusted_dirs = ["%s"]\n' "$W" "$W" >"$W/policy.toml"
chmod 644 "$W/policy.toml"
cleanup() { "$ROOT/tests/cluster/cluster.sh" down >/dev/null 2>&1 || true; rm -rf "$W"; }
trap cleanup EXIT
