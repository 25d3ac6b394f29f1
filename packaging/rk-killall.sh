#!/bin/sh
# rk-killall.sh: stops rk and everything it started on this machine, and removes
# what it set up in the kernel, leaving the data dir in place (rk-uninstall.sh
# removes that). Like k3s-killall.sh: for maintenance, or before an uninstall.
#
# What it stops: the rk service (rk, rk-agent), every process started from the rk data
# dir or its containerd state dir (rk itself, its containerd, the shims), and the
# containers of rk's pods (cgroups /rk/pod<uid>). What it removes: the mounts under
# those dirs (container root filesystems, pod network namespaces), the pods' cgroups,
# the nftables table `ip rk`, the routes rk added between nodes (protocol 82), the VXLAN
# link rk-vxlan and the cluster DNS address (link rk-dns, or the address labelled
# lo:rk-dns).
#
# Environment:
#   RK_DATA_DIR   rk's data dir (default /var/lib/rk)
#   RK_STATE_DIR  its containerd state dir (default /run/rk for the default data dir,
#                 else $RK_DATA_DIR/run)
set -u

DATA_DIR=${RK_DATA_DIR:-/var/lib/rk}
if [ -n "${RK_STATE_DIR:-}" ]; then
    STATE_DIR=$RK_STATE_DIR
elif [ "$DATA_DIR" = /var/lib/rk ]; then
    STATE_DIR=/run/rk
else
    STATE_DIR=$DATA_DIR/run
fi

if [ "$(id -u)" != 0 ]; then
    echo "rk-killall.sh: run as root" >&2
    exit 1
fi

if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ] && [ "$DATA_DIR" = /var/lib/rk ]; then
    for unit in rk rk-agent; do
        systemctl stop "$unit" 2>/dev/null || true
    done
fi

# Processes whose command line names the data or state dir (rk, containerd, shims).
mentions() {
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        [ "$pid" = "$$" ] && continue
        if tr '\0' ' ' <"$d/cmdline" 2>/dev/null | grep -q -e "$DATA_DIR" -e "$STATE_DIR"; then
            echo "$pid"
        fi
    done
}

# Processes in the cgroups of rk's pods.
pod_uids() {
    for d in "$DATA_DIR"/agent/pods/*; do
        [ -d "$d" ] && basename "$d"
    done
    for d in "$DATA_DIR"/agent/pod-logs/* /var/log/pods/*; do
        [ -d "$d" ] || continue
        case "$DATA_DIR:$d" in
            /var/lib/rk:/var/log/pods/*) ;;
            *:/var/log/pods/*) continue ;;
        esac
        basename "$d" | sed 's/.*_//'
    done
}

in_pods() {
    uids=$(pod_uids | sort -u)
    [ -z "$uids" ] && return
    for d in /proc/[0-9]*; do
        cg=$(cat "$d/cgroup" 2>/dev/null) || continue
        for u in $uids; do
            case "$cg" in
                *"/rk/pod$u"*) echo "${d#/proc/}" ;;
            esac
        done
    done
}

# The rk install.sh started without systemd (its pid files in the data dir).
started() {
    for f in "$DATA_DIR"/rk*.pid; do
        [ -f "$f" ] && cat "$f"
    done
}

for _ in 1 2 3; do
    pids="$(started) $(mentions) $(in_pods)"
    for p in $pids; do
        kill -9 "$p" 2>/dev/null || true
    done
    sleep 0.3
done

# Mounts under the data and state dirs, deepest first.
awk -v a="$DATA_DIR" -v b="$STATE_DIR" 'index($5, a) == 1 || index($5, b) == 1 { print length($5), $5 }' /proc/self/mountinfo |
    sort -rn | cut -d' ' -f2- | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done

# The pods' cgroups.
for u in $(pod_uids | sort -u); do
    for root in /sys/fs/cgroup /sys/fs/cgroup/*; do
        d=$root/rk/pod$u
        [ -d "$d" ] || continue
        find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
done
rmdir /sys/fs/cgroup/rk /sys/fs/cgroup/*/rk 2>/dev/null || true

# The network: rk's nftables table, its routes, the cluster DNS address.
if command -v nft >/dev/null 2>&1; then
    nft delete table ip rk 2>/dev/null || true
fi
ip route flush proto 82 2>/dev/null || true
ip link delete rk-dns 2>/dev/null || true
ip link delete rk-vxlan 2>/dev/null || true
ip -o -4 addr show dev lo label lo:rk-dns 2>/dev/null | awk '{ print $4 }' | while read -r a; do
    ip addr del "$a" dev lo 2>/dev/null || true
done

exit 0
