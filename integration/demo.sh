#!/usr/bin/env bash
# The demo behind `make demo`: a busybox LXC container's life, shown step by step.
# Extend it by adding steps between "started" and "stop" (checkpoint, restore, ...);
# everything it creates is named lxccr-test-<pid>-demo and removed on exit.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_root

LXC_CR="$LXCCR_TOP/.venv/bin/lxc-cr"
CT="${LXCCR_PREFIX}$$-demo"
CTL="$LXCCR_TOP/integration/lxc-container.sh"

n=0
step() {
    n=$((n + 1))
    if [ -t 1 ]; then printf '\n\033[1m== %d. %s\033[0m\n' "$n" "$*"; else printf '\n== %d. %s\n' "$n" "$*"; fi
}
show() {                       # show CMD...: print the command, then run it
    printf '$ %s\n' "$*"
    "$@"
}

WORK="$(mktemp -d /tmp/lxccr-demo.XXXXXX)"
TREE_PID=""
cleanup() {
    "$CTL" destroy "$CT" || true
    [ -n "$TREE_PID" ] && kill -9 "$TREE_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

"$LXCCR_TOP/integration/env-up.sh"

step "lxc-cr command line"
show "$LXC_CR" --help

# --- a plain process tree --------------------------------------------------------------
step "a process tree in its own pid namespace: a shell counting into a file"
cat > "$WORK/tree.sh" <<'SH'
i=0; while true; do i=$((i+1)); echo $i > "$1"; sleep 0.2; done
SH
setsid unshare --pid --fork --mount-proc sh "$WORK/tree.sh" "$WORK/tree-counter" \
    </dev/null >/dev/null 2>&1 &
for _ in $(seq 50); do [ -s "$WORK/tree-counter" ] && break; sleep 0.1; done
root=$(cat /proc/$!/task/$!/children | cut -d' ' -f1)
echo "tree root: host pid $root, counter $(cat "$WORK/tree-counter")"
show "$LXC_CR" check "$root"
show "$LXC_CR" tree dump "$root" "$WORK/tree.img" --print-stats
echo "counter at the checkpoint: $(cat "$WORK/tree-counter") (the tree is gone: $(kill -0 "$root" 2>&1 || true))"
show "$LXC_CR" inspect "$WORK/tree.img"
TREE_PID=$(show "$LXC_CR" tree restore "$WORK/tree.img" | tail -n 1)
echo "restored root: host pid $TREE_PID"
sleep 1
echo "counter one second after the restore: $(cat "$WORK/tree-counter")"
kill -9 "$TREE_PID"; TREE_PID=""

# --- an LXC container -----------------------------------------------------------------
step "create a busybox container ($CT) whose rcS starts syslogd and a counter"
show "$CTL" create "$CT"
rootfs="$(lxc-config lxc.lxcpath)/$CT/rootfs"
cat > "$rootfs/etc/init.d/rcS" <<'SH'
#!/bin/sh
/bin/syslogd
/bin/sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.2; done' </dev/null >/dev/null 2>&1 &
SH
show lxc-info -n "$CT"

step "start it"
show "$CTL" start "$CT"
sleep 1
show lxc-info -n "$CT"
show lxc-attach -n "$CT" -- /bin/ps

step "checkpoint it with lxc-checkpoint -s (stops it)"
show "$LXCCR_TOP/.venv/bin/lxc-checkpoint" -n "$CT" -D "$WORK/ct" -s
echo "counter at the checkpoint: $(cat "$rootfs/tmp/counter")"
show lxc-info -n "$CT"

step "restore it with lxc-checkpoint -r"
show "$LXCCR_TOP/.venv/bin/lxc-checkpoint" -n "$CT" -D "$WORK/ct" -r
show lxc-info -n "$CT"
sleep 1
echo "counter one second after the restore: $(cat "$rootfs/tmp/counter")"
show lxc-attach -n "$CT" -- /bin/ps

step "stop it"
show "$CTL" stop "$CT"
show lxc-info -n "$CT"

step "remove it"
show "$CTL" destroy "$CT"
trap - EXIT
printf '\ndemo: done\n'
