"""Established TCP connections (IPv4 and IPv6) through TCP_REPAIR (``--tcp-established``).

Only with the flag; without it ``inet_sockets`` refuses the connection by name.  The fd
kind stays ``tcp socket`` (classified and dispatched by ``inet_sockets``, which hands an
ESTABLISHED socket to this module).

Network lock (``tcp_lock``): before the first snapshot, every established connection of the
frozen tree is locked, an nft table in each net namespace dropping its packets both ways, so
the two ends cannot move on between their snapshots (a delayed ACK, a Nagle-held segment)
and nothing the kernel receives meanwhile is lost.  It is lifted when the dump ends, except,
after the kill, in a namespace where only one end of a connection was dumped: there it keeps
dropping the outside peer's packets (which would otherwise meet a closed port and be reset)
until the restore lifts it, just before the restored connections leave repair mode.  A
watchdog process undoes repair mode and the lock if lxc-cr dies mid-dump.

Dump, on a copy of the socket taken with pidfd_getfd (so with lxc-cr's own CAP_NET_ADMIN,
whatever the task's credentials), while the tree is frozen:
  setsockopt(TCP_REPAIR, 1)            repair mode: sequence numbers and queues readable
  getsockopt(TCP_INFO)                 tcpi_state (must still be ESTABLISHED),
                                       tcpi_options (TCPI_OPT_TIMESTAMPS 1, SACK 2, WSCALE 4),
                                       tcpi_snd_wscale:4, tcpi_rcv_wscale:4 (byte 6)
  getsockopt(TCP_MAXSEG)               mss
  for q in TCP_RECV_QUEUE, TCP_SEND_QUEUE:
    setsockopt(TCP_REPAIR_QUEUE, q); getsockopt(TCP_QUEUE_SEQ)
                                       rcv_nxt / write_seq (the ends of the queues)
    ioctl(SIOCINQ / SIOCOUTQ)          bytes in the queue (unread / not yet acked)
    recv(MSG_PEEK)                     their contents (repair mode peeks the send queue too)
  getsockopt(TCP_TIMESTAMP)            the timestamp clock (tsval) of the connection
  getsockopt(TCP_REPAIR_WINDOW)        struct tcp_repair_window {u32 snd_wl1, snd_wnd,
                                       max_window, rcv_wnd, rcv_wup}
Repair mode is left again right after the snapshot (TCP_REPAIR_OFF_NO_WP: the lock keeps the
connection still), so a dumper that dies leaves working sockets; ``silence(ctx)`` switches it
on again for every connection just before the kill, so the closing sockets send no FIN/RST.  With
``--leave-running`` or on any failure of the dump, ``resume(ctx)`` makes sure repair is off
(and SO_REUSEADDR back: leaving repair mode resets sk_reuse) and lifts the locks before the
tasks are let go.

Restore: ``socket()`` is injected into the task (its net namespace), then the restorer works
on a pidfd_getfd copy: TCP_REPAIR 1 (which also lets bind() share the port of a listener,
SK_FORCE_REUSE), TCP_QUEUE_SEQ of both queues set to their start (end minus queued bytes),
bind(local), TCP_MAXSEG for connect() to size its segments (cleared after), connect(peer)
(straight to ESTABLISHED, no SYN), TCP_REPAIR_OPTIONS, TCP_TIMESTAMP, SO_RCVBUFFORCE /
SO_SNDBUFFORCE to the recorded sizes when a queue is larger than a fresh buffer, the receive
queue refilled by send() with TCP_REPAIR_QUEUE=TCP_RECV_QUEUE and the send queue by send()
with TCP_SEND_QUEUE (restored as sent, not yet acked: retransmitted once the connection
runs), TCP_REPAIR_WINDOW, TCP_NODELAY.  Repair mode is switched off by ``release(ctx)`` once
the whole tree is rebuilt, just before its tasks are let go, so both ends of a connection
inside the tree exist before either sends.

Not handled: urgent data, a FIN already queued (such states are not ESTABLISHED and are
refused by ``inet_sockets``), TCP-MD5/AO keys.  An image never restored leaves its lock
table (``lxc_cr_tcp_*``, dropping only those connections' packets) in place.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct

import construct as cs

from lxc_cr.errors import KernelError, OperationFailed, RestoreFailed, Unsupported
from lxc_cr.image.kinds import record_kind
from lxc_cr.resources import tcp_lock
from lxc_cr.resources.records_common import Blob, Str

IPPROTO_TCP, SOL_SOCKET, SO_REUSEADDR, SO_REUSEPORT = 6, 1, 2, 15
SO_SNDBUF, SO_RCVBUF, SO_SNDBUFFORCE, SO_RCVBUFFORCE = 7, 8, 32, 33
IPPROTO_IPV6, IPV6_V6ONLY = 41, 26
TCP_NODELAY, TCP_MAXSEG, TCP_INFO = 1, 2, 11
TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ, TCP_REPAIR_OPTIONS = 19, 20, 21, 22
TCP_TIMESTAMP, TCP_REPAIR_WINDOW = 24, 29
TCP_NO_QUEUE, TCP_RECV_QUEUE, TCP_SEND_QUEUE = 0, 1, 2
TCP_REPAIR_OFF_NO_WP, TCP_REPAIR_OFF, TCP_REPAIR_ON = -1, 0, 1
TCPOPT_MAXSEG, TCPOPT_WINDOW, TCPOPT_SACK_PERM, TCPOPT_TIMESTAMP = 2, 3, 4, 8
TCPI_OPT_TIMESTAMPS, TCPI_OPT_SACK, TCPI_OPT_WSCALE = 1, 2, 4
SIOCINQ, SIOCOUTQ = 0x541B, 0x5411
MSG_PEEK, MSG_DONTWAIT = 0x2, 0x40
AF_INET6, TCP_ESTABLISHED = 10, 1
WINDOW = struct.Struct("<5I")         # struct tcp_repair_window

TCP_CONNECTION = record_kind(0x0358, "tcp_connection", cs.Struct(
    "file_id" / cs.Int32ul,
    "family" / cs.Int32ul,        # AF_INET 2, AF_INET6 10
    "addr" / Str,                 # local address and port
    "port" / cs.Int32ul,
    "peer_addr" / Str,
    "peer_port" / cs.Int32ul,
    "reuseaddr" / cs.Flag,
    "reuseport" / cs.Flag,
    "v6only" / cs.Flag,
    "nodelay" / cs.Flag,          # TCP_NODELAY
    "sndbuf" / cs.Int32ul,        # SO_SNDBUF, SO_RCVBUF (as getsockopt reports them)
    "rcvbuf" / cs.Int32ul,
    "rcv_seq" / cs.Int32ul,       # TCP_QUEUE_SEQ of TCP_RECV_QUEUE: rcv_nxt
    "snd_seq" / cs.Int32ul,       # TCP_QUEUE_SEQ of TCP_SEND_QUEUE: write_seq
    "rcv_queue" / Blob,           # received, not read by the task (SIOCINQ bytes)
    "snd_queue" / Blob,           # written by the task, not acked by the peer (SIOCOUTQ)
    "mss" / cs.Int32ul,           # TCP_MAXSEG
    "options" / cs.Int8ul,        # tcpi_options: TCPI_OPT_TIMESTAMPS 1, SACK 2, WSCALE 4
    "snd_wscale" / cs.Int8ul,
    "rcv_wscale" / cs.Int8ul,
    "timestamp" / cs.Int32ul,     # TCP_TIMESTAMP
    "snd_wl1" / cs.Int32ul,       # TCP_REPAIR_WINDOW
    "snd_wnd" / cs.Int32ul,
    "max_window" / cs.Int32ul,
    "rcv_wnd" / cs.Int32ul,
    "rcv_wup" / cs.Int32ul,
    "net_lock" / Str,             # nft table (inet) left dropping the peer's packets, or ""
), doc="an established tcp connection (TCP_REPAIR): addresses, sequence numbers, both "
       "queues' bytes, negotiated options, window and timestamp clock")


class _Repaired:
    """A socket of the tree held by lxc-cr (our pidfd_getfd copy), in repair mode or not."""

    def __init__(self, sock: socket.socket, reuseaddr: bool, pid: int, fd: int):
        self.sock, self.reuseaddr, self.pid, self.fd = sock, reuseaddr, pid, fd
        self.on = True

    def repair_on(self) -> None:
        self.sock.setsockopt(IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON)
        self.on = True

    def repair_off(self, probe: bool = True) -> None:
        """Leave repair mode; ``probe``: send a window probe (the peer answers with its
        window), not wanted while the connection is locked."""
        self.sock.setsockopt(IPPROTO_TCP, TCP_REPAIR,
                             TCP_REPAIR_OFF if probe else TCP_REPAIR_OFF_NO_WP)
        self.on = False
        if self.reuseaddr:                      # leaving repair mode resets sk_reuse
            self.sock.setsockopt(SOL_SOCKET, SO_REUSEADDR, 1)


def _held(ctx) -> list:
    return ctx.__dict__.setdefault("tcp_repair", [])


def _op(s: socket.socket, what: str, pid: int, fn, *args):
    """Run a socket call; an OSError becomes a KernelError naming the call and the pid."""
    try:
        return fn(*args)
    except OSError as e:
        raise KernelError(what, e.errno or 0, pid=pid, args=args[:2]) from None


def _ioctl_int(s: socket.socket, req: int) -> int:
    return struct.unpack("i", fcntl.ioctl(s.fileno(), req, b"\0" * 4))[0]


def _peek(s: socket.socket, size: int, pid: int, what: str) -> bytes:
    if not size:
        return b""
    data = _op(s, f"recv({what}, MSG_PEEK)", pid, s.recv, size, MSG_PEEK | MSG_DONTWAIT)
    if len(data) != size:
        raise KernelError(f"recv({what}, MSG_PEEK)", 5, pid=pid,
                          detail=f"{len(data)} of {size} queued bytes")
    return data


def dump(ctx, task, d, file_id: int, info: dict) -> None:
    """Put the connection in repair mode (until kill or ``resume``) and record it."""
    from lxc_cr.resources import files
    pid = task.host_pid
    lock = tcp_lock.cover(ctx, pid, d.ino, info["addr"], info["port"], info["peer_addr"],
                          info["peer_port"])
    tcp_lock.watchdog(ctx).tell(f"sock {pid} {d.fd} {int(info['reuseaddr'])}")
    s = socket.socket(fileno=files.getfd(pid, d.fd))
    nodelay = bool(s.getsockopt(IPPROTO_TCP, TCP_NODELAY))
    try:
        s.setsockopt(IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON)
    except OSError as e:
        s.close()
        raise KernelError("setsockopt(TCP_REPAIR)", e.errno or 0, pid=pid,
                          detail=f"fd {d.fd}") from None
    held = _Repaired(s, info["reuseaddr"], pid, d.fd)
    _held(ctx).append(held)
    ti = s.getsockopt(IPPROTO_TCP, TCP_INFO, 104)
    if ti[0] != TCP_ESTABLISHED:       # it changed between the check and the freeze
        from lxc_cr.resources.inet_sockets import TCP_STATES
        raise Unsupported(pid, task.stat.comm, f"tcp socket in state "
                          f"{TCP_STATES.get(ti[0], ti[0])}", fd=d.fd)
    queues = {}
    for q, ioc, name in ((TCP_RECV_QUEUE, SIOCINQ, "receive queue"),
                         (TCP_SEND_QUEUE, SIOCOUTQ, "send queue")):
        _op(s, "setsockopt(TCP_REPAIR_QUEUE)", pid, s.setsockopt, IPPROTO_TCP,
            TCP_REPAIR_QUEUE, q)
        seq = _op(s, "getsockopt(TCP_QUEUE_SEQ)", pid, s.getsockopt, IPPROTO_TCP,
                  TCP_QUEUE_SEQ) & 0xFFFFFFFF
        queues[q] = (seq, _peek(s, _ioctl_int(s, ioc), pid, name))
    _op(s, "setsockopt(TCP_REPAIR_QUEUE)", pid, s.setsockopt, IPPROTO_TCP, TCP_REPAIR_QUEUE,
        TCP_NO_QUEUE)
    win = WINDOW.unpack(_op(s, "getsockopt(TCP_REPAIR_WINDOW)", pid, s.getsockopt,
                            IPPROTO_TCP, TCP_REPAIR_WINDOW, WINDOW.size))
    ctx.writer.add(TCP_CONNECTION, dict(
        file_id=file_id, family=info["family"], addr=info["addr"], port=info["port"],
        peer_addr=info["peer_addr"], peer_port=info["peer_port"],
        reuseaddr=info["reuseaddr"], reuseport=info["reuseport"], v6only=info["v6only"],
        nodelay=nodelay, sndbuf=s.getsockopt(SOL_SOCKET, SO_SNDBUF),
        rcvbuf=s.getsockopt(SOL_SOCKET, SO_RCVBUF),
        rcv_seq=queues[TCP_RECV_QUEUE][0], snd_seq=queues[TCP_SEND_QUEUE][0],
        rcv_queue=queues[TCP_RECV_QUEUE][1], snd_queue=queues[TCP_SEND_QUEUE][1],
        mss=s.getsockopt(IPPROTO_TCP, TCP_MAXSEG), options=ti[5],
        snd_wscale=ti[6] & 0xF, rcv_wscale=ti[6] >> 4,
        timestamp=s.getsockopt(IPPROTO_TCP, TCP_TIMESTAMP) & 0xFFFFFFFF,
        snd_wl1=win[0], snd_wnd=win[1], max_window=win[2], rcv_wnd=win[3], rcv_wup=win[4],
        net_lock=lock.table))
    # out of repair mode until the kill (``silence``): a dumper that dies meanwhile leaves
    # the task a working socket (the lock keeps the connection still, the watchdog lifts it)
    held.repair_off(probe=False)


def silence(ctx) -> None:
    """Just before the kill: every dumped connection back in repair mode, so the closing
    sockets send nothing (no FIN, no RST).  A failure here fails the dump (not killed)."""
    for r in _held(ctx):
        try:
            r.repair_on()
        except OSError as e:
            raise KernelError("setsockopt(TCP_REPAIR)", e.errno or 0, pid=r.pid,
                              detail=f"fd {r.fd}") from None


def resume(ctx) -> None:
    """The dump will not kill the tree (``--leave-running`` or a failure): switch repair
    off on every connection still in repair mode, lift the locks, so each works as before.
    Runs on the failure paths too, so it never raises: a socket that cannot leave repair
    mode (which needs nothing but the CAP_NET_ADMIN that put it there) is left as it is."""
    for r in _held(ctx):
        try:
            if r.on:
                r.repair_off()
        except OSError:
            pass
    _close(ctx, killed=False)


def forget(ctx) -> None:
    """After the kill: close our copies (the sockets go silently, still in repair mode), and
    lift the network lock, except in a namespace where a connection's peer lives on (it
    keeps dropping the peer's packets until the restore lifts it: no reset meanwhile)."""
    _close(ctx, killed=True)


