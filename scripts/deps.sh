#!/bin/sh
# Installs what building and testing rk needs on Debian (idempotent).
set -e
missing=""
command -v protoc >/dev/null 2>&1 || missing="$missing protobuf-compiler"
command -v etcd >/dev/null 2>&1 || missing="$missing etcd-server"
command -v cc >/dev/null 2>&1 || missing="$missing build-essential"
if [ -n "$missing" ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
if ! command -v kubectl >/dev/null 2>&1; then
    echo "scripts/deps.sh: kubectl is not installed; the kubectl tests need it at /usr/bin/kubectl" >&2
    exit 1
fi
