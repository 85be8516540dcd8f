"""Resources: an epoll loop over a pipe, an eventfd and a timerfd keeps running with the
right readiness after ``tree dump`` + ``tree restore``; a held eventfd keeps its count and a
signalfd its mask."""

from __future__ import annotations

import pytest

from treeutil import (assert_continued, assert_running_untraced, build, dump_kill,
                      harness_fixture, idents, read_state, snapshot, wait_state)

pytestmark = pytest.mark.integration

tree = harness_fixture()


def fdinfo(pid, fd) -> dict:
    out = {}
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            k, _, v = line.partition(":")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_epoll_pipe_eventfd_timerfd(tree):
    binary = build("res_epoll")
    d = tree.dir("epoll")
    st = d / "state"
    wl = tree.launch([binary, st], ready=lambda: int(read_state(st)["timer"]) >= 5
                     and int(read_state(st)["pipe"]) >= 5)
    s0 = read_state(st)
    assert s0["bad"] == "0", s0
    targets0 = sorted(fdinfo(wl.root, s0["epfd"])["tfd"])
    assert len(targets0) == 3
    snap = snapshot(wl.root)

    dump_kill(tree, wl.root, d / "img")
    before = read_state(st)
    root = tree.restore(d / "img")
    assert idents(snapshot(root)) == idents(snap)
    after = wait_state(st, lambda s: s["bad"] != "0" or all(
        int(s[k]) >= int(before[k]) + 20 for k in ("pipe", "ev", "timer")),
        "every epoll source to fire again")
    assert after["bad"] == "0", f"after restore: {after['why']}"
    assert_continued(before, after)
    info = fdinfo(root, after["epfd"])
    assert sorted(info["tfd"]) != [] and len(info["tfd"]) == 3
    # the same events and data per target (tfd numbers, events, data; not inode numbers)
    def key(lines):
        return sorted(" ".join(ln.split()[:5]) for ln in lines)
    assert key(info["tfd"]) == key(targets0)
    hold = fdinfo(root, after["hold"])
    assert int(hold["eventfd-count"][0], 16) == 12345
    assert int(hold["flags"][0], 8) & 0o4000, "EFD_NONBLOCK lost"
    sig = fdinfo(root, after["sfd"])
    assert int(sig["sigmask"][0], 16) == (1 << 9) | (1 << 11)    # SIGUSR1, SIGUSR2
    assert_running_untraced(root)
