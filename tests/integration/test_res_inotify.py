"""Resources: an inotify instance watching a directory and a file keeps its watches (same
wds, masks, paths) through ``tree dump`` + ``tree restore``, and in an LXC container through
``lxc checkpoint --stop`` + ``lxc restore``, and reports new events with them; a watch that
has no reopenable path is refused before freezing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from treeutil import (LXC_CR, all_pids_with_exe, assert_continued, assert_one_error_line,
                      assert_running_untraced, build, dump_kill, harness_fixture, idents,
                      read_state, snapshot, state_int, wait_for, wait_state)

pytestmark = pytest.mark.integration

tree = harness_fixture()
O_NONBLOCK = 0o4000
IN_CREATE, IN_DELETE, IN_MOVED_TO = 0x100, 0x200, 0x80
IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8


def watches(pid, fd) -> tuple[int, dict]:
    """(fd flags, {wd: (mask, ino)}) of an inotify fd, from /proc/PID/fdinfo/FD."""
    flags, out = 0, {}
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("flags:"):
                flags = int(line.split()[1], 8)
            if line.startswith("inotify "):
                kv = dict(tok.split(":", 1) for tok in line.split()[1:])
                out[int(kv["wd"], 16)] = (int(kv["mask"], 16), int(kv["ino"], 16))
    return flags, out


def launch(t, label, *extra):
    binary = build("res_inotify")
    d = t.dir(label)
    (d / "w").mkdir()
    (d / "f").write_text("0\n")
    st = d / "state"
    wl = t.launch([binary, st, d, *extra], ready=lambda: state_int(st, "counter") >= 5)
    return d, st, wl


def test_watches_keep_their_wds_and_report_events(tree):
    d, st, wl = launch(tree, "inotify")
    (d / "w" / "before").write_text("")
    with open(d / "f", "a") as f:
        f.write("1\n")
    s0 = wait_state(st, lambda s: "before," in s["created"] and int(s["file_events"]) > 0,
                    "the workload to see the first events")
    assert s0["bad"] == "0", s0
    wd_dir, wd_file = int(s0["wd_dir"]), int(s0["wd_file"])
    assert (wd_dir, int(s0["wd_gap"]), wd_file) == (1, 2, 3), s0    # a gap: wd 2 removed
    flags0, w0 = watches(wl.root, s0["ifd"])
    assert set(w0) == {wd_dir, wd_file}
    assert w0[wd_dir][0] == IN_CREATE | IN_DELETE | IN_MOVED_TO
    assert w0[wd_file][0] == IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE
    snap = snapshot(wl.root)

    dump_kill(tree, wl.root, d / "img")
    before = read_state(st)
    res = tree.cli("inspect", "--json", d / "img")
    assert res.rc == 0, res.describe()
    fds = {f["fd"]: f for f in json.loads(res.out)["tasks"][0]["fds"]}
    ifd = fds[int(s0["ifd"])]
    assert (ifd["kind"], ifd["target"]) == ("inotify", "anon_inode:inotify"), ifd
    res = tree.cli("inspect", "--json", "--section", "inotify_watch", d / "img")
    assert res.rc == 0, res.describe()
    recorded = {r["fields"]["wd"]: r["fields"] for r in json.loads(res.out)["records"]}
    assert {wd: r["path"] for wd, r in recorded.items()} == {wd_dir: str(d / "w"),
                                                              wd_file: str(d / "f")}

    root = tree.restore(d / "img")
    assert idents(snapshot(root)) == idents(snap)
    flags1, w1 = watches(root, s0["ifd"])
    assert w1 == w0, f"watches changed: {w0} -> {w1}"
    assert flags0 & O_NONBLOCK and flags0 & os.O_CLOEXEC, oct(flags0)
    assert flags1 == flags0, f"fd flags {oct(flags0)} -> {oct(flags1)}"
    # events after the restore come with the wds the program took before the checkpoint
    (d / "w" / "after").write_text("")
    with open(d / "f", "a") as f:
        f.write("2\n")
    after = wait_state(st, lambda s: s["bad"] != "0" or (
        "after," in s["created"] and int(s["file_events"]) > int(before["file_events"])),
        "the restored workload to report the new events")
    assert after["bad"] == "0", f"after restore: {after['why']}"
    assert_continued(before, after)
    assert after["created"].startswith(before["created"]), (before["created"], after["created"])
    assert_running_untraced(root)


def test_watch_without_reopenable_handle_refused(tree):
    # /proc/self of the workload: procfs encodes a file handle that cannot be opened again
    d, st, wl = launch(tree, "inotify-proc", "/proc/self")
    wait_state(st, lambda s: s["wd_extra"] == "4", "the extra watch")
    res = tree.cli("check", wl.root)
    assert res.rc == 1, res.describe()
    want = f"pid {wl.root} (res_inotify) fd {read_state(st)['ifd']}: inotify watch 4 ("
    lines = res.out.splitlines()
    assert len(lines) == 1 and lines[0].startswith(want), res.describe()
    assert "Stale file handle" in lines[0] and lines[0].endswith(": not supported"), lines[0]
    res = tree.cli("tree", "dump", wl.root, d / "img")
    assert res.rc == 1, res.describe()
    line = assert_one_error_line(res)
    assert "inotify watch 4 (" in line and line.endswith(": not supported"), line
    assert not (d / "img").exists()
    assert_running_untraced(wl.root)
    s = read_state(st)
    wait_state(st, lambda x: int(x["counter"]) > int(s["counter"]), "the workload to go on")


def test_watches_in_lxc_container_by_container_path(lxc_container, tmp_path):
    """In a busybox LXC container (pivot_root'd into its rootfs) the watches are recorded
    by their path inside the container, and still report events after lxc checkpoint
    --stop + lxc restore."""
    ct = lxc_container("inotify")
    rootfs = Path(ct.lxcpath) / ct.name / "rootfs"
    shutil.copy(build("res_inotify", "-static"), rootfs / "bin" / "res_inotify")
    (rootfs / "tmp" / "w").mkdir(parents=True)
    (rootfs / "tmp" / "f").write_text("0\n")
    (rootfs / "etc" / "init.d" / "rcS").write_text(
        "#!/bin/sh\n/bin/res_inotify /tmp/state /tmp </dev/null >/dev/null 2>&1 &\n")
    st = rootfs / "tmp" / "state"
    ct.start()
    wait_for(lambda: st.exists() and state_int(st, "counter") >= 5, "the workload in the container")
    res = subprocess.run([LXC_CR, "check", f"lxc:{ct.name}"], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=120)
    assert res.returncode == 0 and res.stdout == "", res
    img_dir = tmp_path / "ckpt"
    res = subprocess.run([LXC_CR, "lxc", "checkpoint", ct.name, img_dir, "-P", ct.lxcpath,
                          "--stop"], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    before = read_state(st)
    res = subprocess.run([LXC_CR, "inspect", "--json", "--section", "inotify_watch",
                          img_dir / "lxc-cr.img"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    paths = {r["fields"]["wd"]: r["fields"]["path"] for r in json.loads(res.stdout)["records"]}
    assert paths == {1: "/tmp/w", 3: "/tmp/f"}, paths

    res = subprocess.run([LXC_CR, "lxc", "restore", ct.name, img_dir, "-P", ct.lxcpath],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert res.returncode == 0, res.stderr
    (rootfs / "tmp" / "w" / "after").write_text("")
    with open(rootfs / "tmp" / "f", "a") as f:
        f.write("1\n")
    after = wait_state(st, lambda s: s["bad"] != "0" or (
        "after," in s["created"] and int(s["file_events"]) > int(before["file_events"])),
        "the restored container's workload to report the new events", timeout=60)
    assert after["bad"] == "0", after["why"]
    assert_continued(before, after)


def test_watch_on_filesystem_not_mounted_in_the_task_refused(tree):
    """A watch on a tmpfs that the task's mount namespace unmounted while the host still
    has it mounted (the watch lives while the superblock does): no mount of it is left in
    the task to reopen the handle through, nor to restore it at."""
    d = tree.dir("inotify-umount")
    mnt = d / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "lxccr-test-inotify", str(mnt)], check=True)
    try:
        (mnt / "x").mkdir()
        d, st, wl = launch(tree, "inotify-umount-wl", str(mnt / "x"))
        wait_state(st, lambda s: s["wd_extra"] == "4", "the extra watch")
        subprocess.run(["nsenter", "-t", str(wl.root), "-m", "-p", "umount", "-l", str(mnt)],
                       check=True)
        res = tree.cli("tree", "dump", wl.root, d / "img")
        assert res.rc == 1, res.describe()
        line = assert_one_error_line(res)
        assert "inotify watch 4 (on dev 0:" in line and ", not mounted in the task)" in line, line
        assert not (d / "img").exists()
        assert_running_untraced(wl.root)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_restore_of_a_watch_whose_path_is_gone_fails_cleanly(tree):
    d, st, wl = launch(tree, "inotify-gone")
    binary = wl.binary
    dump_kill(tree, wl.root, d / "img")
    (d / "f").unlink()
    res = tree.cli("tree", "restore", d / "img")
    assert res.rc == 1, res.describe()
    line = assert_one_error_line(res)
    assert line.endswith(f": inotify watch 3 on {d / 'f'}: No such file or directory"), line
    wait_for(lambda: not all_pids_with_exe(binary), "the half-restored tree to be gone")
