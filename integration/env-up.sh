#!/usr/bin/env bash
# Bring up the real test environment; safe to run any number of times.
#   - Debian packages (install-deps.sh)
#   - bridge lxcbr0: no uplink, no address (the busybox template's config links to it)
#   - libvirtd with the LXC driver, started in a private mount namespace without the
#     cgroup v2 / name=systemd mounts (see shared/notes/kernel-facts.md), answering on
#     lxc:///system.
# No systemd is assumed to be PID 1: nothing here uses systemctl.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_root

STATE_DIR=/run/lxc-cr-test          # markers of what this script created
LIBVIRTD_LOG=/var/log/libvirt/libvirtd.log
mkdir -p "$STATE_DIR"

"$LXCCR_TOP/integration/install-deps.sh"

# --- bridge ----------------------------------------------------------------------------
if ! ip link show dev "$LXCCR_BRIDGE" >/dev/null 2>&1; then
    log "creating bridge $LXCCR_BRIDGE (no uplink, no address)"
    ip link add name "$LXCCR_BRIDGE" type bridge
    touch "$STATE_DIR/bridge-created"
fi
ip link set dev "$LXCCR_BRIDGE" up

# --- libvirtd prerequisites --------------------------------------------------------------
# The qemu driver (pulled in by libvirt-daemon) refuses to load without its user.
if ! getent group libvirt-qemu >/dev/null; then
    groupadd --system libvirt-qemu
fi
if ! getent passwd libvirt-qemu >/dev/null; then
    useradd --system --gid libvirt-qemu --no-create-home --home-dir /var/lib/libvirt \
        --shell /usr/sbin/nologin libvirt-qemu
fi
mkdir -p /var/log/libvirt /var/run/libvirt /var/lib/libvirt

# --- libvirtd ----------------------------------------------------------------------------
virsh_answers() {
    timeout 10 virsh -q -c "$LXCCR_URI" list --all >/dev/null 2>&1
}

# pids of running libvirtd daemons (exact command name, no pattern over command lines)
libvirtd_pids() {
    local d
    for d in /proc/[0-9]*; do
        [ "$(cat "$d/comm" 2>/dev/null)" = libvirtd ] && alive "${d#/proc/}" && echo "${d#/proc/}"
    done
    return 0
}

# A libvirtd that can still see the host's cgroup v2 mount cannot start LXC domains.
started_our_way() {
    ! grep -qE ' /sys/fs/cgroup/(unified|systemd) ' "/proc/$1/mountinfo" 2>/dev/null
}

# alive PID: exists and is not a zombie
alive() {
    local st
    st="$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null)"
    [ -n "$st" ] && [ "$st" != Z ]
}

# wait_gone SECONDS PID...: 0 once none of the pids is alive
wait_gone() {
    local n=$(($1 * 5)) pid any
    shift
    while [ "$n" -gt 0 ]; do
        any=0
        for pid in "$@"; do alive "$pid" && any=1; done
        [ "$any" -eq 0 ] && return 0
        sleep 0.2
        n=$((n - 1))
    done
    return 1
}

stop_libvirtd() {
    local pid
    for pid in "$@"; do
        log "stopping libvirtd pid $pid"
        kill -TERM "$pid" 2>/dev/null || true
        kill -CONT "$pid" 2>/dev/null || true     # a stopped one cannot act on TERM
    done
    wait_gone 10 "$@" && return 0
    for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait_gone 10 "$@" || die "libvirtd (pid $*) does not exit"
}

start_libvirtd() {
    log "starting libvirtd (private mount namespace, log $LIBVIRTD_LOG)"
    # Detach fully: no inherited stdio, so callers capturing output never hang on it.
    LIBVIRT_LOG_OUTPUTS="3:file:$LIBVIRTD_LOG" setsid \
        unshare -m --propagation private sh -c \
        'umount -l /sys/fs/cgroup/unified 2>/dev/null; umount -l /sys/fs/cgroup/systemd 2>/dev/null; exec libvirtd -d' \
        </dev/null >>"$LIBVIRTD_LOG" 2>&1
}

mapfile -t pids < <(libvirtd_pids)
if [ "${#pids[@]}" -gt 0 ]; then
    restart=0
    for pid in "${pids[@]}"; do
        if ! started_our_way "$pid"; then
            log "libvirtd pid $pid sees the host's cgroup v2 mount: LXC domains would fail"
            restart=1
        fi
    done
    if [ "${1:-}" = --restart-libvirtd ]; then
        log "restarting libvirtd (it reads its hook scripts when it starts)"
        restart=1
    fi
    if [ "$restart" -eq 0 ] && ! virsh_answers; then
        log "libvirtd (pid ${pids[*]}) runs but does not answer on $LXCCR_URI"
        restart=1
    fi
    if [ "$restart" -eq 1 ]; then
        stop_libvirtd "${pids[@]}"
        pids=()
    fi
fi
if [ "${#pids[@]}" -eq 0 ]; then
    start_libvirtd
    touch "$STATE_DIR/libvirtd-started"
fi

for i in $(seq 1 60); do
    if virsh_answers; then
        exit 0
    fi
    sleep 0.5
done
tail -n 20 "$LIBVIRTD_LOG" >&2 || true
die "libvirtd does not answer on $LXCCR_URI after 30 s (log: $LIBVIRTD_LOG)"
