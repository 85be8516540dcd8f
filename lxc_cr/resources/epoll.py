"""epoll instances: the registered fds with their events and data.

``/proc/PID/fdinfo/N`` of an epoll fd has one line per target (fs/eventpoll.c)::

    tfd: %8d events: %8x data: %16llx  pos:%lli ino:%lx sdev:%x

``tfd`` is the fd number in the table of the process that registered it.  Before freezing,
every target is checked to still be that same open file in the holder's table
(kcmp(KCMP_EPOLL_TFD)); a target closed meanwhile (still watched through another fd or
process) is refused.  Restore, after every other fd of the task (``LATE``):
``epoll_create1`` then ``epoll_ctl(EPOLL_CTL_ADD, tfd, {events, data})`` per target.
"""

from __future__ import annotations

import ctypes
import struct

import construct as cs

from lxc_cr.errors import KernelError, RestoreFailed, Unsupported
from lxc_cr.image.kinds import record_kind
from lxc_cr.kernel.procfs import fdinfo_fields
from lxc_cr.kernel.sys import syscall
from lxc_cr.resources.records_common import PackedPrefixedArray

KINDS = ("epoll",)
LATE = True
O_CLOEXEC = 0o2000000
EPOLL_CTL_ADD = 1
KCMP_EPOLL_TFD = 7

EPOLL = record_kind(0x0333, "epoll", cs.Struct(
    "file_id" / cs.Int32ul,
    "targets" / PackedPrefixedArray(cs.VarInt, cs.Struct(
        "tfd" / cs.Int32ul,
        "events" / cs.Int32ul,     # EPOLLIN 0x1 ... EPOLLET 1<<31
        "data" / cs.Int64ul,
    )),
), doc="an epoll instance and its registered targets")


class _Slot(ctypes.Structure):
    _fields_ = [("efd", ctypes.c_uint32), ("tfd", ctypes.c_uint32), ("toff", ctypes.c_uint32)]


def _targets(d) -> list[dict]:
    out = []
    for line in d.info.extra.get("tfd", []):
        f = fdinfo_fields(line)
        out.append(dict(tfd=int(f["tfd"]), events=int(f["events"], 16), data=int(f["data"], 16)))
    return out


def check(ctx, task, d) -> list:
    out = []
    for t in _targets(d):
        slot = _Slot(d.fd, t["tfd"], 0)
        try:
            same = syscall("kcmp", task.host_pid, task.host_pid, KCMP_EPOLL_TFD, t["tfd"],
                           ctypes.addressof(slot)) == 0
        except KernelError:
            same = False
        if not same:
            out.append(Unsupported(task.host_pid, task.stat.comm,
                                   f"epoll watching fd {t['tfd']}, which is closed or "
                                   f"replaced in this process", fd=d.fd))
    return out


def dump(ctx, task, d, file_id) -> None:
    from lxc_cr.resources import files
    if files.once(ctx, "epoll", file_id):
        ctx.writer.add(EPOLL, dict(file_id=file_id, targets=_targets(d)))


def restore(ctx, task, rec, remote) -> int:
    table = ctx.__dict__.get("_epoll_by_file")
    if table is None:
        table = ctx._epoll_by_file = {r.file_id: r for r in ctx.records["epoll"]}
    e = table.get(rec.file_id)
    if e is None:
        raise RestoreFailed(f"{ctx.path}: no epoll record for file {rec.file_id}")
    fd = remote.call("epoll_create1", O_CLOEXEC)
    buf = ctx.scratch + 256
    for t in e.targets:
        remote.write(buf, struct.pack("<IQ", t.events, t.data))
        try:
            remote.call("epoll_ctl", fd, EPOLL_CTL_ADD, t.tfd, buf)
        except KernelError as err:
            raise RestoreFailed(f"pid {task.pid} fd {rec.fd}: epoll target fd {t.tfd}: "
                                f"{err}", pid=task.pid, fd=rec.fd) from None
    return fd
