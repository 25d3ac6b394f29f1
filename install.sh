#!/bin/sh
# rk installer: a lightweight Kubernetes in one binary.
#
#   curl -sfL https://github.com/rk-k8s/rk/releases/latest/download/install.sh | sh -
#   sudo ./install.sh                 (from a source checkout: builds rk from it)
#
# A server by default; with RK_URL set, an agent that joins it (RK_TOKEN required):
#   curl -sfL .../install.sh | RK_URL=https://server:6443 RK_TOKEN=K10... sh -
# Re-running it upgrades in place, keeping the data dir.
#
# Environment variables:
#   INSTALL_RK_SKIP_DOWNLOAD  true: download and build nothing; use the rk already in
#                             BIN_DIR (as k3s's INSTALL_K3S_SKIP_DOWNLOAD).
#   INSTALL_RK_VERSION        The release to download (a tag such as v0.1.0); default:
#                             the latest. Given, it also makes a checkout download
#                             rather than build.
#   INSTALL_RK_BIN_DIR        Where rk, rk-killall.sh and rk-uninstall.sh go
#                             (default /usr/local/bin).
#   INSTALL_RK_SYSTEMD_DIR    Where the systemd unit and its env file go
#                             (default /etc/systemd/system).
#   INSTALL_RK_EXEC           The command and flags for rk: `server ...`, `agent ...`,
#                             or just flags (then `server`, or `agent` with RK_URL).
#   INSTALL_RK_NAME           The service's name: rk-<NAME>; default rk for a server,
#                             rk-agent for an agent.
#   INSTALL_RK_SKIP_ENABLE    true: do not enable the service at boot.
#   INSTALL_RK_SKIP_START     true: do not start (or restart) the service.
#   INSTALL_RK_SYMLINK        skip: make no kubectl link; force: link kubectl to rk
#                             even if a kubectl exists; default: link it only when
#                             there is none (`kubectl` then runs rk's kubectl wrapper).
#   INSTALL_RK_DOWNLOAD_URL   Where releases are (default
#                             https://github.com/rk-k8s/rk/releases); the binary is
#                             <URL>/download/<VERSION>/rk-<arch>, with a .sha256 beside it,
#                             and rk-killall.sh.
#   INSTALL_RK_SKIP_DEPS      true: do not install containerd, runc, the CNI plugins,
#                             nftables and conntrack when they are missing.
#   INSTALL_RK_LOG            Log file when there is no systemd (default /var/log/rk.log).
#   RK_URL, RK_TOKEN, RK_*    Go into the service's env file (mode 0600), where rk reads
#                             them as its flags (RK_TOKEN is --token, ...).
set -e

info() { echo "[INFO]  $*"; }
warn() { echo "[WARN]  $*" >&2; }
fatal() {
    echo "[ERROR] $*" >&2
    exit 1
}

# --- where things go ---------------------------------------------------------------
BIN_DIR=${INSTALL_RK_BIN_DIR:-/usr/local/bin}
SYSTEMD_DIR=${INSTALL_RK_SYSTEMD_DIR:-/etc/systemd/system}
DOWNLOAD_URL=${INSTALL_RK_DOWNLOAD_URL:-https://github.com/rk-k8s/rk/releases}
LOG_FILE=${INSTALL_RK_LOG:-/var/log/rk.log}
# rk's own paths, as the service will see them (RK_DATA_DIR and RK_WRITE_KUBECONFIG
# go into its env file like every RK_* variable).
DATA_DIR=${RK_DATA_DIR:-/var/lib/rk}
KUBECONFIG_FILE=${RK_WRITE_KUBECONFIG:-/etc/rk/rk.yaml}

is_true() { [ "$1" = true ]; }

# --- server or agent, and the command line -----------------------------------------
setup_command() {
    exec_args=${INSTALL_RK_EXEC:-}
    case "$exec_args" in
        server | server\ * | agent | agent\ *) ;;
        *)
            if [ -n "${RK_URL:-}" ]; then
                exec_args="agent${exec_args:+ $exec_args}"
            else
                exec_args="server${exec_args:+ $exec_args}"
            fi
            ;;
    esac
    CMD=${exec_args%% *}
    if [ "$CMD" = agent ]; then
        [ -n "${RK_URL:-}" ] || case "$exec_args" in
            *--join* | *--server*) ;;
            *) fatal "an agent needs RK_URL (the server, https://SERVER:6443)" ;;
        esac
        [ -n "${RK_TOKEN:-}" ] || [ -n "${RK_TOKEN_FILE:-}" ] ||
            fatal "RK_URL is set, so this is an agent install: RK_TOKEN is required (the server's /var/lib/rk/server/token)"
        case "${RK_URL:-https://}" in
            https://*) ;;
            *) fatal "RK_URL must start with https:// (got ${RK_URL})" ;;
        esac
    fi
    if [ -n "${INSTALL_RK_NAME:-}" ]; then
        SERVICE=rk-${INSTALL_RK_NAME}
    elif [ "$CMD" = agent ]; then
        SERVICE=rk-agent
    else
        SERVICE=rk
    fi
    UNIT_FILE=${SYSTEMD_DIR}/${SERVICE}.service
    ENV_FILE=${SYSTEMD_DIR}/${SERVICE}.service.env
    # Without systemd, the pid of the rk this script started.
    PID_FILE=${DATA_DIR}/${SERVICE}.pid
}

