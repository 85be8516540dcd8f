"""Resources: regular files (offset, O_APPEND), a deleted-but-open file, a memfd (contents,
seals) and a cwd in a subdirectory survive ``tree dump`` + ``tree restore``."""

from __future__ import annotations

import fcntl
import os

import pytest

from treeutil import (assert_continued, assert_running_untraced, build, dump_kill,
                      harness_fixture, idents, read_state, snapshot, state_int, wait_state)

pytestmark = pytest.mark.integration

tree = harness_fixture()
F_GET_SEALS, F_SEAL_SHRINK, F_SEAL_GROW = 1034, 2, 4
O_APPEND = 0o2000


def fdinfo(pid, fd) -> dict:
    out = {}
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def log_lines(path) -> list[int]:
    return [int(x) for x in path.read_text().split()]


def test_files_offset_append_ghost_memfd_cwd(tree):
    binary = build("res_files")
    d = tree.dir("files")
    (d / "sub").mkdir()
    (d / "data").write_bytes(bytes(i % 251 for i in range(4096)))
    st = d / "state"
    wl = tree.launch([binary, st, d], ready=lambda: state_int(st, "counter") >= 20)
    s0 = read_state(st)
    assert s0["bad"] == "0", s0
    assert os.readlink(f"/proc/{wl.root}/fd/{s0['ghost']}").endswith(" (deleted)")
    snap = snapshot(wl.root)

    dump_kill(tree, wl.root, d / "img")
    before = read_state(st)
    root = tree.restore(d / "img")
    assert idents(snapshot(root)) == idents(snap)
    after = wait_state(st, lambda s: int(s["counter"]) > int(before["counter"]) + 50
                       or s["bad"] != "0", "the workload to go on")
    assert after["bad"] == "0", f"after restore: {after['why']}"
    assert_continued(before, after)

    # cwd, the deleted file (still deleted, and nothing left at its path), the O_APPEND flag
    assert os.readlink(f"/proc/{root}/cwd") == str(d / "sub")
    ghost = os.readlink(f"/proc/{root}/fd/{after['ghost']}")
    assert ghost.endswith(" (deleted)") and after["ghostpath"] in ghost, ghost
    assert not os.path.exists(after["ghostpath"])
    assert int(fdinfo(root, after["log"])["flags"], 8) & O_APPEND
    assert os.readlink(f"/proc/{root}/fd/{after['log']}") == str(d / "sub" / "log.txt")
    # memfd: name and seals
    assert os.readlink(f"/proc/{root}/fd/{after['memfd']}").startswith("/memfd:res-memfd")
    fd = os.open(f"/proc/{root}/fd/{after['memfd']}", os.O_RDONLY)
    try:
        assert fcntl.fcntl(fd, F_GET_SEALS) == F_SEAL_SHRINK | F_SEAL_GROW
    finally:
        os.close(fd)
    # the O_APPEND log: 1..N, no gap, no duplicate, across the checkpoint
    lines = log_lines(d / "sub" / "log.txt")
    assert lines == list(range(1, len(lines) + 1)), "log has a gap or a duplicate"
    assert len(lines) >= int(after["counter"]) - 1
    assert_running_untraced(root)
