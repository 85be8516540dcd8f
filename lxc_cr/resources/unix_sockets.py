"""Unix sockets: listening stream/seqpacket sockets, bound (or unbound) datagram sockets
such as syslogd's /dev/log, and connected pairs whose both ends are in the tree
(socketpairs), with the data queued on each end.

Each socket is inspected on a copy taken with pidfd_getfd, without stopping anything:
SO_TYPE, getsockname() (``struct sockaddr_un``: a path, or ``\\0name`` for an abstract
name), getpeername() (ENOTCONN when unconnected), SO_ACCEPTCONN, SO_PASSCRED and SIOCINQ
(bytes queued).  Peers come from sock_diag (UNIX_DIAG_PEER, pyroute2's DiagSocket) in the
tree's net namespace.  Queued data is read without being consumed: MSG_PEEK from offset 0
with SO_PEEK_OFF walking the queue (one datagram at a time for dgram/seqpacket).

Restore: an unconnected socket is made in the task (socket, a stale socket file at the
path removed, bind, listen).  A connected pair is made in the restorer (socketpair), each
end's queue refilled by sending from the other end, and both are passed into the init,
from which every task inherits them (files.inherit).  A peer outside the tree, an
unconnected socket with queued datagrams, and connected sockets with names (accepted
connections of a listener) are refused by name.
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
SOL_SOCKET, SO_PASSCRED, SO_ACCEPTCONN, SO_PEEK_OFF = 1, 16, 30, 42
MSG_PEEK, MSG_DONTWAIT = 2, 0x40
DEFAULT_BACKLOG = 128
AT_FDCWD = -100

UNIX_PAIR = record_kind(0x0341, "unix_pair", cs.Struct(
    "file_id" / cs.Int32ul,       # this end
    "peer_file_id" / cs.Int32ul,  # the other end (0 until the peer is dumped)
    "ino" / cs.Int64ul,
    "peer_ino" / cs.Int64ul,
    "type" / cs.Int32ul,
    "queue" / cs.PrefixedArray(cs.VarInt, cs.Prefixed(cs.VarInt, cs.GreedyBytes)),
), doc="one end of a connected unix socket pair inside the tree, with its queued data "
       "(one item per datagram; one item for a stream)")

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


def _diag_peers() -> dict[int, int]:
    """{socket inode: peer inode} of every connected unix socket of this net namespace."""
    from pyroute2 import DiagSocket
    out = {}
    with DiagSocket() as ds:
        ds.bind()
        for m in ds.get_sock_stats(family=socket.AF_UNIX):
            peer = m.get_attr("UNIX_DIAG_PEER")
            if peer:
                out[m["udiag_ino"]] = peer
    return out


def _peers(ctx, host_pid: int) -> dict[int, int]:
    cache = ctx.__dict__.setdefault("_unix_peers", {})
    try:
        netns = os.stat(f"/proc/{host_pid}/ns/net").st_ino
    except OSError:
        netns = 0
    if netns not in cache:
        if netns == os.stat("/proc/self/ns/net").st_ino:
            cache[netns] = _diag_peers()
        else:
            from lxc_cr.resources.namespaces import run_in
            cache[netns] = run_in(host_pid, ("net",), _diag_peers)
    return cache[netns]


def _tree_socket_inodes(ctx) -> set[int]:
    descs = getattr(ctx, "descs", None) or {}
    return {d.ino for ds in descs.values() for d in ds if d.kind == "unix socket"}


def _problem(ctx, task, fd: int, ino: int, info: dict) -> list:
    comm = task.stat.comm
    if info["connected"]:
        peers = _peers(ctx, task.host_pid)
        peer = peers.get(ino)
        inodes = _tree_socket_inodes(ctx)
        if peer is not None and peers.get(peer) != ino:
            return [Unsupported(task.host_pid, comm, "unix socket connected to a bound "
                                "socket (not a pair)", fd=fd)]
        if peer is None or (inodes and peer not in inodes):
            return [Unsupported(task.host_pid, comm, "unix socket connected to a peer "
                                "outside the tree", fd=fd)]
        if info["name"]:
            return [Unsupported(task.host_pid, comm, "unix socket (accepted connection "
                                f"of {info['name']})", fd=fd)]
        return []
    if info["queued"] and not info["listening"]:
        return [Unsupported(task.host_pid, comm, "unix socket with queued data", fd=fd)]
    return []


def check(ctx, task, d) -> list:
    try:
        info = _inspect(task.host_pid, d.fd)
    except Exception:
        return [Unsupported(task.host_pid, task.stat.comm, "unix socket", fd=d.fd)]
    return _problem(ctx, task, d.fd, d.ino, info)


def _peek_queue(host_pid: int, fd: int, typ: int) -> list[bytes]:
    """Everything queued on the socket, without consuming it (SO_PEEK_OFF + MSG_PEEK)."""
    from lxc_cr.resources import files
    s = socket.socket(fileno=files.getfd(host_pid, fd))
    try:
        s.setsockopt(SOL_SOCKET, SO_PEEK_OFF, 0)
        out = []
        try:
            while True:
                try:
                    data = s.recv(1 << 20, MSG_PEEK | MSG_DONTWAIT)
                except BlockingIOError:
                    break
                if not data:
                    break
                out.append(data)
        finally:
            s.setsockopt(SOL_SOCKET, SO_PEEK_OFF, -1)
        if typ == socket.SOCK_STREAM:
            out = [b"".join(out)] if out else []
        return out
    finally:
        s.close()


def dump(ctx, task, d, file_id) -> None:
    from lxc_cr.resources import files
    if not files.once(ctx, "unix_sockets", file_id):
        return
    info = _inspect(task.host_pid, d.fd)
    problems = _problem(ctx, task, d.fd, d.ino, info)   # the state may have changed since
    if problems:
        raise problems[0]
    if info["connected"]:
        ctx.writer.add(UNIX_PAIR, dict(file_id=file_id, peer_file_id=0, ino=d.ino,
                                       peer_ino=_peers(ctx, task.host_pid)[d.ino],
                                       type=info["type"],
                                       queue=_peek_queue(task.host_pid, d.fd, info["type"])))
        return
    ctx.writer.add(UNIX_SOCKET, dict(file_id=file_id, type=info["type"],
                                      listening=info["listening"],
                                      passcred=info["passcred"], name=info["name"]))


def prepare(ctx) -> None:
    """Connected pairs: made here, queues refilled, both ends passed into the init."""
    from lxc_cr.resources import files
    ends = {r.ino: r for r in ctx.records.get("unix_pair", [])}
    flags = {r.file_id: r.flags for r in ctx.records["fd"] if r.kind == "unix socket"}
    done = set()
    for ino, a in ends.items():
        if ino in done:
            continue
        b = ends.get(a.peer_ino)
        if b is None:
            raise RestoreFailed(f"{ctx.path}: unix socket {ino}: its peer {a.peer_ino} "
                                f"is not in the image")
        done.update((ino, b.ino))
        sa, sb = socket.socketpair(socket.AF_UNIX, a.type)
        try:
            for mine, other, rec in ((sa, sb, a), (sb, sa, b)):
                for item in rec.queue:
                    other.sendall(bytes(item)) if a.type == socket.SOCK_STREAM \
                        else other.send(bytes(item))
            for sock, rec in ((sa, a), (sb, b)):
                fd = sock.detach()
                if flags.get(rec.file_id, 0) & O_NONBLOCK:
                    os.set_blocking(fd, False)
                files.inherit(ctx, rec.file_id, fd)
        except BaseException:
            sa.close()
            sb.close()
            raise


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