# --- privileges and systemd -----------------------------------------------------------
setup_env() {
    SUDO=
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || fatal "run as root (or install sudo)"
        SUDO=sudo
    fi
    HAS_SYSTEMD=false
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        HAS_SYSTEMD=true
    fi
    ARCH=$(uname -m)
    case "$ARCH" in
        amd64 | x86_64) ARCH=amd64 ;;
        arm64 | aarch64) ARCH=arm64 ;;
        *) fatal "unsupported architecture $ARCH" ;;
    esac
    # A source checkout: this script sits beside rk's Cargo.toml.
    SRC_DIR=
    case "$0" in
        */install.sh | install.sh)
            d=$(cd "$(dirname "$0")" 2>/dev/null && pwd) || d=
            if [ -n "$d" ] && [ -f "$d/Cargo.toml" ] && grep -q '^name = "rk"' "$d/Cargo.toml"; then
                SRC_DIR=$d
            fi
            ;;
    esac
}

# --- what rk needs below it -----------------------------------------------------------
install_deps() {
    is_true "${INSTALL_RK_SKIP_DEPS:-}" && return
    missing=
    command -v containerd >/dev/null 2>&1 || missing="$missing containerd"
    command -v runc >/dev/null 2>&1 || missing="$missing runc"
    [ -x /usr/lib/cni/bridge ] || [ -x /opt/cni/bin/bridge ] || missing="$missing containernetworking-plugins"
    command -v nft >/dev/null 2>&1 || missing="$missing nftables"
    command -v conntrack >/dev/null 2>&1 || missing="$missing conntrack"
    [ -z "$missing" ] && return
    if command -v apt-get >/dev/null 2>&1; then
        info "Installing what rk needs:$missing"
        $SUDO apt-get update -qq
        # shellcheck disable=SC2086 # one word per package
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
    elif command -v dnf >/dev/null 2>&1; then
        info "Installing what rk needs:$missing"
        # shellcheck disable=SC2086 # one word per package
        $SUDO dnf install -y $missing
    else
        warn "install these with your package manager, rk needs them:$missing"
    fi
}

# --- getting the binary ---------------------------------------------------------------
download() {
    # download URL FILE
    if command -v curl >/dev/null 2>&1; then
        curl -sfL -o "$2" "$1"
    elif command -v wget >/dev/null 2>&1; then
        wget -qO "$2" "$1"
    else
        fatal "neither curl nor wget is installed"
    fi
}

release_url() {
    if [ -n "${INSTALL_RK_VERSION:-}" ]; then
        echo "${DOWNLOAD_URL}/download/${INSTALL_RK_VERSION}/$1"
    else
        echo "${DOWNLOAD_URL}/latest/download/$1"
    fi
}

download_rk() {
    TMP_DIR=$(mktemp -d -t rk-install.XXXXXXXX)
    trap 'rm -rf "$TMP_DIR"' EXIT
    url=$(release_url "rk-${ARCH}")
    info "Downloading $url"
    download "$url" "$TMP_DIR/rk" || fatal "no rk release at $url: from a source checkout, run sudo ./install.sh there to build it"
    download "$url.sha256" "$TMP_DIR/rk.sha256" || fatal "no checksum at $url.sha256"
    want=$(cut -d' ' -f1 <"$TMP_DIR/rk.sha256")
    got=$(sha256sum "$TMP_DIR/rk" | cut -d' ' -f1)
    [ "$want" = "$got" ] || fatal "checksum mismatch for $url: expected $want, got $got"
    info "Verified the sha256 of rk ($got)"
    url=$(release_url rk-killall.sh)
    download "$url" "$TMP_DIR/rk-killall.sh" || fatal "no rk-killall.sh at $url"
    NEW_RK=$TMP_DIR/rk
    NEW_KILLALL=$TMP_DIR/rk-killall.sh
}

