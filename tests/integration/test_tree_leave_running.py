"""Engine core: ``tree dump --leave-running`` resumes the tree, and the image later restores
as a second, independent copy that continues from the checkpoint.

wl_counter only counts while DIR/pause does not exist, so the test knows the exact counter
value at the checkpoint: it pauses the counter, dumps, and lets the first copy run on.
"""

from __future__ import annotations

import os

import pytest

from treeutil import (assert_running_untraced, build, gone, harness_fixture, idents,
                      launch_threads, read_state, reset_state, snapshot, state_int, tids,
                      tree_pids, wait_for, wait_state)

pytestmark = pytest.mark.integration

tree = harness_fixture()


def test_leave_running_then_second_copy_continues_from_checkpoint(tree):
    binary = build("wl_counter")
    d = tree.dir("leave-running")
    st, pause = d / "state", d / "pause"
    wl = tree.launch([binary, st, pause], ready=lambda: state_int(st, "counter") >= 5)
    boot = read_state(st)["boot"]

    # pause: the counter stops at a value the test knows exactly
    pause.touch()
    s = wait_state(st, lambda s: s["paused"] == "1", "the counter to pause")
    checkpoint = int(s["counter"])
    snap = snapshot(wl.root)
    hosts = tree_pids(wl.root)

    res = tree.dump(wl.root, d / "img", "--leave-running")
    assert res.out.strip() == "", res.describe()
    # the same processes are still there, running and no longer traced ...
    assert tree_pids(wl.root) == hosts
    assert idents(snapshot(wl.root)) == idents(snap)
    assert_running_untraced(wl.root)
    # ... and they keep working: unpaused, the counter goes well past the checkpoint
    pause.unlink()
    s = wait_state(st, lambda s: int(s["counter"]) > checkpoint + 200,
                   "the first copy to keep counting after the dump")
    assert s["boot"] == boot

    # kill the first copy; the image gives a second copy starting at the checkpoint value
    pause.touch()
    tree.kill_workload(wl)
    for p in hosts:
        wait_for(lambda p=p: gone(p), f"pid {p} of the first copy to die")
    first_final = state_int(st, "counter")
    assert first_final > checkpoint + 200
    reset_state(st)
    root = tree.restore(d / "img")
    s = wait_for(lambda: read_state(st), "the second copy to write its state")
    assert s["boot"] == boot, "the second copy is not the checkpointed program"
    assert int(s["counter"]) == checkpoint, (
        f"the second copy starts at {s['counter']}, not at the checkpoint value {checkpoint} "
        f"(the first copy had reached {first_final})")
    assert idents(snapshot(root)) == idents(snap)
    assert root not in hosts

    pause.unlink()
    s = wait_state(st, lambda s: int(s["counter"]) > checkpoint + 50,
                   "the second copy to count on from the checkpoint")
    assert s["boot"] == boot
    assert_running_untraced(root)


def _affinities(root: int) -> dict[int, set]:
    return {t: os.sched_getaffinity(t) for p in tree_pids(root) for t in tids(p)}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_threads_get_their_affinity_back(tree):
    """While syscalls are injected, the dump and the restore run the tree's threads on
    lxc-cr's own CPU (ptrace.Colocation).  Afterwards every thread of a tree left running
    has its own affinity back (one thread kept on one CPU, the others on all), and every
    restored thread has the restorer's, as a process forked from it would."""
    n = 3
    wl, d, st = launch_threads(tree, "affinity", n)
    one = [t for t in tids(wl.root) if t != wl.root][0]          # a worker thread (host tid)
    os.sched_setaffinity(one, {max(os.sched_getaffinity(0))})
    before = _affinities(wl.root)
    assert len(set(map(frozenset, before.values()))) == 2, before

    res = tree.dump(wl.root, d / "img", "--leave-running")
    assert res.out.strip() == "", res.describe()
    assert _affinities(wl.root) == before
    last = read_state(st)
    wait_state(st, lambda s: int(s["main"]) > int(last["main"]), "the tree to run on")

    tree.kill_workload(wl)
    root = tree.restore(d / "img")
    mine = os.sched_getaffinity(0)
    after = _affinities(root)
    assert len(after) == n + 1 and all(m == mine for m in after.values()), after
