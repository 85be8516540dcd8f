"""Slave mount propagation survives ``tree dump`` + ``tree restore``.

The test mounts a tmpfs in its own directory and makes it shared, then starts a tree with
``unshare --pid --fork --mount-proc --propagation slave``: in the tree's mount namespace that
tmpfs is a slave (``master:N``) of the test's.  After dump/kill/restore the restored tree's
copy is a slave of the same peer group again: a tmpfs the test mounts below the shared one
afterwards appears in the restored tree's mount table, and one the tree mounts in its copy
(nsenter) does not appear in the test's.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from treeutil import (assert_continued, build, dump_kill, harness_fixture, read_state,
                      wait_changed, wait_for, wait_state)

pytestmark = pytest.mark.integration

tree = harness_fixture()


def _mountinfo(pid) -> dict[str, list[str]]:
    """{mount point: optional fields} of /proc/PID/mountinfo."""
    out = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        left = line.split(" - ")[0].split()
        out[left[4]] = left[6:]
    return out


def _run(*argv):
    r = subprocess.run([str(a) for a in argv], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, f"{argv}: {r.stderr}"


@pytest.fixture
def shared_dir(tree):
    """A tmpfs of the test's own, shared (its own peer group); unmounted at the end."""
    d = tree.dir("shared")
    _run("mount", "-t", "tmpfs", "-o", "size=1m", "lxccr-test-shared", d)
    try:
        _run("mount", "--make-shared", d)
        yield d
    finally:
        subprocess.run(["umount", "-R", "-l", str(d)], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60)


def test_slave_of_host_peer_group_restored(tree, shared_dir):
    group = next(o for o in _mountinfo("self")[str(shared_dir)] if o.startswith("shared:"))
    master = "master:" + group.split(":")[1]
    state = tree.base / "counter"
    wl = tree.launch([build("ns_counter"), state], unshare=("--propagation", "slave"),
                     ready=lambda: state.exists(), what="ns_counter to start")
    wait_state(state, lambda st: int(st.get("counter", 0)) >= 2, "the counter")
    assert master in _mountinfo(wl.root)[str(shared_dir)]
    img = tree.base / "slave.img"
    dump_kill(tree, wl.root, img)
    last = read_state(state)

    root = tree.restore(img)
    assert_continued(last, wait_changed(state, last), what="ns_counter")
    assert master in _mountinfo(root)[str(shared_dir)], _mountinfo(root)[str(shared_dir)]
    inner = shared_dir / "from-host"
    inner.mkdir()
    _run("mount", "-t", "tmpfs", "-o", "size=1m", "lxccr-test-inner", inner)
    wait_for(lambda: str(inner) in _mountinfo(root), "the host's new mount to propagate")
    mine = shared_dir / "from-tree"
    mine.mkdir()
    _run("nsenter", "-t", root, "-m", "mount", "-t", "tmpfs", "-o", "size=1m",
         "lxccr-test-tree", mine)
    assert str(mine) in _mountinfo(root)
    assert str(mine) not in _mountinfo("self"), "a slave's mount propagated to its master"
