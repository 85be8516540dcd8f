"""Engine core: a process tree (3 levels, a zombie, a process group, a session) keeps every
pid, ppid, pgid and sid of its pid namespace across dump + restore, once and 50 times.

wl_tree (see tests/workloads/wl_tree.c):
    R -> Z (zombie, exit status 7, reaped by R only when DIR/trigger exists)
    R -> A (setpgid(0,0)) -> G (setsid) -> H (setpgid(0,0)), J (setpgid(0,H))
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from treeutil import (LXC_CR, PYTHON3, assert_continued, assert_running_untraced, build,
                      children, dump_kill, harness_fixture, idents, ids, read_state, snapshot,
                      status, wait_changed, wait_for, wait_state)

pytestmark = pytest.mark.integration

tree = harness_fixture()

LIVE = ("R", "A", "G", "H", "J")


def launch_tree(h, label: str, setsid_root: bool):
    binary = build("wl_tree")
    d = h.dir(label, 0o755)
    args = [binary, d] + (["setsid-root"] if setsid_root else [])

    wl = h.launch(args)

    def ready():
        sts = {r: read_state(d / f"state.{r}") for r in LIVE}
        if not all(int(s["counter"]) >= 2 for s in sts.values()):
            return False
        snap = snapshot(wl.root)
        return len(snap) == 6 and snap[int(sts["R"]["zpid"])].state == "Z"
    wait_for(ready, "wl_tree: all 5 live processes writing state, Z a zombie")
    return wl, d


def states(d) -> dict:
    return {r: read_state(d / f"state.{r}") for r in LIVE}


def check_self_view(d, snap) -> None:
    """What each process says about itself (getpid, getppid, getpgrp, getsid) matches /proc."""
    for role, s in states(d).items():
        v = snap[int(s["pid"])]
        assert (v.pid, v.ppid, v.pgid, v.sid) == (
            int(s["pid"]), int(s["ppid"]), int(s["pgid"]), int(s["sid"])), (role, s, v)


def check_shape(d, snap, setsid_root: bool) -> None:
    """The arrangement wl_tree builds, so a restore that loses it cannot look equal by luck."""
    st = states(d)
    pid = {r: int(st[r]["pid"]) for r in LIVE}
    z = int(st["R"]["zpid"])
    R, A, G, H, J = (pid[r] for r in LIVE)
    rsid = 1 if setsid_root else 0       # 0: R's session leader is outside the namespace
    assert R == 1
    expect = {
        R: (0, rsid, rsid),              # (ppid, pgid, sid)
        z: (R, rsid, rsid),
        A: (R, A, rsid),
        G: (A, G, G),
        H: (G, H, G),
        J: (G, H, G),
    }
    got = {p: (v.ppid, v.pgid, v.sid) for p, v in snap.items()}
    assert got == expect, f"wl_tree did not build the expected tree: {got} != {expect}"
    assert snap[z].state == "Z"


@pytest.mark.parametrize("setsid_root", [False, True], ids=["plain-root", "setsid-root"])
def test_tree_ids_and_zombie_survive(tree, setsid_root):
    wl, d = launch_tree(tree, "tree", setsid_root)
    snap = snapshot(wl.root)
    check_shape(d, snap, setsid_root)
    check_self_view(d, snap)
    zpid = int(read_state(d / "state.R")["zpid"])

    dump_kill(tree, wl.root, d / "img")
    last = states(d)
    root = tree.restore(d / "img")
    for r in LIVE:
        after = wait_changed(d / f"state.{r}", last[r])
        assert_continued(last[r], after, what=f"wl_tree process {r}")
    assert read_state(d / "state.R")["reaped"] == "0"

    snap2 = snapshot(root)
    assert ids(snap2) == ids(snap), (
        f"pid/ppid/pgid/sid changed:\nbefore {ids(snap)}\nafter  {ids(snap2)}")
    assert snap2[zpid].state == "Z", f"pid {zpid} should still be a zombie: {snap2[zpid]}"
    check_self_view(d, snap2)
    assert_running_untraced(root)

    # the restored parent reaps the restored zombie, with the recorded exit status
    (d / "trigger").touch()
    reaped = wait_for(lambda: (d / "reaped").exists() and read_state(d / "reaped"),
                      "R to reap the zombie after the trigger")
    assert int(reaped["ret"]) == zpid, f"waitpid returned {reaped['ret']}, expected {zpid}"
    assert reaped["exited"] == "1" and reaped["code"] == "7", f"zombie status: {reaped}"
    wait_state(d / "state.R", lambda s: s["reaped"] == "1", "R to report the reap")
    assert zpid not in snapshot(root)
    # names and threads too (checked last so the checks above still report)
    assert idents(snap2) == idents(snap), (
        f"comm or threads changed:\nbefore {idents(snap)}\nafter  {idents(snap2)}")


def test_tree_50_dump_restore_cycles(tree):
    wl, d = launch_tree(tree, "cycles", setsid_root=False)
    snap0 = snapshot(wl.root)
    check_shape(d, snap0, setsid_root=False)
    first = states(d)
    zpid = int(first["R"]["zpid"])
    root = wl.root
    other_changes = []           # comm/threads: reported after the 50 cycles
    for cycle in range(1, 51):
        img = d / f"img{cycle}"
        dump_kill(tree, root, img)
        last = states(d)
        root = tree.restore(img)
        for r in LIVE:
            after = wait_changed(d / f"state.{r}", last[r])
            assert after["boot"] == first[r]["boot"], f"cycle {cycle}: {r} restarted"
            assert int(after["counter"]) > int(last[r]["counter"]), f"cycle {cycle}: {r}"
        snap = snapshot(root)
        assert ids(snap) == ids(snap0), f"cycle {cycle}: pid/ppid/pgid/sid changed: {ids(snap)}"
        if idents(snap) != idents(snap0):
            other_changes.append((cycle, idents(snap)))
        assert snap[zpid].state == "Z", f"cycle {cycle}: {snap[zpid]}"
        assert_running_untraced(root)
        img.unlink()
    # the zombie survived all 50 cycles with its status
    (d / "trigger").touch()
    reaped = wait_for(lambda: (d / "reaped").exists() and read_state(d / "reaped"),
                      "R to reap the zombie after 50 cycles")
    assert int(reaped["ret"]) == zpid and reaped["code"] == "7", reaped
    assert not other_changes, (
        f"comm or threads changed in {len(other_changes)} of 50 cycles, first in cycle "
        f"{other_changes[0][0]}:\nbefore {idents(snap0)}\nafter  {other_changes[0][1]}")


PARENT = """
import os, sys, time
pid = os.fork()
if pid == 0:
    time.sleep(3600)
    os._exit(0)
