"""inotify instances: their watches, by path, with the same watch descriptors.

``/proc/PID/fdinfo/N`` of an inotify fd has one line per watch (fs/notify/fdinfo.c
inotify_fdinfo; parsed by ``procfs.parse_inotify_watch``)::

    inotify wd:%x ino:%lx sdev:%x mask:%x ignored_mask:%x fhandle-bytes:%x fhandle-type:%x f_handle:%s

Dump: each watch is turned into a path with ``open_by_handle_at(mount fd, handle, O_PATH)``
(root has CAP_DAC_READ_SEARCH), the mount fd being a mount of ``sdev`` opened through
``/proc/PID/root`` + its mount point from the task's mountinfo; ``readlink
/proc/self/fd/N`` gives the path in the task's mount namespace, made relative to the
task's root.  The path is accepted only if ``lstat`` through ``/proc/PID/root`` finds the
same device and inode again.  Refused before freezing, naming the wd: a watch on a
filesystem that cannot encode or decode file handles (procfs), on a filesystem not mounted
in the task's mount namespace (the watch lives as long as the superblock, mounted
elsewhere), a file not reachable from the task's root.  (A watched file's last unlink
removes its watches, and an unmount of the last mount its superblock's, so neither is
left to dump.)

Restore, in the task: ``inotify_init1(IN_NONBLOCK|IN_CLOEXEC)``; then, in ascending wd
order, ``ioctl(INOTIFY_IOC_SETNEXTWD, wd)`` (CONFIG_CHECKPOINT_RESTORE) and
``inotify_add_watch(path, mask | IN_DONT_FOLLOW)``, so the kernel's cyclic idr hands out
the recorded wd.  Without that ioctl the counter is stepped instead: add the watch, and
while the wd is below the recorded one remove it and add it again; the IN_IGNORED events
those removals queue are read away.  O_NONBLOCK is then set as recorded.

Not preserved: events queued and not yet read at the checkpoint (their byte count,
FIONREAD, is recorded in the ``inotify`` record for ``inspect``), events that happen while
the tree is checkpointed, and the idr cursor beyond the highest live wd.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import termios

import construct as cs

from lxc_cr.errors import KernelError, RestoreFailed, Unsupported
from lxc_cr.image.kinds import record_kind
from lxc_cr.kernel.procfs import parse_inotify_watch, parse_mountinfo
from lxc_cr.kernel.sys import syscall
from lxc_cr.resources.records_common import Str

KINDS = ("inotify",)
O_NONBLOCK, O_CLOEXEC, O_PATH, O_DIRECTORY = 0o4000, 0o2000000, 0o10000000, 0o200000
IN_DONT_FOLLOW, IN_EXCL_UNLINK, IN_ONESHOT, IN_ALL_EVENTS = 0x02000000, 0x04000000, 0x80000000, 0xFFF
IN_IGNORED = 0x8000
INOTIFY_IOC_SETNEXTWD = 0x40044900          # _IOW('I', 0, __s32)
F_SETFL = 4
ENOTTY, EINVAL, EAGAIN = 25, 22, 11
MAX_PATH = 2000                              # the scratch page holds it at +2048

INOTIFY = record_kind(0x0360, "inotify", cs.Struct(
    "file_id" / cs.Int32ul,
    "flags" / cs.Int32ul,          # IN_NONBLOCK (= O_NONBLOCK), IN_CLOEXEC of the first fd
    "queued" / cs.Int32ul,         # bytes of events unread at the checkpoint (dropped)
), doc="an inotify instance: flags, and the unread event bytes it lost")

INOTIFY_WATCH = record_kind(0x0361, "inotify_watch", cs.Struct(
    "file_id" / cs.Int32ul,
    "wd" / cs.Int32sl,
    "mask" / cs.Int32ul,           # IN_* events, IN_ONESHOT, IN_EXCL_UNLINK
    "dev_major" / cs.Int32ul, "dev_minor" / cs.Int32ul,
    "ino" / cs.Int64ul,            # of the watched inode at the checkpoint
    "path" / Str,                  # from the task's root
), doc="one watch of an inotify instance: wd, mask and the watched path")


class _Unresolved(Exception):
    """A watch that has no path the restore could use (the reason is the message)."""


def _open_by_handle(mount_fd: int, w, pid: int) -> int:
    fh = ctypes.create_string_buffer(struct.pack("<Ii", len(w.handle), w.handle_type) + w.handle)
    return syscall("open_by_handle_at", mount_fd, fh, O_PATH | O_CLOEXEC, pid=pid)


def _under(path: str, root: str) -> str | None:
    if root == "/":
        return path
    if path == root:
        return "/"
    return path[len(root):] if path.startswith(root + "/") else None


def resolve(host_pid: int, w) -> str:
    """The path of watch ``w`` (a procfs.InotifyWatch) from the task's root."""
    major, minor = w.dev
    if w.handle_type < 0 or not w.handle:
        raise _Unresolved(f"no file handle for dev {major}:{minor} inode {w.ino}")
    with open(f"/proc/{host_pid}/mountinfo", "rb") as f:
        mounts = [m for m in parse_mountinfo(f.read()) if (m.major, m.minor) == w.dev]
    if not mounts:
        raise _Unresolved(f"on dev {major}:{minor}, not mounted in the task")
    root = os.readlink(f"/proc/{host_pid}/root")
    why = "not reachable from the task's root"
    for m in sorted(mounts, key=lambda m: m.root != "/"):
        try:
            mfd = os.open(f"/proc/{host_pid}/root{m.mount_point}",
                          os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fd = _open_by_handle(mfd, w, host_pid)
        except KernelError as e:
            why = f"open_by_handle_at: {os.strerror(e.errno)}"
            continue
        finally:
            os.close(mfd)
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        if path.endswith(" (deleted)"):
            raise _Unresolved(f"watched file {path[:-10]} deleted")
        rel = _under(path, root)
        if rel is None:
            continue
        try:
            st = os.lstat(f"/proc/{host_pid}/root{rel}")
        except OSError:
            continue
        if (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) == (major, minor, w.ino):
            if len(rel.encode()) > MAX_PATH:
                raise _Unresolved(f"path longer than {MAX_PATH} bytes")
            return rel
    raise _Unresolved(f"dev {major}:{minor} inode {w.ino}: {why}")


def _watches(d) -> list:
    return [parse_inotify_watch(line) for line in d.info.extra.get("inotify", [])]


def check(ctx, task, d) -> list[Unsupported]:
    out = []
    for w in _watches(d):
        try:
            resolve(task.host_pid, w)
        except _Unresolved as e:
            out.append(Unsupported(task.host_pid, task.stat.comm, f"inotify watch {w.wd} ({e})",
                                   fd=d.fd))
    return out


def _queued(host_pid: int, fd: int) -> int:
    from lxc_cr.resources.files import getfd
    mine = getfd(host_pid, fd)
    try:
        buf = bytearray(4)
        fcntl.ioctl(mine, termios.FIONREAD, buf)
        return struct.unpack("<i", buf)[0]
    finally:
        os.close(mine)


def dump(ctx, task, d, file_id) -> None:
    from lxc_cr.resources import files
    if not files.once(ctx, "inotify", file_id):
        return
    ctx.writer.add(INOTIFY, dict(file_id=file_id, flags=d.flags & (O_NONBLOCK | O_CLOEXEC),
                                 queued=_queued(task.host_pid, d.fd)))
    for w in _watches(d):
        try:
            path = resolve(task.host_pid, w)
        except _Unresolved as e:             # changed between the check and the freeze
            raise Unsupported(task.host_pid, task.stat.comm, f"inotify watch {w.wd} ({e})",
                              fd=d.fd) from None
        ctx.writer.add(INOTIFY_WATCH, dict(file_id=file_id, wd=w.wd, mask=w.mask,
                                           dev_major=w.dev[0], dev_minor=w.dev[1], ino=w.ino,
                                           path=path))


def _records(ctx, file_id: int):
    by_file = ctx.__dict__.get("_inotify_watches")
    if by_file is None:
        by_file = ctx._inotify_watches = {}
        for r in ctx.records["inotify_watch"]:
            by_file.setdefault(r.file_id, []).append(r)
    if not any(r.file_id == file_id for r in ctx.records["inotify"]):
        raise RestoreFailed(f"{ctx.path}: no inotify record for file {file_id}")
    return sorted(by_file.get(file_id, []), key=lambda r: r.wd)


def _add(task, rec, w, remote, fd: int, buf: int, mask: int) -> int:
    try:
        return remote.call("inotify_add_watch", fd, buf, mask)
    except KernelError as e:
        raise RestoreFailed(f"pid {task.pid} fd {rec.fd}: inotify watch {w.wd} on {w.path}: "
                            f"{os.strerror(e.errno)}", pid=task.pid, fd=rec.fd) from None


def restore(ctx, task, rec, remote) -> int:
    watches = _records(ctx, rec.file_id)
    buf, events = ctx.scratch + 2048, ctx.scratch + 1024
    fd = remote.call("inotify_init1", O_NONBLOCK | O_CLOEXEC)
    stepped, done = False, set()
    for w in watches:
        mask = w.mask & (IN_ALL_EVENTS | IN_ONESHOT | IN_EXCL_UNLINK) | IN_DONT_FOLLOW
        remote.write(buf, w.path.encode() + b"\0")
        try:
            remote.call("ioctl", fd, INOTIFY_IOC_SETNEXTWD, w.wd)
        except KernelError as e:
            if e.errno not in (ENOTTY, EINVAL):
                raise
        got = _add(task, rec, w, remote, fd, buf, mask)
        while got < w.wd and got not in done:          # step the idr cursor up to w.wd
            remote.call("inotify_rm_watch", fd, got)
            stepped = True
            got = _add(task, rec, w, remote, fd, buf, mask)
        if got != w.wd:
            raise RestoreFailed(f"pid {task.pid} fd {rec.fd}: inotify watch on {w.path} got "
                                f"wd {got}, recorded {w.wd}", pid=task.pid)
        done.add(got)
    while stepped:                                      # read away the IN_IGNORED events
        try:
            remote.call("read", fd, events, 1024)
        except KernelError as e:
            if e.errno != EAGAIN:
                raise
            break
    if not rec.flags & O_NONBLOCK:
        remote.call("fcntl", fd, F_SETFL, 0)
    return fd
