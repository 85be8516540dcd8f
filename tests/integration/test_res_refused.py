"""Resources lxc-cr cannot checkpoint are refused by name before anything is frozen:
``pid N (comm) fd M: io_uring instance: not supported``, and the tree never pauses."""

from __future__ import annotations


import pytest

from treeutil import (UNSUPPORTED_RE, Watcher, assert_one_error_line, assert_running_untraced, build,
                      harness_fixture, read_state, state_int, wait_changed)

pytestmark = pytest.mark.integration

tree = harness_fixture()


def test_io_uring_refused_before_freezing(tree):
    binary = build("res_uring")
    d = tree.dir("uring")
    st = d / "state"
    wl = tree.launch([binary, st], ready=lambda: state_int(st, "counter") >= 3)
    s0 = read_state(st)
    w = Watcher(wl.root)
    w.start()
    try:
        res = tree.cli("tree", "dump", wl.root, d / "img")
    finally:
        w.stop.set()
        w.join()
    assert res.rc == 1, res.describe()
    line = assert_one_error_line(res)
    m = UNSUPPORTED_RE.search(line)
    assert m, line
    assert int(m.group(1)) == wl.root and m.group(2) == "res_uring", line
    assert int(m.group(3)) == int(s0["ringfd"]) and m.group(4) == "io_uring instance", line
    assert not (d / "img").exists()
    assert w.samples > 0 and w.seen == [], w.seen[:5]
    after = wait_changed(st, read_state(st))
    assert after["boot"] == s0["boot"] and int(after["counter"]) > int(s0["counter"])
    assert_running_untraced(wl.root)
    # lxc-cr check names it the same way
    res = tree.cli("check", wl.root)
    assert res.rc == 1 and "io_uring instance: not supported" in res.out + res.err, res.describe()
