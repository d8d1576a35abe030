#!/usr/bin/env bash
# Slipway's test command (the README's, and what CI runs): installs what the tests need,
# builds everything, and runs every test. Run as root on Debian 12.
# SLIPWAY_TESTS_MUST_RUN=1 turns every skipped test into a failure (CI sets it).
set -euo pipefail
cd "$(dirname "$0")/.."

./tests/setup.sh
cargo build --workspace --all-targets
cargo test --workspace --no-fail-fast "$@"