def _close(ctx, killed: bool) -> None:
    for r in _held(ctx):
        r.sock.close()
    ctx.tcp_repair = []
    tcp_lock.unlock(ctx, killed)


# --- restore --------------------------------------------------------------------------------

def find(ctx, file_id: int):
    return next((r for r in ctx.records["tcp_connection"] if r.file_id == file_id), None)


def _send_all(s: socket.socket, data: bytes, pid: int, what: str) -> None:
    view = memoryview(data)
    while view:
        try:
            n = s.send(view, MSG_DONTWAIT)
        except OSError as e:
            raise KernelError(f"send({what})", e.errno or 0, pid=pid,
                              detail=f"{len(view)} of {len(data)} bytes left") from None
        if n <= 0:
            raise RestoreFailed(f"pid {pid}: refilling the {what} of a tcp connection "
                                f"stopped with {len(view)} bytes left")
        view = view[n:]


def _addr(u, peer: bool):
    host, port = (u.peer_addr, u.peer_port) if peer else (u.addr, u.port)
    return (host, port, 0, 0) if u.family == AF_INET6 else (host, port)


def restore(ctx, task, rec, remote, fd: int) -> None:
    """Rebuild connection ``rec.file_id`` on the fresh socket ``fd`` of the task (created
    there, in its net namespace); it stays in repair mode until ``release``."""
    from lxc_cr.resources import files
    u = find(ctx, rec.file_id)
    pid = task.host_pid
    s = socket.socket(fileno=files.getfd(pid, fd))
    held = _Repaired(s, u.reuseaddr, pid, rec.fd)
    _held(ctx).append(held)
    tcp = IPPROTO_TCP
    _op(s, "setsockopt(TCP_REPAIR)", pid, s.setsockopt, tcp, TCP_REPAIR, TCP_REPAIR_ON)
    if u.family == AF_INET6:
        s.setsockopt(IPPROTO_IPV6, IPV6_V6ONLY, int(u.v6only))
    if u.reuseport:
        s.setsockopt(SOL_SOCKET, SO_REUSEPORT, 1)
    for q, seq, data in ((TCP_RECV_QUEUE, u.rcv_seq, u.rcv_queue),
                         (TCP_SEND_QUEUE, u.snd_seq, u.snd_queue)):
        s.setsockopt(tcp, TCP_REPAIR_QUEUE, q)
        _op(s, "setsockopt(TCP_QUEUE_SEQ)", pid, s.setsockopt, tcp, TCP_QUEUE_SEQ,
            struct.pack("<I", (seq - len(data)) & 0xFFFFFFFF))
    s.setsockopt(tcp, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)
    _op(s, "bind", pid, s.bind, _addr(u, False))
    # connect() computes the segment size (mss_cache) from mss_clamp, which only a user mss
    # sets before the connection exists; without it the connection would run with the
    # 536-byte default.  The user mss (at most MAX_TCP_WINDOW, 32767: loopback's 65495 is
    # cut there until TCP_REPAIR_OPTIONS) is cleared again right after.
    _op(s, "setsockopt(TCP_MAXSEG)", pid, s.setsockopt, tcp, TCP_MAXSEG, min(u.mss, 32767))
    _op(s, "connect", pid, s.connect, _addr(u, True))
    s.setsockopt(tcp, TCP_MAXSEG, 0)
    opts = [(TCPOPT_MAXSEG, u.mss)]
    if u.options & TCPI_OPT_WSCALE:
        opts.append((TCPOPT_WINDOW, u.snd_wscale | u.rcv_wscale << 16))
    if u.options & TCPI_OPT_SACK:
        opts.append((TCPOPT_SACK_PERM, 0))
    if u.options & TCPI_OPT_TIMESTAMPS:
        opts.append((TCPOPT_TIMESTAMP, 0))
    _op(s, "setsockopt(TCP_REPAIR_OPTIONS)", pid, s.setsockopt, tcp, TCP_REPAIR_OPTIONS,
        b"".join(struct.pack("<II", c, v) for c, v in opts))
    _op(s, "setsockopt(TCP_TIMESTAMP)", pid, s.setsockopt, tcp, TCP_TIMESTAMP,
        struct.pack("<I", u.timestamp))
    for q, data, what, opt, force, size in (
            (TCP_RECV_QUEUE, u.rcv_queue, "receive queue", SO_RCVBUF, SO_RCVBUFFORCE, u.rcvbuf),
            (TCP_SEND_QUEUE, u.snd_queue, "send queue", SO_SNDBUF, SO_SNDBUFFORCE, u.sndbuf)):
        if len(data) > s.getsockopt(SOL_SOCKET, opt) // 2:
            # the queue was larger than a fresh socket's buffer (grown by autotuning):
            # the recorded size, fixed (the kernel doubles what is set)
            _op(s, "setsockopt(SO_*BUFFORCE)", pid, s.setsockopt, SOL_SOCKET, force,
                max(size, 2 * len(data)) // 2)
        if data:
            s.setsockopt(tcp, TCP_REPAIR_QUEUE, q)
            _send_all(s, bytes(data), pid, what)
    s.setsockopt(tcp, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)
    _op(s, "setsockopt(TCP_REPAIR_WINDOW)", pid, s.setsockopt, tcp, TCP_REPAIR_WINDOW,
        WINDOW.pack(u.snd_wl1, u.snd_wnd, u.max_window, u.rcv_wnd, u.rcv_wup))
    if u.nodelay:
        s.setsockopt(tcp, TCP_NODELAY, 1)


def holds_port(ctx, port: int) -> bool:
    """A restored connection is bound to local ``port`` (a listener restored on the same
    port must then bind and listen with SO_REUSEADDR: see inet_sockets.restore)."""
    return any(c.port == port for c in ctx.records["tcp_connection"])


def _unlock_restored(ctx) -> None:
    """Lift the network locks a dump left for peers outside the tree, in the net namespace
    of the restored connections (where the tree lives again; a lock in a namespace that
    died with the old tree is simply not there)."""
    tables = {r.net_lock for r in ctx.records["tcp_connection"] if r.net_lock}
    done = set()
    for r in _held(ctx):
        ino = os.stat(f"/proc/{r.pid}/ns/net").st_ino
        if ino in done:
            continue
        done.add(ino)
        lock = tcp_lock.NetLock(r.pid, "")
        try:
            for table in tables:
                try:
                    lock.nft(f"delete table inet {table}\n")
                except OperationFailed:
                    pass                 # not in this namespace
        finally:
            lock.close(keep=True)


def release(ctx) -> None:
    """Every task of the tree is rebuilt: let the restored connections talk again."""
    try:
        _unlock_restored(ctx)
        for r in _held(ctx):
            try:
                r.repair_off()
            except OSError as e:
                raise KernelError("setsockopt(TCP_REPAIR, 0)", e.errno or 0, pid=r.pid,
                                  detail=f"fd {r.fd}") from None
    finally:
        forget(ctx)
