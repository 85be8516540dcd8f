"""Pipes and FIFOs: both ends, their buffered data and the pipe size.

Dump, once per pipe inode (``/proc/PID/fd/N`` -> ``pipe:[INO]``, or a FIFO's path):
  * a read description of the pipe is opened through ``/proc/PID/fd/N`` (O_RDONLY|
    O_NONBLOCK; a pipe's write end can be reopened for reading that way);
  * ``F_GETPIPE_SZ`` gives the pipe size, ``FIONREAD`` the buffered byte count;
  * the buffered bytes are copied, not consumed, with ``tee(2)`` into a spare pipe made by
    the dumper with the same size, and read back from the spare.

Restore, in the restorer before the init is forked (``prepare``): ``pipe2()`` (or, for a
FIFO, ``open(path, O_RDWR|O_NONBLOCK)``), ``F_SETPIPE_SZ``, the buffered data written back,
then one open file description per recorded ``file_id`` opened through
``/proc/self/fd/N`` with the recorded flags (both ends exist, so no open blocks); those are
inherited by every restored process (files.inherit).  The spare ends are closed, so a pipe
whose reader (or writer) was gone at the checkpoint is the same after the restore.

``F_SETPIPE_SZ`` above ``/proc/sys/fs/pipe-max-size`` needs CAP_SYS_RESOURCE, which root
lacks on these machines: such a pipe fails the restore with a message naming both sizes.
"""

from __future__ import annotations

import array
import fcntl
import os
import re
import stat as st_mod

import construct as cs

from lxc_cr.errors import KernelError, OperationFailed, RestoreFailed
from lxc_cr.image.kinds import record_kind
from lxc_cr.kernel.sys import syscall
from lxc_cr.resources.records_common import Blob, Str

KINDS = ("pipe", "fifo")
F_SETPIPE_SZ, F_GETPIPE_SZ = 1031, 1032
FIONREAD = 0x541B
SPLICE_F_NONBLOCK = 2
O_ACCMODE, O_NONBLOCK, O_CLOEXEC = 3, 0o4000, 0o2000000

PIPE = record_kind(0x0310, "pipe", cs.Struct(
    "ino" / cs.Int64ul,          # pipe:[INO] (pipefs) or the FIFO's inode
    "dev" / cs.Int64ul,          # st_dev (FIFO) or 0 (pipe)
    "fifo" / cs.Flag,
    "path" / Str,                # the FIFO's path, "" for a pipe
    "size" / cs.Int32ul,         # F_GETPIPE_SZ
    "data" / Blob,               # buffered bytes, oldest first (tee'd, not consumed)
), doc="a pipe or FIFO object: size and buffered data, once per inode")


def _key(d) -> tuple[int, int]:
    return (d.dev if d.kind == "fifo" else 0, d.ino)


def dump(ctx, task, d, file_id) -> None:
    from lxc_cr.resources import files
    if not files.once(ctx, "pipe", _key(d)):
        return
    try:
        rfd = os.open(f"/proc/{task.host_pid}/fd/{d.fd}", os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise KernelError(f"open(/proc/{task.host_pid}/fd/{d.fd})", e.errno,
                          pid=task.host_pid) from None
    try:
        size = fcntl.fcntl(rfd, F_GETPIPE_SZ)
        buf = array.array("i", [0])
        fcntl.ioctl(rfd, FIONREAD, buf, True)
        data = _peek(rfd, buf[0], size, task, d) if buf[0] else b""
    finally:
        os.close(rfd)
    path = ""
    if d.kind == "fifo":
        path = d.target
    ctx.writer.add(PIPE, dict(ino=d.ino, dev=_key(d)[0], fifo=d.kind == "fifo", path=path,
                              size=size, data=data))


def _peek(rfd: int, count: int, size: int, task, d) -> bytes:
    """The ``count`` buffered bytes of the pipe, copied with tee() into a spare pipe."""
    r, w = os.pipe2(O_NONBLOCK | O_CLOEXEC)
    try:
        try:
            fcntl.fcntl(w, F_SETPIPE_SZ, max(size, count))
        except OSError:
            pass
        got = syscall("tee", rfd, w, count, SPLICE_F_NONBLOCK, pid=task.host_pid)
        if got != count:
            raise OperationFailed(f"pid {task.host_pid} ({task.stat.comm}) fd {d.fd}: tee() "
                                  f"copied {got} of the {count} bytes buffered in "
                                  f"{d.target}", pid=task.host_pid, fd=d.fd)
        out = bytearray()
        while len(out) < count:
            chunk = os.read(r, count - len(out))
            if not chunk:
                break
            out += chunk
        return bytes(out)
    finally:
        os.close(r)
        os.close(w)


_PIPE_RE = re.compile(r"pipe:\[(\d+)\]")


def _pipe_max() -> int:
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            return int(f.read())
    except OSError:
        return 0


def prepare(ctx) -> None:
    from lxc_cr.resources import files
    users: dict[tuple[int, int], dict[int, object]] = {}
    for r in ctx.records["fd"]:
        if r.kind == "pipe":
            m = _PIPE_RE.fullmatch(r.target)
            key = (0, int(m.group(1))) if m else None
        elif r.kind == "fifo":
            key = ("fifo", r.target)
        else:
            continue
        users.setdefault(key, {}).setdefault(r.file_id, r)
    for p in ctx.records["pipe"]:
        key = ("fifo", p.path) if p.fifo else (0, p.ino)
        descs = users.get(key, {})
        if not descs:
            continue
        base = _create(ctx, p)
        try:
            for file_id, r in descs.items():
                flags = r.flags & ~O_CLOEXEC | O_CLOEXEC
                try:
                    fd = os.open(f"/proc/self/fd/{base[0]}", flags)
                except OSError as e:
                    raise RestoreFailed(f"pid {r.pid} fd {r.fd}: reopening {r.target} with "
                                        f"flags {r.flags:#o}: {os.strerror(e.errno)}",
                                        pid=r.pid, fd=r.fd) from None
                files.inherit(ctx, file_id, fd)
        finally:
            for fd in base:
                os.close(fd)


def _create(ctx, p) -> list[int]:
    """The pipe (both ends, or the FIFO opened O_RDWR), sized and refilled."""
    if p.fifo:
        try:
            fd = os.open(p.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise RestoreFailed(f"FIFO {p.path}: {os.strerror(e.errno)}") from None
        if not st_mod.S_ISFIFO(os.fstat(fd).st_mode):
            os.close(fd)
            raise RestoreFailed(f"{p.path} is no longer a FIFO")
        base, w = [fd], fd
    else:
        r, w = os.pipe2(O_CLOEXEC | O_NONBLOCK)
        base = [r, w]
    try:
        if fcntl.fcntl(w, F_GETPIPE_SZ) != p.size:
            try:
                fcntl.fcntl(w, F_SETPIPE_SZ, p.size)
            except OSError as e:
                raise RestoreFailed(
                    f"{p.path or f'pipe:[{p.ino}]'}: cannot set the pipe size to {p.size} "
                    f"bytes (pipe-max-size is {_pipe_max()}, and growing beyond it needs "
                    f"CAP_SYS_RESOURCE): {os.strerror(e.errno)}") from None
        data = bytes(p.data)
        off = 0
        while off < len(data):
            off += os.write(w, data[off:])
        if p.fifo:
            # data left in a FIFO opened by nobody else would be dropped when we close it;
            # the descriptions opened next keep the pipe alive
            pass
    except BaseException:
        for fd in base:
            os.close(fd)
        raise
    return base
