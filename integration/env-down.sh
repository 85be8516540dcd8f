#!/usr/bin/env bash
# Remove what the tests created, and nothing of the host's.
#   env-down.sh              containers/domains named lxccr-test-* whose test run is gone
#   env-down.sh --all        every lxccr-test-* container/domain, even of a live run
#   env-down.sh --services   also stop the libvirtd and delete the lxcbr0 that env-up.sh
#                            started/created (never ones it found already there)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_root

all=0 services=0
for a in "$@"; do
    case "$a" in
        --all) all=1 ;;
        --services) services=1; all=1 ;;
        *) die "usage: $0 [--all] [--services]" ;;
    esac
done

mine() { [ "$all" -eq 1 ] || ! owner_alive "$1"; }
rc=0

while read -r dom; do
    [ -n "$dom" ] || continue
    mine "$dom" || continue
    log "removing libvirt domain $dom"
    if virsh_ok; then
        timeout 60 virsh -q -c "$LXCCR_URI" destroy "$dom" >/dev/null 2>&1 || true
        timeout 60 virsh -q -c "$LXCCR_URI" undefine "$dom" >/dev/null 2>&1 || true
    else
        log "libvirtd does not answer: $dom left defined"; rc=1
    fi
done < <(test_domains)

while read -r ct; do
    [ -n "$ct" ] || continue
    mine "$ct" || continue
    log "removing LXC container $ct"
    "$LXCCR_TOP/integration/lxc-container.sh" destroy "$ct" || rc=1
done < <(test_containers)

# libvirt leaves NAME.{dev,devpts,fuse} (empty dirs) and NAME.sock in /run/libvirt/lxc
# after a domain ends; drop those of test domains that are no longer running.
for f in /run/libvirt/lxc/"${LXCCR_PREFIX}"*; do
    [ -e "$f" ] || continue
    base="$(basename "$f")"
    dom="${base%.*}"
    [ -e "/run/libvirt/lxc/$dom.xml" ] && continue      # still running
    mine "$dom" || continue
    case "$base" in
        *.dev|*.devpts|*.fuse) rmdir "$f" 2>/dev/null || true ;;
        *.sock) rm -f "$f" ;;
    esac
done

if [ "$services" -eq 1 ]; then
    STATE_DIR=/run/lxc-cr-test
    if [ -e "$STATE_DIR/libvirtd-started" ]; then
        for d in /proc/[0-9]*; do
            if [ "$(cat "$d/comm" 2>/dev/null)" = libvirtd ]; then
                log "stopping libvirtd pid ${d#/proc/}"
                kill -TERM "${d#/proc/}" 2>/dev/null || true
            fi
        done
        rm -f "$STATE_DIR/libvirtd-started"
    fi
    if [ -e "$STATE_DIR/bridge-created" ] && ip link show dev "$LXCCR_BRIDGE" >/dev/null 2>&1; then
        log "deleting bridge $LXCCR_BRIDGE"
        ip link del dev "$LXCCR_BRIDGE" || rc=1
        rm -f "$STATE_DIR/bridge-created"
    fi
fi
exit "$rc"
