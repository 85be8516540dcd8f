"""dump.discover on a live process tree: a process that exits while the tree is walked (a
container's short-lived ``sleep``) is left out wherever the walk finds it gone, and only the
root's disappearance is an error.  The exit is made to fall between the reads of one
process (its stat, then its children) by a Proc that says the process is gone there."""

from __future__ import annotations

import subprocess
import time

import pytest

from lxc_cr.dump import discover
from lxc_cr.errors import TaskGone
from lxc_cr.kernel.procfs import Proc

pytestmark = pytest.mark.unit


class ExitsAfterStat(Proc):
    """/proc, except that ``pid`` is gone by the time its children are read."""

    def __init__(self, pid: int):
        super().__init__()
        self.gone = pid

    def children(self, pid: int) -> list[int]:
        if pid == self.gone:
            raise TaskGone(pid)
        return super().children(pid)


@pytest.fixture
def tree():
    """sh (the root) with one sleep child."""
    p = subprocess.Popen(["sh", "-c", "sleep 300 & wait"], stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not Proc().children(p.pid):
            assert time.monotonic() < deadline, "the child did not start"
            time.sleep(0.01)
        yield p.pid, Proc().children(p.pid)[0]
    finally:
        subprocess.run(["pkill", "-KILL", "-P", str(p.pid)], check=False)
        p.kill()
        p.wait()


def test_whole_tree(tree):
    root, child = tree
    assert [t.host_pid for t in discover(Proc(), root)] == [root, child]


def test_a_child_gone_between_its_stat_and_its_children_is_left_out(tree):
    root, child = tree
    assert [t.host_pid for t in discover(ExitsAfterStat(child), root)] == [root]


def test_the_root_gone_is_an_error(tree):
    root, _child = tree
    with pytest.raises(TaskGone):
        discover(ExitsAfterStat(root), root)
