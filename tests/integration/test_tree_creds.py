"""Engine core: credentials and rlimits a tree set for itself survive dump + restore.

wl_creds (see tests/workloads/wl_creds.c): R stays root; U is uid/gid 1000 with groups
1001,1002 and RLIMIT_NOFILE 512/768; C is uid 0 with empty capability sets; K is
uid 1000/1001/1002, gid 2000/2001/2002, no groups, a reduced bounding set and some
permitted/effective/inheritable/ambient capabilities.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from treeutil import (assert_continued, assert_running_untraced, build, dump_kill,
                      harness_fixture, idents, read_state, snapshot, status, tree_pids,
                      wait_changed, wait_for)

pytestmark = pytest.mark.integration

tree = harness_fixture()

ROLES = ("R", "U", "C", "K")
CRED_KEYS = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def caps(*bits: int) -> str:
    return f"{sum(1 << b for b in bits):016x}"


CAP_KILL, CAP_NET_BIND_SERVICE, CAP_NET_RAW, CAP_MKNOD, CAP_SYS_BOOT = 5, 10, 13, 27, 22


def snapshot_creds(root: int) -> dict:
    """{ns pid: ({thread: cred lines}, limits text)}."""
    out = {}
    for h in tree_pids(root):
        st = status(h)
        ns = int(st["NSpid"].split()[-1])
        threads = {}
        for t in sorted(int(x) for x in os.listdir(f"/proc/{h}/task")):
            s = status(h, t)
            threads[int(s["NSpid"].split()[-1])] = {k: s[k] for k in CRED_KEYS}
        out[ns] = (threads, Path(f"/proc/{h}/limits").read_text())
    return out


def test_credentials_and_rlimits_survive(tree):
    binary = build("wl_creds")
    d = tree.dir("creds", 0o777)          # U and K write their state files as uid 1000/1001

    def ready():
        sts = {r: read_state(d / f"state.{r}") for r in ROLES}
        return all(int(s["counter"]) >= 2 for s in sts.values()) and sts
    wl = tree.launch([binary, d])
    sts = wait_for(ready, "wl_creds: all 4 processes writing state")
    for role, s in sts.items():
        assert s["ok"] == "1", f"wl_creds {role} could not set its credentials: {s}"

    before = snapshot_creds(wl.root)
    snap = snapshot(wl.root)
    # the tree really is what wl_creds says (so an equal "after" cannot be a default)
    by_uid = {th[next(iter(th))]["Uid"]: (th[next(iter(th))], lim)
              for th, lim in before.values()}
    u, u_lim = by_uid["1000\t1000\t1000\t1000"]
    assert u["Gid"] == "1000\t1000\t1000\t1000" and u["Groups"] == "1001 1002"
    assert u["CapEff"] == u["CapPrm"] == caps()
    assert "Max open files            512                  768" in u_lim, u_lim
    k, _ = by_uid["1000\t1001\t1002\t1001"]
    assert k["Gid"] == "2000\t2001\t2002\t2001" and k["Groups"] == ""
    assert k["CapEff"] == caps(CAP_KILL, CAP_NET_BIND_SERVICE)
    assert k["CapPrm"] == caps(CAP_KILL, CAP_NET_BIND_SERVICE, CAP_NET_RAW)
    assert k["CapInh"] == k["CapAmb"] == caps(CAP_NET_BIND_SERVICE)
    assert int(k["CapBnd"], 16) & (1 << CAP_SYS_BOOT | 1 << CAP_MKNOD) == 0
    root_like = [th[next(iter(th))] for th, _ in before.values()
                 if th[next(iter(th))]["Uid"] == "0\t0\t0\t0"]
    assert len(root_like) == 2                                   # R and C
    assert sorted(c["CapEff"] == caps() for c in root_like) == [False, True]

    dump_kill(tree, wl.root, d / "img")
    last = {r: read_state(d / f"state.{r}") for r in ROLES}
    root = tree.restore(d / "img")
    for r in ROLES:
        after = wait_changed(d / f"state.{r}", last[r])
        assert_continued(last[r], after, what=f"wl_creds {r}")

    after = snapshot_creds(root)
    assert set(after) == set(before)
    for ns in before:
        assert after[ns][0] == before[ns][0], (
            f"credentials of ns pid {ns} changed:\nbefore {before[ns][0]}\nafter  {after[ns][0]}")
        assert after[ns][1] == before[ns][1], (
            f"/proc/PID/limits of ns pid {ns} changed:\nbefore\n{before[ns][1]}\nafter\n"
            f"{after[ns][1]}")
    assert idents(snapshot(root)) == idents(snap)
    assert_running_untraced(root)
