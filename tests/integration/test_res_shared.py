"""Resources: shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS shared by a parent and its
child) and a FIFO with data in it survive ``tree dump`` + ``tree restore`` (must-show 5 of the
resources issue; FIFOs use the pipes module, opened again by path)."""

from __future__ import annotations

import os
import stat

import pytest

from treeutil import (assert_continued, build, dump_kill, harness_fixture, idents, read_state,
                      snapshot, state_int, tree_pids, wait_state)

pytestmark = pytest.mark.integration

tree = harness_fixture()


def shared_inode(pid: int, addr: int) -> str:
    """The inode of the shared mapping at addr in pid's maps ('/dev/zero (deleted)')."""
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            if int(parts[0].split("-")[0], 16) == addr:
                assert parts[1][3] == "s", f"mapping at {addr:#x} is not shared: {line}"
                return parts[4]
    raise AssertionError(f"no mapping at {addr:#x} in pid {pid}")


def fifo_bytes(pid: int) -> int:
    """Bytes waiting in the FIFO read by pid (FIONREAD through /proc/PID/fd)."""
    import fcntl
    import struct
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        if target.endswith("/fifo"):
            h = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)
            try:
                return struct.unpack("i", fcntl.ioctl(h, 0x541B, b"\0" * 4))[0]
            finally:
                os.close(h)
    raise AssertionError(f"pid {pid} holds no fifo")


def test_shared_anonymous_memory_and_fifo(tree):
    binary = build("res_shared")
    d = tree.dir("shared")
    st, fifo = d / "state", d / "fifo"
    wl = tree.launch([binary, st, fifo], ready=lambda: state_int(st, "counter") >= 20)
    s0 = read_state(st)
    assert s0["bad"] == "0", s0
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    region = int(s0["region"], 16)
    parent, child = tree_pids(wl.root)
    assert shared_inode(parent, region) == shared_inode(child, region)
    assert fifo_bytes(parent) > 0, "the child's stream should sit in the FIFO"
    snap = snapshot(wl.root)

    dump_kill(tree, wl.root, d / "img")
    before = read_state(st)
    root = tree.restore(d / "img")
    assert idents(snapshot(root)) == idents(snap)
    # the ping-pong counter only grows while parent and child see each other's writes
    after = wait_state(st, lambda s: int(s["counter"]) > int(before["counter"]) + 50
                       or s["bad"] != "0", "the ping-pong to go on", timeout=60)
    assert after["bad"] == "0", f"after restore: {after['why']}"
    assert_continued(before, after)
    assert int(after["expect"]) > int(before["expect"]), "the FIFO stream did not go on"
    parent, child = tree_pids(root)
    assert shared_inode(parent, region) == shared_inode(child, region), \
        "parent and child no longer map one shared object"
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
