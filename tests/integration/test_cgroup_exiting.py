"""A task that exits while a container is checked is not refused for its cgroups.

On cgroup v1, cgroup_exit() puts an exiting task back in the root of every hierarchy before
it becomes a zombie; a container's short-lived ``sleep`` caught then looked like a process
outside the container's cgroup ("cgroup name=systemd: / is not below the root's cgroup", a
CI failure of the 20-cycle LXC test).  Real processes in a real v1 freezer cgroup.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from lxc_cr.kernel.procfs import Proc
from lxc_cr.resources import ns_cgroup

pytestmark = pytest.mark.integration

FREEZER = Path("/sys/fs/cgroup/freezer")

ROOT = r"""
import os, sys, time
sys.stdin.readline()                 # moved into the cgroup by now
pid = os.fork()
if pid == 0:
    os._exit(0)
print(pid, flush=True)
time.sleep(60)                       # never reaps it
"""


def state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def task(pid: int, comm: str):
    return SimpleNamespace(host_pid=pid, zombie=False, stat=SimpleNamespace(comm=comm))


def test_exiting_task_is_not_refused_for_its_cgroup():
    if not (FREEZER / "cgroup.procs").exists():
        pytest.skip("no cgroup v1 freezer hierarchy")
    cg = FREEZER / f"lxccr-test-exiting-{os.getpid()}"
    cg.mkdir()
    root = subprocess.Popen([sys.executable, "-c", ROOT], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        (cg / "cgroup.procs").write_text(str(root.pid))
        root.stdin.write("go\n")
        root.stdin.flush()
        child = int(root.stdout.readline())
        deadline = time.monotonic() + 10
        while state(child) != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert "freezer:/\n" in Path(f"/proc/{child}/cgroup").read_text()   # back in the root
        assert Proc().exiting(child) and not Proc().exiting(root.pid)
        # as when it was listed alive just before it exited
        problems = ns_cgroup.check(Proc(), [task(root.pid, "python3"), task(child, "python3")])
        assert not [p for p in problems if f"pid {child} " in str(p)], problems
        # a live task really outside the root's cgroup is still refused
        outside = subprocess.Popen(["sleep", "60"])
        try:
            problems = ns_cgroup.check(Proc(), [task(root.pid, "python3"),
                                                task(outside.pid, "sleep")])
            assert [p for p in problems if f"pid {outside.pid} (sleep): cgroup freezer: / is "
                    "not below the root's cgroup" in str(p)], problems
        finally:
            outside.kill()
            outside.wait()
    finally:
        root.kill()
        root.wait()
        deadline = time.monotonic() + 10
        while (cg / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.01)
        cg.rmdir()
