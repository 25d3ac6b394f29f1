#!/bin/sh
# Installs what building and testing rk needs on Debian (idempotent).
set -e
missing=""
command -v protoc >/dev/null 2>&1 || missing="$missing protobuf-compiler"
command -v etcd >/dev/null 2>&1 || missing="$missing etcd-server"
command -v cc >/dev/null 2>&1 || missing="$missing build-essential"
# Below the agent: containerd and runc, the CNI plugins (bridge, host-local, portmap),
# iptables for the CNI plugins' rules; busybox-static for the test image.
command -v containerd >/dev/null 2>&1 || missing="$missing containerd"
command -v runc >/dev/null 2>&1 || missing="$missing runc"
[ -x /usr/lib/cni/bridge ] || [ -x /opt/cni/bin/bridge ] || missing="$missing containernetworking-plugins"
command -v iptables >/dev/null 2>&1 || missing="$missing iptables"
command -v nft >/dev/null 2>&1 || missing="$missing nftables"
# conntrack: the service proxy flushes UDP flows to endpoints that went.
command -v conntrack >/dev/null 2>&1 || missing="$missing conntrack"
[ -x /bin/busybox ] && /bin/busybox --list >/dev/null 2>&1 || missing="$missing busybox-static"
# The install and operations tests: shellcheck for install.sh, systemd-analyze for the
# units, openssl to read the certificate a server presents.
command -v shellcheck >/dev/null 2>&1 || missing="$missing shellcheck"
command -v systemd-analyze >/dev/null 2>&1 || missing="$missing systemd"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
# The Python client test: python3 with venv, the client itself from PyPI below.
command -v python3 >/dev/null 2>&1 || missing="$missing python3"
python3 -c "import ensurepip" >/dev/null 2>&1 || missing="$missing python3-venv"
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
# The official Kubernetes Python client, in a venv of its own (RK_PYENV).
pyenv="${RK_PYENV:-$HOME/.cache/rk/pyclient}"
if ! "$pyenv/bin/python" -c "import kubernetes" >/dev/null 2>&1; then
    python3 -m venv "$pyenv"
    "$pyenv/bin/pip" install -q --disable-pip-version-check kubernetes==37.0.2
fi
