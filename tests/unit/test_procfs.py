"""lxc_cr.kernel.procfs: parsers on a stored /proc tree, on hand-made edge cases, and on
every live pid of this machine; the /proc error boundary; the generated syscall table.

The stored tree (tests/unit/data/proc) is rebuilt by data/proc/capture.py from fixture.c.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lxc_cr.errors import OperationFailed, TaskGone
from lxc_cr.kernel import procfs
from lxc_cr.kernel._syscalls_x86_64 import NAMES, SYSCALLS
from lxc_cr.kernel.procfs import (
    PF_KTHREAD, UNLIMITED, Proc, fdinfo_fields, is_zombie, parse_auxv, parse_creds,
    parse_fd_link, parse_fdinfo, parse_inotify_watch, parse_limits, parse_maps,
    parse_mountinfo, parse_ns_link, parse_stat, parse_status, parse_timers)

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent / "data" / "proc"
PIDS = json.loads((DATA / "pids.json").read_text())
FIX, THREAD, ZOMBIE = PIDS["fixture"], PIDS["thread"], PIDS["zombie"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tree() -> Proc:
    return Proc(str(DATA))


@pytest.fixture(scope="module")
def tmpdir_of_fixture() -> str:
    """The temp directory fixture.c ran in (its name has spaces and a random suffix)."""
    return os.readlink(DATA / str(FIX) / "cwd")


# --- the stored tree -----------------------------------------------------------------------

def test_tree_pids_tids_children(tree):
    assert tree.pids() == sorted(PIDS[k] for k in PIDS if k != "thread")
    assert tree.tids(FIX) == [FIX, THREAD]
    # the thread's child is only in task/THREAD/children: children() is the union
    assert tree.children(FIX) == sorted([ZOMBIE, PIDS["child"], PIDS["thread_child"]])
    assert tree.fds(FIX) == list(range(14))


def test_stat_comm_with_spaces_and_parens(tree):
    st = tree.stat(FIX)
    assert (st.pid, st.comm, st.state, st.pgrp, st.session) == (FIX, "a) (b c)", "S", FIX, FIX)
    assert st.num_threads == 2 and st.exit_signal == 17 and st.exit_code == 0
    assert st.start_code < st.end_code <= st.start_data < st.end_data <= st.start_brk
    assert st.arg_start < st.arg_end <= st.env_start < st.env_end
    assert not st.flags & PF_KTHREAD and not is_zombie(st)
    th = tree.stat(FIX, tid=THREAD)
    assert (th.pid, th.comm, th.exit_signal, th.vsize) == (THREAD, "thr x)", -1, st.vsize)


def test_zombie(tree):
    st = tree.stat(ZOMBIE)
    assert is_zombie(st) and st.state == "Z" and st.ppid == FIX
    assert st.exit_code == 7 << 8 and st.vsize == 0
    assert tree.creds(ZOMBIE).umask is None
    for call in (tree.maps, tree.auxv, tree.smaps_vmflags):
        with pytest.raises(TaskGone, match="zombie"):
            call(ZOMBIE)
    assert tree.limits(ZOMBIE)  # limits live in signal_struct: still readable


def test_kernel_thread(tree):
    st = tree.stat(2)
    assert st.comm == "kthreadd" and st.flags & PF_KTHREAD and st.ppid == 0
    assert tree.maps(2) == []
    assert tree.creds(2).tgid == 2


def test_status_and_creds(tree):
    status = tree.status(FIX)
    assert status["Name"] == "a) (b c)" and status["Groups"] == ""
    cr = tree.creds(FIX)
    assert cr.uids == (0, 0, 0, 0) and cr.gids == (0, 0, 0, 0) and cr.groups == ()
    assert cr.umask == 0o027 and cr.threads == 2 and cr.tgid == FIX and cr.no_new_privs == 0
    assert cr.nspid == (FIX,) and cr.nspgid == (FIX,) and cr.nssid == (FIX,)
    assert cr.cap_bnd == int(status["CapBnd"], 16) and cr.cap_eff & 1 << 21  # CAP_SYS_ADMIN
    assert tree.creds(FIX, tid=THREAD).nspid == (THREAD,)


def test_maps(tree, tmpdir_of_fixture):
    maps = tree.maps(FIX)
    by_path = {m.path: m for m in maps}
    assert {"[heap]", "[stack]", "[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]", ""} \
        <= set(by_path)
    gone = by_path[f"{tmpdir_of_fixture}/a b/my file (1) (deleted)"]
    assert (gone.perms, gone.prot, gone.shared, gone.deleted) == ("rw-s", 3, True, True)
    assert gone.end - gone.start == 8192 and gone.inode == 2 and gone.dev_major == 0
    kept = by_path[f"{tmpdir_of_fixture}/a b/kept file"]
    assert (kept.perms, kept.prot, kept.shared, kept.deleted, kept.pgoff) == \
        ("r-xp", 5, False, False, 0)
    assert kept.dev_minor == gone.dev_minor
    assert by_path["[vsyscall]"].start == 0xffffffffff600000
    assert by_path["[vsyscall]"].prot == 4
    assert [m.start for m in maps] == sorted(m.start for m in maps)


def test_smaps_vmflags(tree):
    maps = {m.path: m for m in tree.maps(FIX)}
    flags = tree.smaps_vmflags(FIX)
    assert set(flags) == {m.start for m in maps.values()} | {m.start for m in tree.maps(FIX)}
    assert "gd" in flags[maps["[stack]"].start]
    assert "sh" in next(flags[m.start] for m in maps.values() if m.deleted)
    assert "dd" in flags[maps["[vvar]"].start]


def test_limits(tree):
    limits = tree.limits(FIX)
    assert [lim.resource for lim in limits] == list(range(16))
    assert (limits[resource.RLIMIT_NOFILE].soft, limits[resource.RLIMIT_NOFILE].hard) == \
        (1000, 4096)
    assert limits[resource.RLIMIT_CORE].soft == limits[resource.RLIMIT_CORE].hard == UNLIMITED
    assert limits[13].name == "Max nice priority" and limits[15].name == "Max realtime timeout"


def test_auxv(tree):
    words = tree.auxv(FIX)
    pairs = dict(zip(words[::2], words[1::2]))
    assert words[-2:] == [0, 0] and len(words) % 2 == 0
    assert pairs[6] == 4096                              # AT_PAGESZ
    assert pairs[33] == next(m.start for m in tree.maps(FIX) if m.path == "[vdso]")
    assert pairs[3] > 0 and pairs[9] > 0                 # AT_PHDR, AT_ENTRY


def test_fd_links_and_fdinfo(tree, tmpdir_of_fixture):
    link = {fd: parse_fd_link(tree.readlink(FIX, f"fd/{fd}")) for fd in tree.fds(FIX)}
    assert link[3] == ("path", f"{tmpdir_of_fixture}/a b/kept file")
    assert link[4] == ("anon_inode", "[eventfd]")
    assert link[5][0] == link[6][0] == "pipe" and link[5][1] == link[6][1]
    assert link[7] == ("anon_inode", "[eventpoll]") and link[8] == ("anon_inode", "inotify")
    assert link[9] == ("anon_inode", "[timerfd]") and link[10] == ("anon_inode", "[signalfd]")
    assert link[11][0] == link[12][0] == "socket" and isinstance(link[11][1], int)
    assert link[13] == ("path", "/memfd:my memfd (deleted)")

    mnt = next(m for m in tree.mountinfo(FIX) if m.mount_point.endswith("/a b"))
    info = {fd: tree.fdinfo(FIX, fd) for fd in tree.fds(FIX)}
    assert (info[3].pos, info[3].flags & os.O_ACCMODE, info[3].mnt_id) == \
        (100, os.O_RDWR, mnt.mount_id)
    assert info[5].ino == link[5][1] and info[5].flags & os.O_CLOEXEC
    assert info[4].extra["eventfd-count"].strip() == "5"
    assert info[4].flags & os.O_NONBLOCK and info[4].flags & os.O_CLOEXEC
    tfds = {fdinfo_fields(line)["tfd"]: fdinfo_fields(line) for line in info[7].extra["tfd"]}
    assert set(tfds) == {"4", "5"} and tfds["4"]["data"] == "1234"
    assert int(tfds["5"]["events"], 16) & 1 << 31                    # EPOLLET
    watches = [fdinfo_fields(line) for line in info[8].extra["inotify"]]
    assert sorted(w["wd"] for w in watches) == ["1", "2"] and all("f_handle" in w
                                                                 for w in watches)
    assert info[9].extra["clockid"] == "1" and info[9].extra["it_interval"] == "(1, 0)"
    assert "settime flags" in info[9].extra
    assert int(info[10].extra["sigmask"], 16) == 1 << 9 | 1 << 11   # SIGUSR1, SIGUSR2


def test_inotify_watch_lines(tree):
    """The fixture watches argv[1] (ext4, IN_CREATE|IN_DELETE) and a tmpfs (IN_MODIFY)."""
    lines = tree.fdinfo(FIX, 8).extra["inotify"]
    w = {x.wd: x for x in map(parse_inotify_watch, lines)}
    assert set(w) == {1, 2}
    assert w[1].mask == 0x100 | 0x200 and w[2].mask == 0x2
    mounts = {(m.major, m.minor): m for m in tree.mountinfo(FIX)}
    assert mounts[w[2].dev].fstype == "tmpfs" and mounts[w[1].dev].mount_point == "/"
    assert (w[1].handle_type, len(w[1].handle)) == (1, 8) and w[2].ino == 1
    bare = parse_inotify_watch("inotify wd:1a ino:5 sdev:800001 mask:8000100 ignored_mask:0")
    assert (bare.wd, bare.dev, bare.handle_type, bare.handle) == (0x1a, (8, 1), -1, b"")
    with pytest.raises(ValueError):
        parse_inotify_watch("inotify ino:5 sdev:1 mask:2")
    with pytest.raises(ValueError):
        parse_inotify_watch("inotify wd:1 ino:5 sdev:1 mask:2 fhandle-bytes:8 f_handle:00")


def test_mountinfo_escapes(tree, tmpdir_of_fixture):
    raw = (DATA / str(FIX) / "mountinfo").read_bytes()
    assert b"/a\\040b " in raw and b" my\\040src " in raw
    mounts = tree.mountinfo(FIX)
    mnt = next(m for m in mounts if m.mount_point == f"{tmpdir_of_fixture}/a b")
    assert (mnt.fstype, mnt.source, mnt.root, mnt.optional) == ("tmpfs", "my src", "/", ())
    assert "size=1024k" in mnt.super_options and mnt.options.startswith("rw")
    ids = {m.mount_id for m in mounts}
    assert mnt.parent_id in ids and any(m.mount_point == "/" for m in mounts)


def test_ns_personality_timers(tree):
    for kind in ("net", "mnt", "pid", "user", "uts", "ipc", "cgroup", "time"):
        name, ino = parse_ns_link(tree.readlink(FIX, f"ns/{kind}"))
        assert name == kind and tree.ns(FIX, kind) == ino
    assert tree.personality(FIX) == 0x0040000                      # ADDR_NO_RANDOMIZE
    timers = {t["clock_id"]: t for t in tree.timers(FIX)}
    assert sorted(t["id"] for t in timers.values()) == [0, 1, 2]
    assert timers[1] == {"id": 0, "signo": 35, "sigval": 42, "notify": "signal",
                         "thread_id": False, "notify_pid": FIX, "clock_id": 1}
    assert timers[0]["notify"] == "none"
    assert (timers[7]["thread_id"], timers[7]["notify_pid"], timers[7]["signo"]) == \
        (True, THREAD, 10)


# --- hand-made edge cases ------------------------------------------------------------------

def _stat_line(pid: int, comm: bytes, state: bytes = b"R") -> bytes:
    fields = [str(n).encode() for n in range(4, 53)]   # field N holds the number N
    return b"%d (%s) %s %s\n" % (pid, comm, state, b" ".join(fields))


@pytest.mark.parametrize("comm", [b")", b"(", b") (", b"a b c", b"x) R 1 2 (y", b"))))"])
def test_parse_stat_odd_comms(comm):
    st = parse_stat(_stat_line(42, comm))
    assert (st.pid, st.comm, st.state) == (42, comm.decode(), "R")
    for name, num in procfs._STAT_FIELDS.items():
        assert getattr(st, name) == num


def test_parse_stat_rejects_garbage():
    for bad in (b"", b"42 comm R 1", _stat_line(1, b"x")[:40]):
        with pytest.raises(ValueError):
            parse_stat(bad)


def test_parse_maps_edge_cases():
    data = (b"00400000-00401000 r-xp 00000000 08:01 1234          /x/a  b  (deleted)\n"
            b"00600000-00700000 rw-s 00001000 fd:1a 99 /dev/shm/x y\n"
            b"7f0000000000-7f0000001000 ---p 00000000 00:00 0 \n")
    a, b, c = parse_maps(data)
    assert (a.path, a.deleted, a.prot, a.dev_major, a.dev_minor) == \
        ("/x/a  b  (deleted)", True, 5, 8, 1)
    assert (b.path, b.shared, b.pgoff, b.dev_major, b.dev_minor) == \
        ("/dev/shm/x y", True, 0x1000, 0xfd, 0x1a)
    assert (c.path, c.prot, c.start) == ("", 0, 0x7f0000000000)


def test_parse_mountinfo_edge_cases():
    data = (b"36 35 98:0 /mnt\\0111 /a\\134b\\012c rw,noatime shared:1 master:2 "
            b"propagate_from:3 - ext3 /dev/my\\040disk rw,errors=continue\n"
            b"40 36 0:5 / /x rw - tmpfs none rw\n")
    a, b = parse_mountinfo(data)
    assert (a.root, a.mount_point, a.source) == ("/mnt\t1", "/a\\b\nc", "/dev/my disk")
    assert a.optional == ("shared:1", "master:2", "propagate_from:3")
    assert (a.major, a.minor, a.fstype, a.super_options) == (98, 0, "ext3", "rw,errors=continue")
    assert (b.optional, b.parent_id, b.source) == ((), 36, "none")
    with pytest.raises(ValueError):
        parse_mountinfo(b"1 2 3:4 / / rw shared:1 ext4 x rw\n")


def test_parse_limits_all_unlimited():
    rows = ["%-25s %-20s %-20s %-10s" % ("Limit", "Soft Limit", "Hard Limit", "Units")]
    rows += ["%-25s %-20s %-20s %-10s" % (n, "unlimited", "unlimited", "") for n in
             procfs.LIMIT_NAMES]
    limits = parse_limits("\n".join(rows).encode() + b"\n")
    assert [(lim.resource, lim.soft, lim.hard) for lim in limits] == \
        [(i, UNLIMITED, UNLIMITED) for i in range(16)]
    with pytest.raises(ValueError):
        parse_limits(rows[0].encode() + b"\nMax bogus things          1 2\n")


def test_parse_auxv():
    words = [6, 4096, 0, 0, 99, 99]
    assert parse_auxv(struct.pack("=6Q", *words)) == [6, 4096, 0, 0]
    assert parse_auxv(b"") == []
    with pytest.raises(ValueError):
        parse_auxv(b"\0" * 8)


def test_parse_fdinfo_other_kinds():
    info = parse_fdinfo(b"pos:\t0\nflags:\t02004002\nmnt_id:\t15\nino:\t7\n"
                        b"lock:\t1: FLOCK  ADVISORY  WRITE 12 00:05:7 0 EOF\n"
                        b"lock:\t2: POSIX  ADVISORY  READ 12 00:05:7 0 EOF\n"
                        b"fanotify flags:10 event-flags:0\n"
                        b"fanotify ino:1 sdev:2 mflags:0 mask:3 ignored_mask:0\n"
                        b"Pid:\t77\nNSpid:\t77\t1\n")
    assert (info.pos, info.flags, info.mnt_id, info.ino) == (0, 0o2004002, 15, 7)
    assert len(info.extra["lock"]) == 2 and len(info.extra["fanotify"]) == 2
    assert fdinfo_fields(info.extra["fanotify"][1])["mask"] == "3"
    assert info.extra["Pid"] == "77" and info.extra["NSpid"] == "77\t1"
    old = parse_fdinfo(b"pos:\t5\nflags:\t0100000\nmnt_id:\t3\n")   # before Linux 5.0
    assert old.ino is None and old.extra == {}
    with pytest.raises(ValueError):
        parse_fdinfo(b"flags:\t0\n")


@pytest.mark.parametrize("target,expected", [
    ("pipe:[123]", ("pipe", 123)), ("socket:[5]", ("socket", 5)),
    ("net:[4026531840]", ("net", 4026531840)), ("anon_inode:[eventfd]", ("anon_inode", "[eventfd]")),
    ("anon_inode:inotify", ("anon_inode", "inotify")), ("anon_inode:bpf-map", ("anon_inode", "bpf-map")),
    ("/a b/c (deleted)", ("path", "/a b/c (deleted)")), ("/memfd:x (deleted)", ("path", "/memfd:x (deleted)")),
    ("weird", ("unknown", "weird")),
])
def test_parse_fd_link(target, expected):
    assert parse_fd_link(target) == expected


def test_parse_ns_link_and_status():
    assert parse_ns_link("pid_for_children:[4026531836]") == ("pid_for_children", 4026531836)
    with pytest.raises(ValueError):
        parse_ns_link("/proc/1/ns/net")
    status = parse_status(b"Name:\tx y\nGroups:\t\nUid:\t1\t2\t3\t4\nSigQ:\t0/3\n")
    assert status == {"Name": "x y", "Groups": "", "Uid": "1\t2\t3\t4", "SigQ": "0/3"}
    with pytest.raises(ValueError, match="Gid"):
        parse_creds(status)


def test_parse_timers_empty_and_bad():
    assert parse_timers(b"") == []
    with pytest.raises(ValueError):
        parse_timers(b"signal: 14/0000000000000000\n")


# --- the /proc boundary --------------------------------------------------------------------

GONE = 999_999_999  # above PID_MAX_LIMIT (2**22)


@pytest.mark.parametrize("call", [
    lambda p: p.stat(GONE), lambda p: p.status(GONE), lambda p: p.creds(GONE),
    lambda p: p.maps(GONE), lambda p: p.limits(GONE), lambda p: p.auxv(GONE),
    lambda p: p.tids(GONE), lambda p: p.children(GONE), lambda p: p.fds(GONE),
    lambda p: p.fdinfo(GONE, 0), lambda p: p.mountinfo(GONE), lambda p: p.ns(GONE, "net"),
    lambda p: p.personality(GONE), lambda p: p.readlink(GONE, "exe"),
    lambda p: p.read(GONE, "stat"), lambda p: p.timers(GONE),
])
def test_missing_pid_is_task_gone(call):
    for proc in (Proc(), Proc(str(DATA))):
        with pytest.raises(TaskGone) as exc:
            call(proc)
        assert exc.value.pid == GONE and str(exc.value) == f"pid {GONE}: process gone"


def test_boundary_other_errors(tmp_path, monkeypatch):
    shutil.copytree(DATA / str(FIX), tmp_path / str(FIX), symlinks=True)
    proc = Proc(str(tmp_path))
    with pytest.raises(OperationFailed) as exc:       # closed fd of a live task: not gone
        proc.fdinfo(FIX, 99)
    assert not isinstance(exc.value, TaskGone) and exc.value.errno == errno.ENOENT
    with pytest.raises(TaskGone) as exc:              # a thread that exited
        proc.stat(FIX, tid=THREAD + 1000)
    assert exc.value.pid == THREAD + 1000
    (tmp_path / str(FIX) / "limits").write_bytes(b"Limit\nMax bogus 1 2\n")
    with pytest.raises(OperationFailed, match=f"pid {FIX}: cannot parse"):
        proc.limits(FIX)

    def denied(self, pid, name, tid=None):
        raise PermissionError(errno.EACCES, "Permission denied", self._path(pid, name, tid))
    monkeypatch.setattr(Proc, "_read", denied)
    with pytest.raises(OperationFailed) as exc:
        proc.maps(FIX)
    assert str(exc.value) == f"pid {FIX}: access denied reading {tmp_path}/{FIX}/maps"
    assert exc.value.pid == FIX and not isinstance(exc.value, TaskGone)


# --- live processes ------------------------------------------------------------------------

def test_live_self():
    proc, pid = Proc(), os.getpid()
    ready, stop = threading.Event(), threading.Event()
    tid = []
    th = threading.Thread(target=lambda: (tid.append(threading.get_native_id()), ready.set(),
                                          stop.wait()))
    th.start()
    ready.wait()
    try:
        assert proc.tids(pid)[0] == pid and tid[0] in proc.tids(pid)
        assert proc.stat(pid, tid=tid[0]).pid == tid[0]
    finally:
        stop.set()
        th.join()
    st = proc.stat(pid)
    assert (st.pid, st.ppid, st.pgrp, st.session) == \
        (pid, os.getppid(), os.getpgrp(), os.getsid(0))
    cr = proc.creds(pid)
    assert cr.uids == (os.getuid(), os.geteuid()) + os.getresuid()[2:] + (os.geteuid(),)
    assert cr.groups == tuple(sorted(os.getgroups())) or set(cr.groups) == set(os.getgroups())
    old = os.umask(0o077)
    os.umask(old)
    assert cr.umask == old
    for lim in proc.limits(pid):
        soft, hard = resource.getrlimit(lim.resource)
        assert (lim.soft, lim.hard) == (soft % 2**64, hard % 2**64)
    pairs = proc.auxv(pid)
    assert dict(zip(pairs[::2], pairs[1::2]))[6] == os.sysconf("SC_PAGE_SIZE")
    exe = os.path.realpath(sys.executable)
    assert any(m.path == exe for m in proc.maps(pid))
    with open(__file__, "rb") as f:
        assert f.fileno() in proc.fds(pid)
        assert proc.fdinfo(pid, f.fileno()).ino == os.fstat(f.fileno()).st_ino
        assert parse_fd_link(proc.readlink(pid, f"fd/{f.fileno()}")) == \
            ("path", os.path.realpath(__file__))
    assert proc.ns(pid, "net") == os.stat("/proc/self/ns/net").st_ino
    assert any(m.mount_point == "/" for m in proc.mountinfo(pid))
    assert proc.personality(pid) == 0


def test_live_zombie_and_reaped():
    proc = Proc()
    child = subprocess.Popen(["true"])
    for _ in range(1000):
        if proc.stat(child.pid).state == "Z":
            break
        os.sched_yield()
    try:
        assert is_zombie(proc.stat(child.pid))
        for call in (proc.maps, proc.auxv, proc.mountinfo):
            with pytest.raises(TaskGone, match="zombie"):
                call(child.pid)
        assert os.getpid() == proc.stat(child.pid).ppid
        assert child.pid in proc.children(os.getpid())
    finally:
        child.wait()
    with pytest.raises(TaskGone, match="process gone"):
        proc.stat(child.pid)


def test_kernel_thread_live():
    proc = Proc()
    if not os.path.exists("/proc/2") or not proc.stat(2).flags & PF_KTHREAD:
        pytest.skip("no kthreadd in this pid namespace")
    assert proc.auxv(2) == [] and proc.maps(2) == []


def _every_parser(proc: Proc, pid: int) -> None:
    proc.stat(pid)
    proc.creds(pid)
    proc.limits(pid)
    proc.maps(pid)
    proc.smaps_vmflags(pid)
    proc.auxv(pid)
    proc.personality(pid)
    proc.timers(pid)
    proc.mountinfo(pid)
    proc.children(pid)
    for kind in os.listdir(f"/proc/{pid}/ns"):
        proc.ns(pid, kind)
    for tid in proc.tids(pid):
        proc.stat(pid, tid=tid)
        proc.creds(pid, tid=tid)
    for fd in proc.fds(pid):
        try:
            parse_fd_link(proc.readlink(pid, f"fd/{fd}"))
            proc.fdinfo(pid, fd)
        except TaskGone:
            raise
        except OperationFailed as e:     # the fd was closed meanwhile
            if e.fields.get("errno") != errno.ENOENT:
                raise


def test_every_parser_on_every_live_pid():
    """Processes that exit meanwhile give TaskGone; processes we may not ptrace-read (here
    the sandbox's own pid 1, which holds capabilities we lack) give "access denied"."""
    proc = Proc()
    seen, gone, denied = 0, 0, []
    for pid in proc.pids():
        try:
            _every_parser(proc, pid)
            seen += 1
        except TaskGone:
            gone += 1
        except OperationFailed as e:
            if "access denied" not in str(e) or e.pid != pid:
                raise
            denied.append(pid)
    assert seen > 1 and seen > len(denied), (seen, gone, denied)


# --- the generated syscall table -----------------------------------------------------------

def test_syscall_table():
    assert SYSCALLS["clone3"] == 435 and SYSCALLS["rseq"] == 334
    assert SYSCALLS["pidfd_open"] == 434 and SYSCALLS["pidfd_getfd"] == 438
    assert SYSCALLS["close_range"] == 436 and SYSCALLS["memfd_create"] == 319
    assert SYSCALLS["read"] == 0 and NAMES[59] == "execve"
    assert NAMES == {v: k for k, v in SYSCALLS.items()} and len(NAMES) == len(SYSCALLS)


def test_syscall_table_is_up_to_date(tmp_path):
    header = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"
    if not os.path.exists(header):
        pytest.skip(f"{header} absent (linux-libc-dev)")
    out = tmp_path / "gen.py"
    subprocess.run([sys.executable, str(ROOT / "tools" / "gen_syscalls.py"),
                    "--header", header, "--output", str(out)], check=True)
    committed = ROOT / "lxc_cr" / "kernel" / "_syscalls_x86_64.py"
    assert out.read_text() == committed.read_text(), "run tools/gen_syscalls.py"
