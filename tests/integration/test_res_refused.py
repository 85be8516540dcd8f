"""Resources lxc-cr cannot checkpoint are refused by name before anything is frozen:
``pid N (comm) fd M: io_uring instance: not supported``, and the tree never pauses."""

from __future__ import annotations


import pytest

from treeutil import (assert_running_untraced, build, harness_fixture, read_state,
                      refused_dump, state_int, wait_changed)

pytestmark = pytest.mark.integration

tree = harness_fixture()


def test_io_uring_refused_before_freezing(tree):
    binary = build("res_uring")
    d = tree.dir("uring")
    st = d / "state"
    wl = tree.launch([binary, st], ready=lambda: state_int(st, "counter") >= 3)
    s0 = read_state(st)
    line, m = refused_dump(tree, wl.root, d / "img")
    assert int(m.group(1)) == wl.root and m.group(2) == "res_uring", line
    assert int(m.group(3)) == int(s0["ringfd"]) and m.group(4) == "io_uring instance", line
    after = wait_changed(st, read_state(st))
    assert after["boot"] == s0["boot"] and int(after["counter"]) > int(s0["counter"])
    assert_running_untraced(wl.root)
    # lxc-cr check names it the same way
    res = tree.cli("check", wl.root)
    assert res.rc == 1 and "io_uring instance: not supported" in res.out + res.err, res.describe()
