#!/usr/bin/env bash
# Manage a busybox LXC test container (works offline, template config unchanged).
#   lxc-container.sh create NAME     lxc-create -t busybox (no-op if it exists)
#   lxc-container.sh start NAME      lxc-start, wait until RUNNING
#   lxc-container.sh stop NAME       kill it (lxc-stop -k), wait until STOPPED
#   lxc-container.sh destroy NAME    stop if running, lxc-destroy (no-op if absent)
# NAME must start with lxccr-test-.  LXCPATH=... selects another lxcpath.
# Why stop kills: the template's rcS runs udhcpc in the foreground, and busybox init blocks
# its halt signal (SIGUSR1) until rcS ends, which never happens on a bridge with no DHCP
# server; a clean lxc-stop would always wait for its 60 s timeout.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_root

[ $# -eq 2 ] || die "usage: $0 create|start|stop|destroy NAME"
cmd="$1" name="$2"
check_prefix "$name"
P=(${LXCPATH:+-P "$LXCPATH"})

exists() { lxc-info "${P[@]}" -n "$name" >/dev/null 2>&1 && \
           [ -e "${LXCPATH:-$(lxc-config lxc.lxcpath)}/$name/config" ]; }
state() { lxc-info "${P[@]}" -n "$name" -sH 2>/dev/null || echo ABSENT; }

case "$cmd" in
create)
    if exists; then
        exit 0
    fi
    out="$(lxc-create "${P[@]}" -t busybox -n "$name" 2>&1)" || {
        printf '%s\n' "$out" >&2
        die "lxc-create -t busybox -n $name failed"
    }
    ;;
start)
    exists || die "no container $name"
    if [ "$(state)" != RUNNING ]; then
        lxc-start "${P[@]}" -n "$name" </dev/null >/dev/null
        lxc-wait "${P[@]}" -n "$name" -s RUNNING -t 30 || die "$name did not reach RUNNING"
    fi
    ;;
stop)
    exists || die "no container $name"
    if [ "$(state)" != STOPPED ]; then
        lxc-stop "${P[@]}" -n "$name" -k
        lxc-wait "${P[@]}" -n "$name" -s STOPPED -t 30 || die "$name did not reach STOPPED"
    fi
    ;;
destroy)
    if ! exists; then
        exit 0
    fi
    if [ "$(state)" != STOPPED ]; then
        lxc-stop "${P[@]}" -n "$name" -k >/dev/null 2>&1 || true
        lxc-wait "${P[@]}" -n "$name" -s STOPPED -t 30 || true
    fi
    lxc-destroy "${P[@]}" -n "$name" -f >/dev/null
    ;;
*)
    die "usage: $0 create|start|stop|destroy NAME"
    ;;
esac
