"""Resources lxc-cr cannot checkpoint are refused by name before anything is frozen:
``pid N (comm) fd M: io_uring instance: not supported``, and the tree never pauses."""

from __future__ import annotations

import re

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


SECCOMP_RE = re.compile(r"pid (\d+) \((\w+)\)(?: thread (\d+))?: (seccomp [^:]*): not supported")


def test_seccomp_filter_refused_before_freezing(tree):
    """A process under a seccomp filter of its own is refused (the filter is not
    checkpointed: restoring it without would drop its sandbox), and runs on untouched."""
    binary = build("res_seccomp")
    d = tree.dir("seccomp")
    st = d / "state"
    wl = tree.launch([binary, st], ready=lambda: state_int(st, "counter") >= 3)
    s0 = read_state(st)
    line, m = refused_dump(tree, wl.root, d / "img", pattern=SECCOMP_RE)
    assert int(m.group(1)) == wl.root and m.group(2) == "res_seccomp", line
    assert m.group(3) is None and m.group(4) == "seccomp filter (1)", line
    after = wait_changed(st, read_state(st))
    assert after["boot"] == s0["boot"] and int(after["counter"]) > int(s0["counter"])
    assert_running_untraced(wl.root)
    res = tree.cli("check", wl.root)
    assert res.rc == 1 and "seccomp filter (1): not supported" in res.out + res.err, \
        res.describe()
