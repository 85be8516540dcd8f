"""Engine core: ``tree dump --leave-running`` resumes the tree, and the image later restores
as a second, independent copy that continues from the checkpoint.

wl_counter only counts while DIR/pause does not exist, so the test knows the exact counter
value at the checkpoint: it pauses the counter, dumps, and lets the first copy run on.
"""

from __future__ import annotations

import pytest

from treeutil import (assert_running_untraced, build, gone, harness_fixture, idents,
                      read_state, reset_state, snapshot, state_int, tree_pids, wait_for,
                      wait_state)

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
