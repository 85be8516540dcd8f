"""``lxc-cr hooks install|uninstall|status``: what lxc-cr registers with its managers.

* libvirt: ``/etc/libvirt/hooks/lxc.d/lxc-cr`` (from hooks/libvirt/lxc-cr) refuses a plain
  ``virsh start`` of a domain that has an lxc-cr managed save, saying how to resume or
  discard it.  libvirtd reads lxc.d/ when it starts: restart libvirtd after installing.
* LXC: nothing is written into container configs.  A restore passes its start-host hook
  (hooks/lxc/start-host) on the lxc-start command line for that one start only.
"""

from __future__ import annotations

import filecmp
import os
import shutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBVIRT_HOOK_DIR = "/etc/libvirt/hooks/lxc.d"
INSTALLS = [
    # (what, source in the repo, installed path)
    ("libvirt lxc hook", os.path.join(REPO, "hooks", "libvirt", "lxc-cr"),
     os.path.join(LIBVIRT_HOOK_DIR, "lxc-cr")),
]


def _state(src: str, dst: str) -> str:
    if not os.path.exists(dst):
        return "not installed"
    return "installed" if filecmp.cmp(src, dst, shallow=False) else "installed (differs)"


def install() -> list[str]:
    out = []
    for what, src, dst in INSTALLS:
        os.makedirs(os.path.dirname(dst), mode=0o755, exist_ok=True)
        tmp = dst + ".lxc-cr-tmp"
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o755)
        os.rename(tmp, dst)
        out.append(f"{what}: installed {dst}")
    out.append("libvirt reads its hooks when libvirtd starts: restart libvirtd to enable it")
    return out


def uninstall() -> list[str]:
    out = []
    for what, _src, dst in INSTALLS:
        try:
            os.unlink(dst)
            out.append(f"{what}: removed {dst}")
        except FileNotFoundError:
            out.append(f"{what}: not installed")
    return out


def status() -> list[str]:
    lines = [f"{what}: {_state(src, dst)} ({dst})" for what, src, dst in INSTALLS]
    lines.append("lxc start-host hook: passed per restore on the lxc-start command line "
                 f"({os.path.join(REPO, 'hooks', 'lxc', 'start-host')})")
    return lines


def run(args) -> int:
    lines = {"install": install, "uninstall": uninstall, "status": status}[args.hooks_cmd]()
    for line in lines:
        print(line)
    return 0
