"""TCP and UDP sockets (IPv4 and IPv6) that carry no connection state: listening TCP
sockets, unbound or bound (not listening, not connected) TCP sockets, and UDP sockets, bound
or not, connected or not, with an empty receive queue.

Each socket is inspected on a copy taken with pidfd_getfd, without stopping anything:
getsockname()/getpeername(), SO_REUSEADDR, SO_REUSEPORT, SO_BROADCAST, IPV6_V6ONLY (v6),
SIOCINQ (bytes queued), and for TCP getsockopt(TCP_INFO): ``tcpi_state`` is the TCP state,
and for a listening socket Linux reports the backlog limit (sk_max_ack_backlog) in
``tcpi_sacked`` and the connections waiting in the accept queue in ``tcpi_unacked``.
O_NONBLOCK comes from the fd record's flags.

Restore, injected into the task (so in the task's own net namespace, restored before the
fds): socket(family, type), the options, bind() to the recorded address when it had a port,
listen(backlog) for a listener, connect() to the recorded peer for a connected UDP socket.
A socket bound to the port of a restored connection (a listener and its accepted
connections) binds and listens with SO_REUSEADDR, then gets its own setting back: the
connection may have been restored first, in repair mode.

An established TCP connection is handed to ``tcp_established`` (TCP_REPAIR) when the dump
runs with ``--tcp-established`` (``ctx.tcp_established``); without it, it is refused by name
before freezing (``tcp connection A -> B: not supported (use --tcp-established)``).
Refused by name, before freezing: any other TCP state (``tcp socket in state CLOSE_WAIT``),
a listener with connections waiting to be accepted, and a UDP socket with queued datagrams.
"""

from __future__ import annotations

import fcntl
import socket
import struct

import construct as cs

from lxc_cr.errors import RestoreFailed, Unsupported
from lxc_cr.image.kinds import record_kind
from lxc_cr.resources import tcp_established, tcp_lock
from lxc_cr.resources.records_common import Str

KINDS = ("tcp socket", "udp socket")
SIOCINQ = 0x541B
O_NONBLOCK, SOCK_CLOEXEC, SOCK_NONBLOCK = 0o4000, 0o2000000, 0o4000
SOL_SOCKET, SO_REUSEADDR, SO_BROADCAST, SO_REUSEPORT = 1, 2, 6, 15
IPPROTO_TCP, TCP_INFO, IPPROTO_IPV6, IPV6_V6ONLY = 6, 11, 41, 26
AF_INET, AF_INET6 = 2, 10

TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1",
              5: "FIN_WAIT2", 6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK",
              10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV"}
TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN = 1, 7, 10

INET_SOCKET = record_kind(0x0350, "inet_socket", cs.Struct(
    "file_id" / cs.Int32ul,
    "family" / cs.Int32ul,        # AF_INET 2, AF_INET6 10
    "type" / cs.Int32ul,          # SOCK_STREAM 1 (tcp), SOCK_DGRAM 2 (udp)
    "protocol" / cs.Int32ul,
    "listening" / cs.Flag,
    "backlog" / cs.Int32ul,       # listen() backlog of a listener (TCP_INFO tcpi_sacked)
    "reuseaddr" / cs.Flag,
    "reuseport" / cs.Flag,
    "broadcast" / cs.Flag,
    "v6only" / cs.Flag,
    "addr" / Str,                 # local address ("" and port 0: unbound)
    "port" / cs.Int32ul,
    "peer_addr" / Str,            # peer of a connected udp socket, "" otherwise
    "peer_port" / cs.Int32ul,
), doc="a tcp listener/unconnected tcp socket or a udp socket: addresses, options, backlog")


