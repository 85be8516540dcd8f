#!/usr/bin/env bash
# Install the Debian packages lxc-cr and its tests need.  Idempotent and quick when
# everything is already installed: apt-get update runs only if a package is missing.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_root

PACKAGES=(
    lxc lxc-templates busybox-static python3-lxc
    libvirt-daemon libvirt-daemon-driver-lxc libvirt-clients python3-libvirt
    gcc libc6-dev iproute2 nftables
    python3-venv python3-cryptography
    systemd   # systemd-analyze verifies lxc-cr's units (tests/integration/test_host_reboot.py)
)

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

log "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q </dev/null
apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}" </dev/null
