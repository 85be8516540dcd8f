"""Engine core, command-line contract of ``tree dump`` / ``tree restore``: exit codes, the one
``lxc-cr: error:`` line, and refusing an unsupported fd before stopping anything.
"""

from __future__ import annotations

import os

import pytest

from treeutil import (Watcher, UNSUPPORTED_RE, assert_one_error_line, assert_running_untraced, build,
                      descendants_of_me, fd_targets, harness_fixture, idents, read_state,
                      snapshot, state_int, tree_pids, wait_changed)

pytestmark = pytest.mark.integration

tree = harness_fixture()


def free_pid() -> int:
    with open("/proc/sys/kernel/pid_max") as f:
        pid = int(f.read()) - 1
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


def test_dump_of_nonexistent_pid_exits_2(tree):
    d = tree.dir("nopid")
    pid = free_pid()
    res = tree.cli("tree", "dump", pid, d / "img")
    assert res.rc == 2, res.describe()
    line = assert_one_error_line(res)
    assert str(pid) in line, f"the error line does not name pid {pid}: {line!r}"
    assert os.listdir(d) == [], f"left behind: {os.listdir(d)}"


@pytest.mark.parametrize("content", [b"", b"this is not an lxc-cr image\n" * 100,
                                     os.urandom(1 << 16)], ids=["empty", "text", "random"])
def test_restore_of_non_image_exits_2(tree, content):
    d = tree.dir("notimage")
    bogus = d / "bogus.img"
    bogus.write_bytes(content)
    before = descendants_of_me()
    res = tree.cli("tree", "restore", bogus)
    assert res.rc == 2, res.describe()
    assert_one_error_line(res)
    assert res.out.strip() == "", f"printed {res.out!r} for a failed restore"
    assert descendants_of_me() <= before, "a failed restore left a process behind"


def test_restore_of_missing_file_exits_2(tree):
    d = tree.dir("missing")
    res = tree.cli("tree", "restore", d / "nothing.img")
    assert res.rc == 2, res.describe()
    assert_one_error_line(res)


@pytest.mark.parametrize("holder", ["root", "child"])
def test_socketpair_refused_before_freezing(tree, holder):
    binary = build("wl_sockpair")
    d = tree.dir(f"sockpair-{holder}")
    st = d / "state"
    wl = tree.launch([binary, st] + (["child"] if holder == "child" else []),
                     ready=lambda: state_int(st, "counter") >= 3)
    hosts = tree_pids(wl.root)
    holder_pid = hosts[0] if holder == "root" else hosts[1]
    s0 = read_state(st)
    sock_fds = {int(s0["fd0"]), int(s0["fd1"])}
    assert all(fd_targets(holder_pid)[fd].startswith("socket:") for fd in sock_fds)
    snap = snapshot(wl.root)

    trace = d / "trace"
    watcher = Watcher(wl.root)
    watcher.start()
    try:
        res = tree.cli("tree", "dump", wl.root, d / "img", env={"LXC_CR_FAULT_TRACE": str(trace)})
    finally:
        watcher.stop.set()
        watcher.join()
    assert res.rc == 1, res.describe()
    line = assert_one_error_line(res)
    m = UNSUPPORTED_RE.search(line)
    assert m, f"error line does not match {UNSUPPORTED_RE.pattern!r}: {line!r}"
    assert int(m.group(3)) in sock_fds, f"names fd {m.group(3)}, the sockets are {sock_fds}"
    assert "socket" in m.group(4), line
    assert m.group(2) == "wl_sockpair", line
    assert not (d / "img").exists()
    # refused before the first step (the freeze is step 2): nothing was ever stopped
    assert not trace.exists() or "frozen" not in trace.read_text(), trace.read_text()
    assert watcher.samples > 0
    assert watcher.seen == [], f"the tree was stopped or traced: {watcher.seen[:5]}"
    # still running, same processes, counter still advancing
    assert tree_pids(wl.root) == hosts
    assert idents(snapshot(wl.root)) == idents(snap)
    after = wait_changed(st, read_state(st))
    assert after["boot"] == s0["boot"] and int(after["counter"]) > int(s0["counter"])
    assert_running_untraced(wl.root)
