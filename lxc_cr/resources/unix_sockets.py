"""Unix sockets that are not connected: listening stream/seqpacket sockets and bound (or
unbound) datagram sockets with empty receive queues, such as syslogd's /dev/log.

Each socket is inspected on a copy taken with pidfd_getfd, without stopping anything:
SO_TYPE, getsockname() (``struct sockaddr_un``: a path, or ``\\0name`` for an abstract
name), getpeername() (ENOTCONN when unconnected), SO_ACCEPTCONN, SO_PASSCRED and SIOCINQ
(bytes queued).  Restore: socket(AF_UNIX, type) in the task, a stale socket file at the
path removed, bind(), listen().  Connected sockets (socketpairs, accepted connections) and
queued datagrams are refused by name until their queues can be carried.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import struct

import construct as cs

from lxc_cr.errors import RestoreFailed, Unsupported
from lxc_cr.image.kinds import record_kind
from lxc_cr.resources.records_common import Str

KINDS = ("unix socket",)
SIOCINQ = 0x541B
O_NONBLOCK, SOCK_CLOEXEC, SOCK_NONBLOCK = 0o4000, 0o2000000, 0o4000
SOL_SOCKET, SO_PASSCRED, SO_ACCEPTCONN = 1, 16, 30
DEFAULT_BACKLOG = 128
AT_FDCWD = -100

UNIX_SOCKET = record_kind(0x0340, "unix_socket", cs.Struct(
    "file_id" / cs.Int32ul,
    "type" / cs.Int32ul,          # SOCK_STREAM 1, SOCK_DGRAM 2, SOCK_SEQPACKET 5
    "listening" / cs.Flag,
    "passcred" / cs.Flag,
    "name" / Str,                 # bound path, "@name" for an abstract name, "" unbound
), doc="an unconnected unix socket: type, bound name, listening")


def _inspect(host_pid: int, fd: int) -> dict:
    from lxc_cr.resources import files
    mine = files.getfd(host_pid, fd)
    s = socket.socket(fileno=mine)
    try:
        try:
            s.getpeername()
            connected = True
        except OSError:
            connected = False
        name = s.getsockname()
        if isinstance(name, bytes):
            name = "@" + name[1:].decode(errors="replace") if name[:1] == b"\0" else name.decode()
        listening = bool(s.getsockopt(SOL_SOCKET, SO_ACCEPTCONN))
        try:
            queued = struct.unpack("i", fcntl.ioctl(s.fileno(), SIOCINQ, b"\0" * 4))[0]
        except OSError:
            queued = 0
        return dict(type=s.type & 0xF, connected=connected, name=name or "",
                    listening=listening, queued=queued,
                    passcred=bool(s.getsockopt(SOL_SOCKET, SO_PASSCRED)))
    finally:
        s.close()


def _problem(task, fd: int, info: dict) -> list:
    comm = task.stat.comm
    if info["connected"]:
        return [Unsupported(task.host_pid, comm, "unix socket (connected)", fd=fd)]
    if info["queued"] and not info["listening"]:
        return [Unsupported(task.host_pid, comm, "unix socket with queued data", fd=fd)]
    return []


def check(ctx, task, d) -> list:
    try:
        info = _inspect(task.host_pid, d.fd)
    except Exception:
        return [Unsupported(task.host_pid, task.stat.comm, "unix socket", fd=d.fd)]
    return _problem(task, d.fd, info)


def dump(ctx, task, d, file_id) -> None:
    from lxc_cr.resources import files
    if not files.once(ctx, "unix_sockets", file_id):
        return
    info = _inspect(task.host_pid, d.fd)
    problems = _problem(task, d.fd, info)       # the state may have changed since check()
    if problems:
        raise problems[0]
    ctx.writer.add(UNIX_SOCKET, dict(file_id=file_id, type=info["type"],
                                      listening=info["listening"],
                                      passcred=info["passcred"], name=info["name"]))


def _sockaddr(name: str) -> bytes:
    if name.startswith("@"):
        raw = b"\0" + name[1:].encode()
    else:
        raw = name.encode() + b"\0"
    return struct.pack("<H", socket.AF_UNIX) + raw


def restore(ctx, task, rec, remote) -> int:
    u = next((r for r in ctx.records["unix_socket"] if r.file_id == rec.file_id), None)
    if u is None:
        raise RestoreFailed(f"{ctx.path}: no unix_socket record for file {rec.file_id}")
    nonblock = SOCK_NONBLOCK if rec.flags & O_NONBLOCK else 0
    fd = remote.call("socket", socket.AF_UNIX, u.type | SOCK_CLOEXEC | nonblock, 0)
    buf = ctx.scratch + 2048
    if u.passcred:
        remote.write(buf, struct.pack("<i", 1))
        remote.call("setsockopt", fd, SOL_SOCKET, SO_PASSCRED, buf, 4)
    if u.name:
        if not u.name.startswith("@"):
            _drop_stale(task.host_pid, u.name)
        addr = _sockaddr(u.name)
        remote.write(buf, addr)
        remote.call("bind", fd, buf, len(addr))
    if u.listening:
        remote.call("listen", fd, DEFAULT_BACKLOG)
    return fd


def _drop_stale(host_pid: int, path: str) -> None:
    """A socket file left at the path by the checkpointed process (bind would say
    EADDRINUSE); anything that is not a socket is left alone."""
    full = f"/proc/{host_pid}/root{path}"
    try:
        if stat.S_ISSOCK(os.lstat(full).st_mode):
            os.unlink(full)
    except FileNotFoundError:
        pass
