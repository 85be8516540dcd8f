#!/usr/bin/env bash
# Fail if a finished test run left lxccr-test-* containers, domains or processes behind.
#   check-clean.sh          only objects whose test run is gone (safe beside a live run)
#   check-clean.sh --all    every lxccr-test-* object
set -euo pipefail
. "$(dirname "$0")/lib.sh"

all=0
[ "${1:-}" = --all ] && all=1
left() { [ "$all" -eq 1 ] || ! owner_alive "$1"; }

stray=()
while read -r x; do
    [ -n "$x" ] && left "$x" && stray+=("LXC container $x")
done < <(test_containers)
while read -r x; do
    [ -n "$x" ] && left "$x" && stray+=("libvirt domain $x")
done < <(test_domains)
while read -r pid name; do
    [ -n "$pid" ] && left "$name" && stray+=("process $pid ($(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | cut -c1-100))")
done < <(test_processes)

if [ "${#stray[@]}" -gt 0 ]; then
    printf 'check-clean: left behind: %s\n' "${stray[@]}" >&2
    exit 1
fi
echo "check-clean: no ${LXCCR_PREFIX}* containers, domains or processes left"
