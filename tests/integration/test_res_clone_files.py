"""Resources: an fd table shared by a parent and its child (clone(CLONE_FILES) without
CLONE_THREAD) is still one table after ``tree dump`` + ``tree restore``: an fd opened by
one process is seen by the other, kcmp(KCMP_FILES) says same; a sharing no fork can
recreate (two siblings, their parent having unshared its table) is refused."""

from __future__ import annotations

import json
import os

import pytest

from treeutil import (KCMP_FILES, assert_continued, assert_one_error_line,
                      assert_running_untraced, build, dump_kill, fd_targets, harness_fixture,
                      idents, kcmp, read_state, snapshot, state_int, tree_pids, wait_state)

pytestmark = pytest.mark.integration

tree = harness_fixture()


def same_table(pid1, pid2) -> bool:
    return kcmp(pid1, pid2, KCMP_FILES)


def next_round(d, st, k: int) -> tuple[dict, dict]:
    """Ask for round k: the child opens child-k as fd 100, the parent parent-k as fd 101;
    wait until each process reports the other's new fd."""
    (d / "ctl").write_text(f"{k}\n")
    want100, want101 = (d / f"child-{k}"), (d / f"parent-{k}")
    def sees(s):
        return (want100.exists() and want101.exists()
                and int(s["ino100"]) == want100.stat().st_ino
                and int(s["ino101"]) == want101.stat().st_ino)
    parent = wait_state(st, sees, f"the parent to see both fds of round {k}", timeout=60)
    child = wait_state(f"{st}.child", sees, f"the child to see both fds of round {k}",
                       timeout=60)
    return parent, child


def test_parent_and_child_keep_one_fd_table(tree):
    binary = build("res_clone_files")
    d = tree.dir("clonefiles")
    st = d / "state"
    wl = tree.launch([binary, st, d], ready=lambda: state_int(st, "counter") >= 3
                     and state_int(f"{st}.child", "counter") >= 3)
    hosts = tree_pids(wl.root)
    assert len(hosts) == 2 and same_table(*hosts), hosts
    next_round(d, st, 1)
    snap = snapshot(wl.root)

    dump_kill(tree, wl.root, d / "img")
    before, cbefore = read_state(st), read_state(f"{st}.child")
    res = tree.cli("inspect", "--json", "--section", "fd_table", d / "img")
    assert res.rc == 0, res.describe()
    recs = [r["fields"] for r in json.loads(res.out)["records"]]
    assert recs == [{"pid": 2, "shared_with": 1}], recs

    root = tree.restore(d / "img")
    assert idents(snapshot(root)) == idents(snap)
    hosts = tree_pids(root)
    assert len(hosts) == 2
    assert same_table(*hosts), "the restored parent and child have two fd tables"
    assert fd_targets(hosts[0]) == fd_targets(hosts[1])
    assert fd_targets(hosts[0]) == dict(snap[1].fds), "fd table changed"
    # each still sees the other's fds, including ones opened after the restore
    parent, child = next_round(d, st, 2)
    assert_continued(before, parent, what="parent")
    assert_continued(cbefore, child, what="child")
    assert same_table(*hosts)
    assert_running_untraced(root)


def test_siblings_sharing_a_table_refused(tree):
    binary = build("res_clone_files")
    d = tree.dir("clonefiles-siblings")
    st = d / "state"
    wl = tree.launch([binary, st, d, "siblings"], ready=lambda: state_int(st, "counter") >= 3)
    hosts = tree_pids(wl.root)
    assert len(hosts) == 3 and same_table(hosts[1], hosts[2]), hosts
    assert not same_table(hosts[0], hosts[1])
    res = tree.cli("tree", "dump", wl.root, d / "img")
    assert res.rc == 1, res.describe()
    line = assert_one_error_line(res)
    assert f"fd table shared with pid {hosts[1]} (res_clone_files) through CLONE_FILES, " \
           f"which is not its parent: not supported" in line, line
    assert f"pid {hosts[2]} (res_clone_files)" in line, line
    assert not (d / "img").exists()
    assert_running_untraced(wl.root)
    s = read_state(st)
    wait_state(st, lambda x: int(x["counter"]) > int(s["counter"]), "the workload to go on")
    assert os.path.exists(f"/proc/{hosts[2]}")