build_rk() {
    command -v cargo >/dev/null 2>&1 || fatal "building rk from $SRC_DIR needs cargo (a Rust toolchain, https://rustup.rs)"
    command -v protoc >/dev/null 2>&1 || {
        info "Installing protobuf-compiler (the build needs protoc)"
        $SUDO apt-get install -y -qq protobuf-compiler >/dev/null
    }
    info "Building rk from $SRC_DIR (a release build takes a few minutes the first time)"
    target=${CARGO_TARGET_DIR:-$SRC_DIR/target}
    rm -f "$target/release/rk.installing"
    # Progress: one line per crate compiled.
    (cd "$SRC_DIR" && cargo build --release --locked 2>&1 && touch "$target/release/rk.installing") | while read -r line; do
        case "$line" in
            *Compiling* | *Finished* | *error* | *warning:*) echo "        $line" ;;
        esac
    done
    if [ ! -f "$target/release/rk.installing" ] || [ ! -x "$target/release/rk" ]; then
        fatal "the build failed: run cargo build --release in $SRC_DIR to see why"
    fi
    rm -f "$target/release/rk.installing"
    NEW_RK=$target/release/rk
    NEW_KILLALL=$SRC_DIR/packaging/rk-killall.sh
}

get_rk() {
    NEW_RK=
    NEW_KILLALL=
    if is_true "${INSTALL_RK_SKIP_DOWNLOAD:-}"; then
        [ -x "$BIN_DIR/rk" ] || fatal "INSTALL_RK_SKIP_DOWNLOAD=true, but there is no executable $BIN_DIR/rk"
        info "Skipping the download: using $BIN_DIR/rk"
        [ -n "$SRC_DIR" ] && NEW_KILLALL=$SRC_DIR/packaging/rk-killall.sh
    elif [ -n "$SRC_DIR" ] && [ -z "${INSTALL_RK_VERSION:-}" ]; then
        build_rk
    else
        download_rk
    fi
    $SUDO mkdir -p "$BIN_DIR"
    if [ -n "$NEW_RK" ]; then
        # Replace, never overwrite in place: a running rk keeps its old binary.
        $SUDO cp "$NEW_RK" "$BIN_DIR/.rk.new"
        $SUDO chmod 755 "$BIN_DIR/.rk.new"
        $SUDO mv -f "$BIN_DIR/.rk.new" "$BIN_DIR/rk"
        info "Installed $BIN_DIR/rk ($("$BIN_DIR/rk" --version))"
    fi
    if [ -n "$NEW_KILLALL" ] && [ -f "$NEW_KILLALL" ]; then
        $SUDO cp "$NEW_KILLALL" "$BIN_DIR/rk-killall.sh"
        $SUDO chmod 755 "$BIN_DIR/rk-killall.sh"
        info "Installed $BIN_DIR/rk-killall.sh"
    fi
}

# --- the kubectl link -------------------------------------------------------------------
create_symlinks() {
    case "${INSTALL_RK_SYMLINK:-}" in
        skip) return ;;
        force) ;;
        *)
            if command -v kubectl >/dev/null 2>&1 && [ "$(command -v kubectl)" != "$BIN_DIR/kubectl" ]; then
                info "Skipping the kubectl link: $(command -v kubectl) exists (rk kubectl uses it)"
                return
            fi
            ;;
    esac
    [ -e "$BIN_DIR/kubectl" ] && [ ! -L "$BIN_DIR/kubectl" ] && {
        info "Skipping the kubectl link: $BIN_DIR/kubectl exists"
        return
    }
    $SUDO ln -sf rk "$BIN_DIR/kubectl"
    info "Linked $BIN_DIR/kubectl to rk (runs kubectl with rk's admin kubeconfig)"
}

# --- uninstall script ---------------------------------------------------------------------
create_uninstall() {
    info "Writing $BIN_DIR/rk-uninstall.sh"
    # The system-wide places belong to the default install only.
    if [ "$DATA_DIR" = /var/lib/rk ]; then
        system_dirs="/etc/rk /run/rk /var/log/pods"
    else
        system_dirs=
    fi
    if [ "$SYSTEMD_DIR" = /etc/systemd/system ]; then
        use_systemctl=true
    else
        use_systemctl=false
    fi
    $SUDO tee "$BIN_DIR/rk-uninstall.sh" >/dev/null <<EOF
#!/bin/sh
# rk-uninstall.sh: stops rk and removes it, its service and all of its data.
set -x
[ "\$(id -u)" -eq 0 ] || exec sudo "\$0" "\$@"

# Stop rk first (the service, or the rk started without systemd), then the rest.
systemd=false
if $use_systemctl && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemd=true
    systemctl stop "$SERVICE" || true
fi
if [ -f "$PID_FILE" ]; then
    kill "\$(cat "$PID_FILE")" 2>/dev/null || true
fi
RK_DATA_DIR="$DATA_DIR" "$BIN_DIR/rk-killall.sh"

if \$systemd; then
    systemctl disable "$SERVICE" || true
    systemctl reset-failed "$SERVICE" || true
fi
rm -f "$UNIT_FILE" "$ENV_FILE"
if \$systemd; then
    systemctl daemon-reload || true
fi
[ -L "$BIN_DIR/kubectl" ] && [ "\$(readlink "$BIN_DIR/kubectl")" = rk ] && rm -f "$BIN_DIR/kubectl"
rm -rf $system_dirs "$DATA_DIR" "$LOG_FILE" "$KUBECONFIG_FILE"
rm -f "$BIN_DIR/rk" "$BIN_DIR/rk-killall.sh"
rm -f "$BIN_DIR/rk-uninstall.sh"
EOF
    $SUDO chmod 755 "$BIN_DIR/rk-uninstall.sh"
}

