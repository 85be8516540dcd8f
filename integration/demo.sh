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

cleanup() {
    "$CTL" destroy "$CT" || true
}
trap cleanup EXIT

"$LXCCR_TOP/integration/env-up.sh"

step "lxc-cr command line"
show "$LXC_CR" --help

step "create a busybox container ($CT)"
show "$CTL" create "$CT"
show lxc-info -n "$CT"

step "start it"
show "$CTL" start "$CT"
show lxc-info -n "$CT"
show lxc-attach -n "$CT" -- /bin/ps

# --- later steps (checkpoint / restore) go here -------------------------------------------

step "stop it"
show "$CTL" stop "$CT"
show lxc-info -n "$CT"

step "remove it"
show "$CTL" destroy "$CT"
trap - EXIT
printf '\ndemo: done\n'