def _fmt(family: int, addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if family == AF_INET6 else f"{addr}:{port}"


def _inspect(host_pid: int, fd: int) -> dict:
    from lxc_cr.resources import files
    mine = files.getfd(host_pid, fd)
    s = socket.socket(fileno=mine)
    try:
        fam, typ = s.family, s.type & 0xF
        proto = s.getsockopt(SOL_SOCKET, 38)        # SO_PROTOCOL
        local = s.getsockname()
        try:
            peer = s.getpeername()
        except OSError:
            peer = None
        info = dict(family=int(fam), type=int(typ), protocol=proto,
                    addr=local[0], port=local[1],
                    peer_addr=peer[0] if peer else "", peer_port=peer[1] if peer else 0,
                    reuseaddr=bool(s.getsockopt(SOL_SOCKET, SO_REUSEADDR)),
                    reuseport=bool(s.getsockopt(SOL_SOCKET, SO_REUSEPORT)),
                    broadcast=bool(s.getsockopt(SOL_SOCKET, SO_BROADCAST)),
                    v6only=bool(fam == AF_INET6 and s.getsockopt(IPPROTO_IPV6, IPV6_V6ONLY)),
                    state=0, backlog=0, waiting=0, queued=0)
        if typ == socket.SOCK_STREAM:
            ti = s.getsockopt(IPPROTO_TCP, TCP_INFO, 32)
            info["state"] = ti[0]
            info["waiting"], info["backlog"] = struct.unpack_from("<II", ti, 24)
        else:
            try:
                info["queued"] = struct.unpack(
                    "i", fcntl.ioctl(s.fileno(), SIOCINQ, b"\0" * 4))[0]
            except OSError:
                info["queued"] = 0
        return info
    finally:
        s.close()


def _problem(task, fd: int, i: dict, established_ok: bool = False) -> list:
    comm = task.stat.comm
    here = _fmt(i["family"], i["addr"], i["port"])
    if i["type"] == socket.SOCK_STREAM:
        state = i["state"]
        if state == TCP_ESTABLISHED and established_ok and not tcp_lock.lock_available():
            there = _fmt(i["family"], i["peer_addr"], i["peer_port"])
            return [Unsupported(task.host_pid, comm, f"tcp connection {here} -> {there}", fd=fd,
                                reason="not supported (--tcp-established needs nft and "
                                       "nsenter for its network lock)")]
        if state == TCP_ESTABLISHED and established_ok:
            return []
        if state == TCP_ESTABLISHED:
            there = _fmt(i["family"], i["peer_addr"], i["peer_port"])
            return [Unsupported(task.host_pid, comm, f"tcp connection {here} -> {there}",
                                fd=fd, reason="not supported (use --tcp-established)")]
        if state == TCP_LISTEN and i["waiting"]:
            return [Unsupported(task.host_pid, comm,
                                f"tcp listening socket {here} with {i['waiting']} "
                                f"connection(s) waiting for accept()", fd=fd)]
        if state not in (TCP_LISTEN, TCP_CLOSE):
            name = TCP_STATES.get(state, f"state {state}")
            return [Unsupported(task.host_pid, comm, f"tcp socket {here} in state {name}",
                                fd=fd)]
        return []
    if i["queued"]:
        return [Unsupported(task.host_pid, comm,
                            f"udp socket {here} with {i['queued']} bytes of queued datagrams",
                            fd=fd)]
    return []


def check(ctx, task, d) -> list:
    try:
        info = _inspect(task.host_pid, d.fd)
    except Exception:
        return [Unsupported(task.host_pid, task.stat.comm, d.kind, fd=d.fd)]
    return _problem(task, d.fd, info, getattr(ctx, "tcp_established", False))


def dump(ctx, task, d, file_id) -> None:
    from lxc_cr.resources import files
    if not files.once(ctx, "inet_sockets", file_id):
        return
    i = _inspect(task.host_pid, d.fd)
    ok = getattr(ctx, "tcp_established", False)
    problems = _problem(task, d.fd, i, ok)      # the state may have changed since check()
    if problems:
        raise problems[0]
    if i["type"] == socket.SOCK_STREAM and i["state"] == TCP_ESTABLISHED:
        tcp_established.dump(ctx, task, d, file_id, i)
        return
    ctx.writer.add(INET_SOCKET, dict(
        file_id=file_id, family=i["family"], type=i["type"], protocol=i["protocol"],
        listening=i["state"] == TCP_LISTEN, backlog=i["backlog"],
        reuseaddr=i["reuseaddr"], reuseport=i["reuseport"], broadcast=i["broadcast"],
        v6only=i["v6only"], addr=i["addr"], port=i["port"],
        peer_addr=i["peer_addr"], peer_port=i["peer_port"]))


def sockaddr(family: int, addr: str, port: int) -> bytes:
    """``struct sockaddr_in`` / ``sockaddr_in6`` (flow info and scope id 0)."""
    if family == AF_INET6:
        return (struct.pack("<H", AF_INET6) + struct.pack(">HI", port, 0)
                + socket.inet_pton(AF_INET6, addr.split("%")[0]) + struct.pack("<I", 0))
    return (struct.pack("<H", AF_INET) + struct.pack(">H", port)
            + socket.inet_pton(AF_INET, addr) + b"\0" * 8)


def restore(ctx, task, rec, remote) -> int:
    nonblock = SOCK_NONBLOCK if rec.flags & O_NONBLOCK else 0
    conn = tcp_established.find(ctx, rec.file_id)
    if conn is not None:
        fd = remote.call("socket", conn.family, socket.SOCK_STREAM | SOCK_CLOEXEC | nonblock,
                         IPPROTO_TCP)
        tcp_established.restore(ctx, task, rec, remote, fd)
        return fd
    u = next((r for r in ctx.records["inet_socket"] if r.file_id == rec.file_id), None)
    if u is None:
        raise RestoreFailed(f"{ctx.path}: no inet_socket record for file {rec.file_id}")
    fd = remote.call("socket", u.family, u.type | SOCK_CLOEXEC | nonblock, u.protocol)
    buf = ctx.scratch + 2048
    opts = [(SOL_SOCKET, SO_REUSEADDR, u.reuseaddr), (SOL_SOCKET, SO_REUSEPORT, u.reuseport),
            (SOL_SOCKET, SO_BROADCAST, u.broadcast)]
    if u.family == AF_INET6:
        opts.append((IPPROTO_IPV6, IPV6_V6ONLY, u.v6only))
    # an accepted connection on this port may be restored already (from a lower fd), in
    # repair mode: bind() and listen() share its port only with SO_REUSEADDR set
    shared = not u.reuseaddr and u.port and tcp_established.holds_port(ctx, u.port)
    if shared:
        opts[0] = (SOL_SOCKET, SO_REUSEADDR, True)
    for level, name, on in opts:
        if on or (level, name) == (IPPROTO_IPV6, IPV6_V6ONLY):   # v6only: default is a sysctl
            remote.write(buf, struct.pack("<i", int(on)))
            remote.call("setsockopt", fd, level, name, buf, 4)
    if u.port:
        addr = sockaddr(u.family, u.addr, u.port)
        remote.write(buf, addr)
        remote.call("bind", fd, buf, len(addr))
    if u.listening:
        remote.call("listen", fd, u.backlog)
    if shared:
        remote.write(buf, struct.pack("<i", 0))
        remote.call("setsockopt", fd, SOL_SOCKET, SO_REUSEADDR, buf, 4)
    elif u.peer_port:
        addr = sockaddr(u.family, u.peer_addr, u.peer_port)
        remote.write(buf, addr)
        remote.call("connect", fd, buf, len(addr))
    return fd
