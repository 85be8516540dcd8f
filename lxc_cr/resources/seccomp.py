"""Seccomp: not checkpointed, so a thread that depends on it is refused before anything is
frozen, rather than restored without its sandbox.

``/proc/PID/task/TID/status`` says ``Seccomp:`` 0 (none), 1 (strict mode) or 2 (filters),
and ``Seccomp_filters:`` how many filters the thread has (each seccomp(2) call adds one;
a fork or clone inherits them).  The filters' BPF programs are not dumped.

- ``tree dump``: a thread in strict mode, or with more filters than lxc-cr itself has, is
  refused: ``pid 42 (app) thread 43: seccomp filter (2): not supported`` (``(1 of its own,
  3 in all)`` when lxc-cr has filters too).  Filters that lxc-cr has too (a sandbox around
  the whole system) come back by themselves: the restored tree is forked from lxc-cr,
  which inherits them again.
- A manager's container (LXC ``lxc.seccomp.profile``, libvirt): the manager applies its
  profile to the container's init before that init's exec, which is where lxc-cr takes
  over a restored container, so every restored process inherits it again.  A thread with
  more filters than the container's init has filters of its own, and is refused.

Filters are counted, not compared: a thread with as many filters as the reference but
different ones would pass.
"""

from __future__ import annotations

import os

from lxc_cr.errors import TaskGone, Unsupported


def _mode(proc, host_pid: int, tid: int) -> tuple[int, int]:
    st = proc.status(host_pid, tid=tid)
    return int(st.get("Seccomp", "0") or 0), int(st.get("Seccomp_filters", "0") or 0)


def check(proc, tasks, managed: bool) -> list[Unsupported]:
    """Every thread of ``tasks`` (tasks[0]: the root) that depends on seccomp."""
    out = []
    root = tasks[0]
    try:
        ref = root.host_pid if managed else os.getpid()
        allowed = _mode(proc, ref, ref)[1]
    except TaskGone:
        return out
    for t in tasks:
        if t.zombie:
            continue
        try:
            tids = proc.tids(t.host_pid)
            for tid in tids:
                mode, n = _mode(proc, t.host_pid, tid)
                where = f"thread {tid}" if tid != t.host_pid else None
                if mode == 1:
                    out.append(Unsupported(t.host_pid, t.stat.comm, "seccomp strict mode",
                                           where=where))
                elif mode == 2 and n > allowed:
                    own = f"{n - allowed} of its own, {n} in all" if allowed else str(n)
                    out.append(Unsupported(t.host_pid, t.stat.comm, f"seccomp filter ({own})",
                                           where=where))
        except TaskGone:
            continue                          # exited meanwhile: the freeze rescans
    return out
