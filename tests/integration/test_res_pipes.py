"""Resources: pipes (buffered data, size) and the fd table (shared descriptions, cloexec)
survive ``tree dump`` + ``tree restore`` (fd tables shared by processes:
test_res_clone_files.py)."""

from __future__ import annotations

import os

import pytest

from treeutil import (KCMP_FILE, assert_continued, assert_running_untraced, build, dump_kill,
                      harness_fixture, idents, kcmp, read_state, snapshot, state_int,
                      tree_pids, wait_state)

pytestmark = pytest.mark.integration

tree = harness_fixture()
O_CLOEXEC = 0o2000000


def same_file(pid1, fd1, pid2, fd2) -> bool:
    return kcmp(pid1, pid2, KCMP_FILE, fd1, fd2)


def fd_flags(pid, fd) -> int:
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("flags:"):
                return int(line.split()[1], 8)
    raise KeyError(fd)


def check_sharing(root: int, st: dict) -> None:
    hosts = tree_pids(root)
    assert len(hosts) == 2, hosts
    writer = hosts[1]
    ffd, dfd = int(st["filefd"]), int(st["dupfd"])
    assert same_file(root, ffd, root, dfd), "dup'ed fds no longer share one description"
    assert same_file(root, ffd, writer, ffd), "fork-inherited fd no longer shared"
    assert not fd_flags(root, ffd) & O_CLOEXEC
    assert fd_flags(root, dfd) & O_CLOEXEC, "close-on-exec lost on the dup"
    pipefd = int(st["pipefd"])
    assert os.readlink(f"/proc/{root}/fd/{pipefd}").startswith("pipe:")


def test_pipe_stream_no_gap_no_duplicate(tree):
    binary = build("res_pipe")
    d = tree.dir("pipe")
    st = d / "state"
    wl = tree.launch([binary, st, d / "file"], ready=lambda: state_int(st, "counter") >= 20)
    s0 = read_state(st)
    assert s0["bad"] == "0", s0
    assert int(s0["pipesz"]) == 128 << 10
    check_sharing(wl.root, s0)
    snap = snapshot(wl.root)

    dump_kill(tree, wl.root, d / "img")
    before = read_state(st)
    root = tree.restore(d / "img")
    assert idents(snapshot(root)) == idents(snap)
    # the reader goes on well past what the pipe held at the checkpoint (128 KiB = 32768
    # numbers = 2048 reads), so the refilled data and the writer's new data were both read
    after = wait_state(st, lambda s: int(s["counter"]) > int(before["counter"]) + 100
                       or s["bad"] != "0", "the reader to go on", timeout=60)
    assert after["bad"] == "0", f"stream broken after restore: {after['why']}"
    assert_continued(before, after)
    assert int(after["expect"]) > int(before["expect"])
    check_sharing(root, after)
    with open(f"/proc/{root}/fd/{after['pipefd']}", "rb"):
        pass
    import fcntl
    fd = os.open(f"/proc/{root}/fd/{after['pipefd']}", os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert fcntl.fcntl(fd, 1032) == 128 << 10, "pipe size not restored"
    finally:
        os.close(fd)
    # the shared offset keeps moving (the writer appends through the inherited fd)
    later = wait_state(st, lambda s: int(s["offset"]) > int(after["offset"]), "offset moves")
    assert later["bad"] == "0", later["why"]
    assert_running_untraced(root)

