"""Engine core: a failure at any step of a dump or a restore leaves things as they were.

``LXC_CR_FAULT=dump:N`` / ``restore:N`` makes step N fail; ``LXC_CR_FAULT_TRACE=FILE`` lists
the steps a run reaches (``dump 3 frozen``).  A traced, successful dump and restore tell the
test how many steps there are; then it injects a failure at every one of them:

* dump: exit 1, exactly one ``lxc-cr: error:`` line, no IMAGE and nothing else left in its
  directory, and the tree runs on unharmed (same pids/ppids/pgids/sids, untraced, not
  stopped, every counter still advancing, same boot tokens);
* restore: exit 1, one error line, no process left behind (none running the workload's
  binary, no stray child or namespace of ours), the image unchanged; and a normal restore
  afterwards works and continues from the checkpoint.
"""

from __future__ import annotations

import os
import re

import pytest

from treeutil import (all_pids_with_exe, assert_continued, assert_one_error_line,
                      assert_running_untraced, build, descendants_of_me, dump_kill, gone,
                      harness_fixture, idents, ids, read_state, reset_state, sha256_file,
                      snapshot,
                      wait_changed, wait_for)

pytestmark = pytest.mark.integration

tree = harness_fixture()

TRACE_RE = re.compile(r"(dump|restore) (\d+) (.+)")


def trace_steps(path, op: str) -> list[tuple[int, str]]:
    steps = []
    for line in path.read_text().splitlines():
        m = TRACE_RE.fullmatch(line.strip())
        assert m, f"malformed fault trace line {line!r}"
        if m.group(1) == op:
            steps.append((int(m.group(2)), m.group(3)))
    ns = [n for n, _ in steps]
    assert ns == list(range(1, len(ns) + 1)), f"{op} steps not numbered 1..N: {steps}"
    return steps


def launch(h, kind: str):
    """(workload, dir, state files) for a single process or for wl_tree."""
    if kind == "counter":
        binary = build("wl_counter")
        d = h.dir("fault-counter")
        files = [d / "state"]
        wl = h.launch([binary, files[0]])
    else:
        binary = build("wl_tree")
        d = h.dir("fault-tree")
        files = [d / f"state.{r}" for r in ("R", "A", "G", "H", "J")]
        wl = h.launch([binary, d])
    wait_for(lambda: all(int(read_state(f)["counter"]) >= 3 for f in files),
             f"{kind} workload ready")
    return wl, d, files


def states(files) -> dict:
    return {f: read_state(f) for f in files}


def all_advance(files, since: dict, what: str) -> None:
    for f in files:
        after = wait_changed(f, since[f])
        assert_continued(since[f], after, what=f"{what}: {f.name}")


@pytest.mark.parametrize("kind", ["counter", "tree"])
def test_fault_at_every_dump_and_restore_step(tree, kind):
    wl, d, files = launch(tree, kind)
    binary = wl.binary
    snap0 = snapshot(wl.root)

    # a traced, successful dump and restore: the list of steps
    img = d / "img"
    trace = d / "trace-dump"
    dump_kill(tree, wl.root, img, env={"LXC_CR_FAULT_TRACE": str(trace)})
    dump_steps = trace_steps(trace, "dump")
    assert len(dump_steps) >= 3 and "frozen" in {s for _, s in dump_steps}, dump_steps
    checkpoint = states(files)
    img_sha = sha256_file(img)
    trace = d / "trace-restore"
    root = tree.restore(img, env={"LXC_CR_FAULT_TRACE": str(trace)})
    restore_steps = trace_steps(trace, "restore")
    assert len(restore_steps) >= 2, restore_steps
    all_advance(files, checkpoint, "after the traced restore")
    assert ids(snapshot(root)) == ids(snap0)

    # a failure at each dump step leaves the (restored) tree running as it was
    out = tree.dir("fault-images")
    snap1 = snapshot(root)
    for n, name in dump_steps:
        before = states(files)
        res = tree.cli("tree", "dump", root, out / "img", env={"LXC_CR_FAULT": f"dump:{n}"})
        where = f"LXC_CR_FAULT=dump:{n} ({name})"
        assert res.rc == 1, f"{where}: " + res.describe()
        assert_one_error_line(res)
        assert os.listdir(out) == [], f"{where}: left in the image directory: {os.listdir(out)}"
        assert idents(snapshot(root)) == idents(snap1), f"{where}: the tree changed"
        assert_running_untraced(root)
        all_advance(files, before, where)

    tree.kill_and_reap(root, "restored root")
    assert all_pids_with_exe(binary) == set()

    # a failure at each restore step leaves no process behind and the image intact
    ours = {wl.popen.pid}
    for n, name in restore_steps:
        res = tree.cli("tree", "restore", img, env={"LXC_CR_FAULT": f"restore:{n}"})
        where = f"LXC_CR_FAULT=restore:{n} ({name})"
        assert res.rc == 1, f"{where}: " + res.describe()
        assert_one_error_line(res)
        assert res.out.strip() == "", f"{where}: printed a pid for a failed restore: {res.out!r}"

        def leftovers():
            left = {p for p in descendants_of_me() - ours if not gone(p)}
            return left | all_pids_with_exe(binary)
        left = leftovers()
        if left:        # give the kernel its moment to finish tearing a namespace down
            try:
                wait_for(lambda: not leftovers(), "no leftover", timeout=10)
            except AssertionError:
                pass
        left = leftovers()
        assert not left, f"{where}: processes left behind: " + "; ".join(
            f"{p} {describe(p)}" for p in sorted(left))
        assert sha256_file(img) == img_sha, f"{where}: the image changed"

    # and the image still restores, continuing from the checkpoint
    for f in files:
        reset_state(f)
    root = tree.restore(img)
    for f in files:
        s = wait_for(lambda f=f: read_state(f), f"{f.name} rewritten")
        assert s["boot"] == checkpoint[f]["boot"]
        assert int(s["counter"]) > int(checkpoint[f]["counter"])
    assert ids(snapshot(root)) == ids(snap0)


def describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            st = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        return f"({st.get('Name')}, {st.get('State')}, PPid {st.get('PPid')}, " \
               f"NSpid {st.get('NSpid')}, exe {os.path.realpath(f'/proc/{pid}/exe')})"
    except OSError:
        return "(gone)"
