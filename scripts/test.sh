#!/bin/sh
# Runs rk's whole test suite: unit, store conformance, API integration (kube-rs and
# kubectl against an in-process server), and the kill -9 durability test.
set -e
cd "$(dirname "$0")/.."
scripts/deps.sh
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --locked --no-fail-fast
else
    cargo test --locked --no-fail-fast
fi
