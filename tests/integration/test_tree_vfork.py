"""A tree whose root is in vfork(), waiting for its child to exec (tests/workloads/wl_vfork.c;
the same with a libvirt domain's freezer: test_libvirt_vfork.py).  Without a freezer the
dump waits for the child's exec; a child that does not exec in time is refused by name
before anything is stopped."""

from __future__ import annotations

import re

import pytest

from treeutil import (assert_running_untraced, build, children, dump_kill, harness_fixture,
                      refused_dump, vfork_child, wait_for)

from lxc_cr.dump import VFORK_PATIENCE
from lxc_cr.kernel.ptrace import STOP_PATIENCE

pytestmark = pytest.mark.integration

tree = harness_fixture()

VFORK_RE = re.compile(r"pid (\d+) \((\w+)\): runs in the memory of its parent pid (\d+) "
                      r"\((\w+)\), as a vfork\(\) child does: the dump waited ([\d.]+) s "
                      r"for such children to exec or exit: not supported")


def launch(tree, label: str, pause_ms: int, *mode: str):
    d = tree.dir(label)
    counter = d / "count"
    read = lambda: int(counter.read_text().strip() or 0) if counter.exists() else 0  # noqa: E731
    wl = tree.launch([build("wl_vfork"), counter, str(pause_ms), *mode])
    return wl, d, read


def test_dump_waits_for_the_vfork_child(tree):
    wl, d, count = launch(tree, "vfork", pause_ms=800)
    wait_for(lambda: count() >= 1, what="a first sleep")
    wait_for(lambda: vfork_child(wl.root), what="a fresh vfork() child")
    img = d / "img"
    dump_kill(tree, wl.root, img)
    at_dump = count()
    root = tree.restore(img)
    wait_for(lambda: count() >= at_dump + 2, what="two more sleeps after the restore")
    assert_running_untraced(root)


def test_a_child_that_does_not_exec_is_refused(tree):
    wl, d, _ = launch(tree, "vfork-stuck", pause_ms=600_000)
    child = wait_for(lambda: vfork_child(wl.root), what="the vfork() child")
    line, m = refused_dump(tree, wl.root, d / "img", pattern=VFORK_RE)
    assert (int(m.group(1)), m.group(2)) == (child, "wl_vfork"), line
    assert (int(m.group(3)), m.group(4)) == (wl.root, "wl_vfork"), line
    assert float(m.group(5)) == VFORK_PATIENCE, line
    assert vfork_child(wl.root) == child
    assert_running_untraced(wl.root)


def test_a_thread_that_does_not_stop_fails_the_dump(tree):
    """clone(CLONE_VFORK) without CLONE_VM: not a vfork() child to wait for (its memory is
    its own), and its parent cannot stop until it execs.  The dump fails after
    STOP_PATIENCE naming the parent; the tree runs on, untraced."""
    wl, d, count = launch(tree, "clone-vfork", 600_000, "novm")
    wait_for(lambda: len(children(wl.root)) == 1, what="the CLONE_VFORK child")
    res = tree.cli("tree", "dump", wl.root, d / "img", timeout=STOP_PATIENCE + 30)
    assert res.rc == 1, res.describe()
    assert res.err == (f"lxc-cr: error: pid {wl.root} (wl_vfork) thread {wl.root} did not "
                       f"stop within {STOP_PATIENCE:g} s (state D, in kernel_clone)\n"), \
        res.describe()
    assert not (d / "img").exists()
    assert_running_untraced(wl.root)
    assert len(children(wl.root)) == 1 and count() == 0
