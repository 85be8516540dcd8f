"""Nested pid namespaces survive ``tree dump`` + ``tree restore``.

tests/workloads/ns_nested.c runs as pid 1 of ``unshare --pid --fork --mount-proc``: R forks
A, which unshare(CLONE_NEWPID)s and forks N (pid 1 of the nested namespace), which forks G
(pid 2 there).  After dump/kill/restore, every process has the same pid at every level
(NSpid of /proc/PID/status, read from the host, the levels from the tree's down), each
process still sees its own pids as before, the counters go on, and A's pid_for_children is
N's namespace again (A has a second thread: pid_for_children is set once it exists): a
child A forks after the restore lands in it.  A process that unshare(CLONE_NEWPID)'d and
has not forked yet is restored so (its first child is pid 1 of a new namespace); one whose
nested init is gone, and a proc mounted for a nested namespace, are refused by name.
"""

from __future__ import annotations

import json
import os

import jsonschema
import pytest

from treeutil import (REPO, assert_continued, assert_one_error_line, assert_running_untraced,
                      build, dump_kill, harness_fixture, read_state, status, tids, tree_pids,
                      wait_changed, wait_for, wait_state)

pytestmark = pytest.mark.integration

tree = harness_fixture()
ROLES = ("R", "A", "N", "G")
CLONE_NEWPID = 0x20000000


def _levels(root: int) -> dict[tuple, int]:
    """{NSpid from the tree's level inwards: host pid} of every process under root."""
    top = len(status(root)["NSpid"].split()) - 1
    return {tuple(int(x) for x in status(h)["NSpid"].split()[top:]): h
            for h in tree_pids(root)}


def _by_role(d, root: int) -> dict[str, tuple]:
    """{role: NSpid}: R and A are one level deep (pids 1, 2), N and G two (inner 1, 2);
    each must report its innermost pid itself in its state file."""
    roles = {}
    for nspid in _levels(root):
        if len(nspid) == 1:
            roles["R" if nspid[0] == 1 else "A"] = nspid
        elif len(nspid) == 2:
            roles["N" if nspid[1] == 1 else "G"] = nspid
    for role in ROLES:
        st = read_state(d / f"state.{role}")
        assert int(st["pid"]) == roles[role][-1], (role, st, roles)
    return roles


def _pidns(host_pid: int, kind: str = "pid") -> str:
    return os.readlink(f"/proc/{host_pid}/ns/{kind}")


