"""Resources: socketpairs with unread stream bytes (both directions) and unread datagrams
are delivered intact after ``tree dump`` + ``tree restore``."""

from __future__ import annotations

import pytest

from treeutil import (assert_continued, build, dump_kill, harness_fixture, read_state,
                      wait_state)

pytestmark = pytest.mark.integration

tree = harness_fixture()


def test_socketpair_queues_survive(tree):
    binary = build("res_unixpair")
    d = tree.dir("unixpair")
    st, go = d / "state", d / "go"
    wl = tree.launch([binary, st, go], ready=lambda: int(read_state(st).get("counter", 0)) >= 3)
    dump_kill(tree, wl.root, d / "img")
    before = read_state(st)
    assert before["result"] == "waiting"
    tree.restore(d / "img")
    go.write_text("go\n")
    after = wait_state(st, lambda s: s.get("result") not in (None, "waiting"),
                       "the program to read its queues")
    assert after["result"] == "ok", after["got"]
    assert after["got"] == "hello-stream|back|d1,d2,d3"
    assert_continued(before, after)