# --- the service ----------------------------------------------------------------------------
create_env_file() {
    info "Writing $ENV_FILE (mode 0600)"
    $SUDO mkdir -p "$SYSTEMD_DIR"
    umask_was=$(umask)
    umask 077
    # RK_* as systemd reads them: KEY='value', quotes escaped.
    env | grep '^RK_' | LC_ALL=C sort | sed -e "s/'/'\\\\''/g" -e "s/=/='/" -e "s/\$/'/" | $SUDO tee "$ENV_FILE" >/dev/null
    umask "$umask_was"
    $SUDO chmod 0600 "$ENV_FILE"
}

create_unit() {
    info "Writing $UNIT_FILE"
    if [ "$CMD" = agent ]; then
        description="rk agent - lightweight Kubernetes node"
    else
        description="rk - lightweight Kubernetes"
    fi
    $SUDO tee "$UNIT_FILE" >/dev/null <<EOF
[Unit]
Description=$description
Documentation=https://github.com/rk-k8s/rk
Wants=network-online.target
After=network-online.target

[Install]
WantedBy=multi-user.target

[Service]
Type=notify
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
EnvironmentFile=-$ENV_FILE
KillMode=process
Delegate=yes
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStartPre=-/sbin/modprobe overlay
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStart=$BIN_DIR/rk $exec_args
EOF
    $SUDO chmod 0644 "$UNIT_FILE"
}

# Whether the API server in the kubeconfig rk wrote answers /readyz (anonymous).
ready() {
    [ -f "$KUBECONFIG_FILE" ] || return 1
    server=$(sed -n 's/^ *server: *//p' "$KUBECONFIG_FILE" | head -n 1)
    [ -n "$server" ] || return 1
    if command -v curl >/dev/null 2>&1; then
        curl -sfk -o /dev/null "$server/readyz"
    else
        wget -q --no-check-certificate -O /dev/null "$server/readyz"
    fi
}

start_service() {
    if [ "$HAS_SYSTEMD" = true ] && [ "$SYSTEMD_DIR" = /etc/systemd/system ]; then
        $SUDO systemctl daemon-reload
        if ! is_true "${INSTALL_RK_SKIP_ENABLE:-}"; then
            info "Enabling $SERVICE"
            $SUDO systemctl enable "$SERVICE" >/dev/null 2>&1
        fi
        if ! is_true "${INSTALL_RK_SKIP_START:-}"; then
            info "Starting $SERVICE (systemctl waits until it is ready)"
            $SUDO systemctl restart "$SERVICE"
            info "$SERVICE is running: journalctl -u $SERVICE shows its logs"
        fi
        return
    fi
    is_true "${INSTALL_RK_SKIP_START:-}" && return
    # No systemd: run rk in the background, as the service would. An upgrade first
    # stops the rk this script started before (its pods keep running).
    if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
        old=$(cat "$PID_FILE")
        info "Stopping the rk started earlier (pid $old)"
        $SUDO kill "$old"
        i=0
        while kill -0 "$old" 2>/dev/null && [ $i -lt 150 ]; do
            sleep 0.1
            i=$((i + 1))
        done
    fi
    info "No systemd here: starting rk in the background, logging to $LOG_FILE"
    $SUDO mkdir -p "$DATA_DIR"
    $SUDO sh -c "set -a; . '$ENV_FILE'; set +a; nohup '$BIN_DIR/rk' $exec_args >>'$LOG_FILE' 2>&1 </dev/null & echo \$! >'$PID_FILE'"
    pid=$(cat "$PID_FILE")
    if [ "$CMD" = server ]; then
        info "Waiting for the API server"
        i=0
        until ready; do
            kill -0 "$pid" 2>/dev/null || fatal "rk exited: see $LOG_FILE"
            [ $i -lt 600 ] || fatal "rk did not become ready within 60s: see $LOG_FILE"
            sleep 0.1
            i=$((i + 1))
        done
        info "rk is running (pid $pid); try: $BIN_DIR/rk kubectl get nodes"
    else
        info "rk agent is running (pid $pid); logs in $LOG_FILE"
    fi
}

# --- main -------------------------------------------------------------------------------------
{
    setup_command
    setup_env
    install_deps
    get_rk
    create_symlinks
    create_uninstall
    create_env_file
    create_unit
    start_service
}