def test_nested_pid_namespace_restored(tree):
    d = tree.dir("nested")
    wl = tree.launch([build("ns_nested"), d],
                     ready=lambda: all((d / f"state.{r}").exists() for r in ROLES),
                     what="all four processes writing their state")
    for r in ROLES:
        wait_state(d / f"state.{r}", lambda st: int(st.get("counter", 0)) >= 2, f"{r} running")
    before = _by_role(d, wl.root)
    assert sorted(len(v) for v in before.values()) == [1, 1, 2, 2], before
    hosts = _levels(wl.root)
    a_host, n_host = hosts[before["A"]], hosts[before["N"]]
    assert _pidns(a_host, "pid_for_children") == _pidns(n_host), "A is not forking into N's ns"
    img = tree.base / "nested.img"
    dump_kill(tree, wl.root, img)
    last = {r: read_state(d / f"state.{r}") for r in ROLES}

    inspect = tree.cli("inspect", img, "--json")
    assert inspect.rc == 0, inspect.describe()
    doc = json.loads(inspect.out)
    schema = json.loads((REPO / "schemas" / "inspect.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(doc)
    pidns = doc["namespaces"]["pid"]
    assert pidns["levels"] == 2
    assert sorted(tuple(t["nspids"]) for t in pidns["nested"]) == \
        sorted([before["N"], before["G"]])
    assert pidns["for_children"] == [dict(pid=before["A"][0], child=before["N"][0])]

    root = tree.restore(img)
    for r in ROLES:
        assert_continued(last[r], wait_changed(d / f"state.{r}", last[r]), what=r)
    after = _by_role(d, root)
    assert after == before, f"pids at each level: {before} before, {after} after"
    assert_running_untraced(root)
    hosts = _levels(root)
    a_host, n_host, g_host = hosts[after["A"]], hosts[after["N"]], hosts[after["G"]]
    assert _pidns(n_host) == _pidns(g_host) != _pidns(a_host)
    assert _pidns(a_host, "pid_for_children") == _pidns(n_host), (
        "A's pid_for_children is not N's namespace after the restore")
    assert len(tids(a_host)) == 2, "A's second thread"

    (d / "fork").touch()                   # A forks F: it must land in N's namespace
    f = wait_state(d / "state.F", lambda st: int(st.get("counter", 0)) >= 1, "A's new child F")
    f_host = wait_for(lambda: next((h for n, h in _levels(root).items()
                                    if len(n) == 2 and n[1] == int(f["pid"])), None),
                      "F in the tree")
    assert _pidns(f_host) == _pidns(n_host)
    assert int(f["ppid"]) == 0, "F's parent A is outside F's namespace: getppid() is 0"


def _python_unsharer(tree, body: str):
    """Pid 1 of a tree: python that unshare(CLONE_NEWPID)s, runs ``body``, then writes
    STATE and runs on; returns (workload, state file)."""
    st = tree.base / "unshared"
    script = (f"import ctypes, os, time\n"
              f"assert ctypes.CDLL(None).unshare({CLONE_NEWPID}) == 0\n"
              f"{body}\n"
              f"open('{st}', 'w').write('x')\n")
    return st, script


def test_pid_for_children_not_entered_yet_restored(tree):
    """unshare(CLONE_NEWPID) without a fork: restored by the same unshare in the restored
    process (no pid_for_children link, as before); its first child is pid 1 there."""
    trigger, out = tree.base / "fork", tree.base / "child"
    st, script = _python_unsharer(tree, "")
    script += (f"while not os.path.exists('{trigger}'):\n    time.sleep(0.005)\n"
               f"pid = os.fork()\n"
               f"if pid == 0:\n    open('{out}', 'w').write(str(os.getpid())); os._exit(0)\n"
               f"os.waitpid(pid, 0)\ntime.sleep(600)\n")
    wl = tree.launch(["/usr/bin/python3", "-c", script], ready=st.exists,
                     what="the python process to unshare")
    with pytest.raises(FileNotFoundError):
        os.readlink(f"/proc/{wl.root}/ns/pid_for_children")
    img = tree.base / "unshared.img"
    dump_kill(tree, wl.root, img)
    root = tree.restore(img)
    assert_running_untraced(root)
    with pytest.raises(FileNotFoundError):
        os.readlink(f"/proc/{root}/ns/pid_for_children")
    trigger.touch()
    assert wait_for(lambda: out.exists() and out.read_text(), "the first child") == "1"
    assert os.readlink(f"/proc/{root}/ns/pid_for_children") != _pidns(root)


def test_pid_for_children_whose_init_is_gone_refused(tree):
    """unshare(CLONE_NEWPID), fork, the nested init exits: refused by name, untouched."""
    st, script = _python_unsharer(
        tree, "pid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.waitpid(pid, 0)")
    wl = tree.launch(["/usr/bin/python3", "-c", script + "time.sleep(600)\n"],
                     ready=st.exists, what="the python process to unshare and fork")
    pid = wl.root
    before = status(pid)["NSpid"]
    res = tree.cli("check", pid)
    assert res.rc == 1, res.describe()
    assert f"pid {pid} (python3): pid namespace for children: differs from its own and " \
           f"its init is gone: not supported" in res.out, res.describe()
    img = tree.base / "refused.img"
    res = tree.cli("tree", "dump", pid, img)
    assert res.rc == 1, res.describe()
    line = assert_one_error_line(res)
    assert "pid namespace for children" in line, line
    assert not img.exists()
    assert status(pid)["NSpid"] == before and status(pid)["TracerPid"] == "0"


def test_proc_of_nested_pid_namespace_refused(tree):
    """A proc mounted (in the tree's mount namespace) for a nested pid namespace cannot be
    recreated for it: refused naming the mount, before anything is stopped."""
    d = tree.dir("procmnt")
    mnt = d / "proc"
    ready = d / "ready"
    script = (f"mkdir {mnt} && unshare --pid --fork sh -c "
              f"'mount -t proc proc {mnt} && touch {ready} && exec sleep 600'")
    wl = tree.launch(["/bin/sh", "-c", script], ready=ready.exists,
                     what="the nested namespace's proc to be mounted")
    res = tree.cli("check", wl.root)
    assert res.rc == 1, res.describe()
    assert f"mount {mnt}: proc mount: of a nested pid namespace: not supported" in res.out, \
        res.describe()
    assert_running_untraced(wl.root)
