#!/bin/sh
# Sets up what rk needs, builds it, and runs `rk server` with the default paths
# (/var/lib/rk, /etc/rk/rk.yaml). Extra arguments go to `rk server`.
set -e
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release --locked
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
exec $SUDO ./target/release/rk server "$@"