i = 0
while True:                          # never reaps its child
    i += 1
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(f"counter={i}\\n")
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(0.05)
"""


def test_child_that_exits_while_the_dump_runs_is_recorded_as_a_zombie(tree):
    """A task alive when the dump looked at the tree and a zombie when it was frozen (a
    container's short ``sleep``: one already in do_exit() is not held by the freezer) is
    recorded as a zombie, not with the state it had first and no memory: the image
    restores, the zombie with it.  The dump is held after its check (fault step
    ``checked``) while the child is killed."""
    d = tree.dir("late-zombie")
    st = d / "state"
    script = d / "parent.py"
    script.write_text(PARENT)
    wl = tree.launch([PYTHON3, script, st], ready=lambda: st.exists())
    child = wait_for(lambda: children(wl.root), "the child to be forked")[0]
    trace = d / "trace"
    env = dict(os.environ, LXC_CR_FAULT_TRACE=str(trace), LXC_CR_FAULT_HOLD="dump:1",
               LXC_CR_FAULT_HOLD_SECONDS="2")
    env.pop("LXC_CR_FAULT", None)
    proc = subprocess.Popen([LXC_CR, "tree", "dump", str(wl.root), str(d / "img")], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_for(lambda: trace.exists() and trace.read_text().endswith(" checked\n"),
             "the dump to hold after its check")
    os.kill(child, signal.SIGKILL)
    wait_for(lambda: status(child)["State"].startswith("Z"), "the child to become a zombie",
             timeout=10)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    root = tree.restore(d / "img")
    snap = snapshot(root)
    assert [t.state for t in snap.values()].count("Z") == 1, snap
    assert len(snap) == 2, snap
