"""eventfd, timerfd and signalfd: recreated in the task by injected syscalls.

``/proc/PID/fdinfo/N`` lines (fs/eventfd.c, fs/timerfd.c, fs/signalfd.c show_fdinfo)::

    eventfd-count: %16llx   eventfd-id: %d   eventfd-semaphore: %d
    clockid: %d  ticks: %llu  settime flags: 0%o  it_value: (%llu, %llu)  it_interval: (%llu, %llu)
    sigmask:\t%016llx

Restore: ``eventfd2(0, flags)`` then ``write(count)`` (the count may exceed the u32
initval); ``timerfd_create`` + ``timerfd_settime`` with the remaining time (relative) and
the interval, expirations not yet read put back with ``ioctl(TFD_IOC_SET_TICKS)``;
``signalfd4(-1, &mask, 8, flags)``.  O_NONBLOCK is kept from the fd record's flags.
"""

from __future__ import annotations

import re
import struct

import construct as cs

from lxc_cr.errors import RestoreFailed
from lxc_cr.image.kinds import record_kind

KINDS = ("eventfd", "timerfd", "signalfd")
O_NONBLOCK, O_CLOEXEC = 0o4000, 0o2000000
EFD_SEMAPHORE = 1
TFD_IOC_SET_TICKS = 0x40085400

EVENTFD = record_kind(0x0330, "eventfd", cs.Struct(
    "file_id" / cs.Int32ul,
    "count" / cs.Int64ul,
    "semaphore" / cs.Flag,
), doc="an eventfd: its counter and EFD_SEMAPHORE")

TIMERFD = record_kind(0x0331, "timerfd", cs.Struct(
    "file_id" / cs.Int32ul,
    "clockid" / cs.Int32ul,
    "ticks" / cs.Int64ul,          # expirations not yet read
    "settime_flags" / cs.Int32ul,  # TFD_TIMER_ABSTIME 1, TFD_TIMER_CANCEL_ON_SET 2
    "value_sec" / cs.Int64ul, "value_nsec" / cs.Int64ul,        # time left
    "interval_sec" / cs.Int64ul, "interval_nsec" / cs.Int64ul,
), doc="a timerfd: clock, time left, interval and unread expirations")

SIGNALFD = record_kind(0x0332, "signalfd", cs.Struct(
    "file_id" / cs.Int32ul,
    "sigmask" / cs.Int64ul,
), doc="a signalfd: the signals it accepts")

_PAIR = re.compile(r"\((\d+),\s*(\d+)\)")


def _pair(s: str) -> tuple[int, int]:
    m = _PAIR.search(s)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def dump(ctx, task, d, file_id) -> None:
    from lxc_cr.resources import files
    if not files.once(ctx, "eventfds", file_id):
        return
    x = d.info.extra
    if d.kind == "eventfd":
        ctx.writer.add(EVENTFD, dict(file_id=file_id, count=int(x.get("eventfd-count", "0"), 16),
                                     semaphore=x.get("eventfd-semaphore", "0") == "1"))
    elif d.kind == "timerfd":
        vs, vn = _pair(x.get("it_value", ""))
        is_, in_ = _pair(x.get("it_interval", ""))
        ctx.writer.add(TIMERFD, dict(file_id=file_id, clockid=int(x.get("clockid", "0")),
                                     ticks=int(x.get("ticks", "0")),
                                     settime_flags=int(x.get("settime flags", "0"), 8),
                                     value_sec=vs, value_nsec=vn, interval_sec=is_,
                                     interval_nsec=in_))
    else:
        ctx.writer.add(SIGNALFD, dict(file_id=file_id, sigmask=int(x.get("sigmask", "0"), 16)))


def _rec(ctx, kind: str, file_id: int):
    table = ctx.__dict__.setdefault(f"_{kind}_by_file", None)
    if table is None:
        table = {r.file_id: r for r in ctx.records[kind]}
        setattr(ctx, f"_{kind}_by_file", table)
    if file_id not in table:
        raise RestoreFailed(f"{ctx.path}: no {kind} record for file {file_id}")
    return table[file_id]


def restore(ctx, task, rec, remote) -> int:
    nonblock = rec.flags & O_NONBLOCK
    buf = ctx.scratch + 256
    if rec.kind == "eventfd":
        e = _rec(ctx, "eventfd", rec.file_id)
        fd = remote.call("eventfd2", 0, nonblock | O_CLOEXEC | (EFD_SEMAPHORE if e.semaphore else 0))
        if e.count:
            remote.write(buf, struct.pack("<Q", e.count))
            remote.call("write", fd, buf, 8)
        return fd
    if rec.kind == "timerfd":
        t = _rec(ctx, "timerfd", rec.file_id)
        fd = remote.call("timerfd_create", t.clockid, nonblock | O_CLOEXEC)
        value = (t.value_sec, t.value_nsec)
        if value == (0, 0) and (t.interval_sec or t.interval_nsec):
            value = (0, 1)          # armed, due now
        if value != (0, 0):
            remote.write(buf, struct.pack("<4q", t.interval_sec, t.interval_nsec, *value))
            remote.call("timerfd_settime", fd, 0, buf, 0)
        if t.ticks:
            remote.write(buf + 64, struct.pack("<Q", t.ticks))
            remote.call("ioctl", fd, TFD_IOC_SET_TICKS, buf + 64)
        return fd
    s = _rec(ctx, "signalfd", rec.file_id)
    remote.write(buf, struct.pack("<Q", s.sigmask))
    return remote.call("signalfd4", -1, buf, 8, nonblock | O_CLOEXEC)
