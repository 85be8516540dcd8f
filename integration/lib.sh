# Shared helpers for the integration scripts.  Source it; do not run it.
# shellcheck shell=bash

LXCCR_PREFIX="${LXCCR_PREFIX:-lxccr-test-}"
LXCCR_URI="${LXCCR_URI:-lxc:///system}"
LXCCR_BRIDGE="${LXCCR_BRIDGE:-lxcbr0}"
LXCCR_TOP="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
die() { printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

require_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root"
}

# check_prefix NAME: refuse to touch anything the tests did not create.
check_prefix() {
    case "$1" in
        "$LXCCR_PREFIX"*) ;;
        *) die "refusing to touch '$1': test objects are named ${LXCCR_PREFIX}*" ;;
    esac
}

# Test objects are named  lxccr-test-<pid of the test run>-<label>  so that several runs
# can share a machine: an object belongs to a live run while that pid exists.  Objects
# named otherwise (lxccr-test-<label>) have no owner and count as orphans.
owner_alive() {
    local rest="${1#"$LXCCR_PREFIX"}" pid
    pid="${rest%%-*}"
    [[ "$pid" =~ ^[0-9]+$ ]] && [ -d "/proc/$pid" ]
}

# virsh_ok: libvirtd answers on $LXCCR_URI
virsh_ok() {
    timeout 10 virsh -q -c "$LXCCR_URI" list --all >/dev/null 2>&1
}

# test_containers: LXC containers named with the prefix (default lxcpath or $LXCPATH)
test_containers() {
    command -v lxc-ls >/dev/null || return 0
    lxc-ls -1 ${LXCPATH:+-P "$LXCPATH"} 2>/dev/null | grep "^${LXCCR_PREFIX}" || true
}

# test_domains: libvirt domains (running or defined) named with the prefix
test_domains() {
    command -v virsh >/dev/null || return 0
    if virsh_ok; then
        timeout 30 virsh -q -c "$LXCCR_URI" list --all --name 2>/dev/null \
            | grep "^${LXCCR_PREFIX}" || true
    else
        local f
        for f in /etc/libvirt/lxc/"${LXCCR_PREFIX}"*.xml; do
            [ -e "$f" ] && basename "$f" .xml
        done
        return 0
    fi
}

# test_processes: "PID NAME" for processes whose command line names a test object
# (LXC monitors, libvirt_lxc controllers, anything else started with such a name)
test_processes() {
    local d pid cmd name
    for d in /proc/[0-9]*; do
        pid="${d#/proc/}"
        [ "$pid" = "$$" ] && continue
        [ "$pid" = "${BASHPID:-$$}" ] && continue
        cmd="$(tr '\0' ' ' 2>/dev/null <"$d/cmdline")" || continue
        case "$cmd" in
            *"$LXCCR_PREFIX"*)
                name="$(grep -o "${LXCCR_PREFIX}[A-Za-z0-9_.-]*" <<<"$cmd" | head -n 1)"
                echo "$pid $name"
                ;;
        esac
    done
    return 0
}
