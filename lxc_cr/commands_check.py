"""``lxc-cr check TARGET``: the dump's own preflight, without freezing anything.

TARGET is a PID, ``lxc:NAME`` or ``libvirt:DOMAIN``.  Prints one line per resource that
cannot be checkpointed (``pid 42 (nginx) fd 7: io_uring instance: not supported``) and per
environment problem; exits 1 if anything blocks, 0 otherwise.
"""

from __future__ import annotations

import os
import shutil

from lxc_cr.errors import UsageError


def resolve_target(target: str) -> tuple[int, str, str]:
    """(root host pid, source kind, name) of a check/dump target."""
    if target.startswith("lxc:"):
        from lxc_cr.runtime import lxc as lxc_rt
        name = target[4:]
        return lxc_rt.init_pid(name), "lxc", name
    if target.startswith("libvirt:"):
        from lxc_cr.runtime import libvirt as virt_rt
        name = target[8:]
        return virt_rt.init_pid(name), "libvirt", name
    try:
        pid = int(target)
    except ValueError:
        raise UsageError(f"bad target {target!r}: expected PID, lxc:NAME or libvirt:DOMAIN") from None
    if pid <= 0:
        raise UsageError(f"invalid pid {pid}")
    return pid, "tree", str(pid)


def environment_problems(tasks) -> list[str]:
    out = []
    if os.geteuid() != 0:
        out.append("lxc-cr must run as root")
    caps = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                caps = int(line.split()[1], 16)
    for cap, name in ((19, "CAP_SYS_PTRACE"), (21, "CAP_SYS_ADMIN")):
        if not caps & (1 << cap):
            out.append(f"missing capability {name}")
    if not os.path.exists("/proc/self/map_files"):
        out.append("kernel lacks CONFIG_CHECKPOINT_RESTORE (/proc/PID/map_files)")
    return out


def estimated_size(tasks) -> int:
    total = 0
    for t in tasks:
        if t.zombie:
            continue
        total += t.stat.rss * 4096
    return total


def preflight(target: str, image_dir: str | None = None) -> tuple[list[str], int, int]:
    """(one line per problem, number of processes, bytes to dump) of TARGET; the disk space
    is checked where the image goes (IMAGE_DIR, or its nearest existing parent)."""
    pid, kind, _ = resolve_target(target)
    return preflight_pid(pid, kind != "tree", image_dir)


def preflight_pid(pid: int, managed: bool, image_dir: str | None = None
                  ) -> tuple[list[str], int, int]:
    """:func:`preflight` of the tree rooted at PID (``managed``: a container's init, whose
    mounts are its manager's)."""
    from lxc_cr.dump import check_tree, discover
    from lxc_cr.kernel.procfs import Proc
    proc = Proc()
    tasks = discover(proc, pid)
    problems, _ = check_tree(proc, tasks, managed=managed)
    lines = [str(p) for p in problems] + environment_problems(tasks)
    need = estimated_size(tasks)
    where = image_dir or os.getcwd()
    while not os.path.isdir(where) and os.path.dirname(where) != where:
        where = os.path.dirname(where)
    free = shutil.disk_usage(where).free
    if need > free:
        lines.append(f"not enough disk space in {where}: about {need} bytes needed, {free} free")
    return lines, len(tasks), need


def run(args) -> int:
    lines, ntasks, need = preflight(args.target, getattr(args, "image_dir", None))
    for line in lines:
        print(line)
    if args.verbose and not lines:
        print(f"{ntasks} processes, about {need} bytes of memory to dump: ok")
    return 1 if lines else 0
