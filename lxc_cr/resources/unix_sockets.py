"""Unix sockets: listening stream/seqpacket sockets, bound (or unbound) datagram sockets
such as syslogd's /dev/log with their queued datagrams, anonymous pairs (socketpair),
connections made by connect() to a listener of the tree and accept()ed in the tree
(or still waiting in its accept queue), datagram sockets connect()ed to a bound socket
of the tree (a syslog client), and connections to a listener outside the tree whose path
is on the tree's own filesystem.

Each socket is inspected on a copy taken with pidfd_getfd, without stopping anything:
SO_TYPE, getsockname()/getpeername() (``struct sockaddr_un``: a path, or ``\\0name`` for an
abstract name; getpeername is ENOTCONN when unconnected), SO_ACCEPTCONN, SO_PASSCRED,
SIOCINQ (bytes queued) and SIOCOUTQ (bytes sent, not yet read by the peer).  sock_diag
(``struct unix_diag_msg`` with UNIX_DIAG_NAME, UNIX_DIAG_VFS {ino, dev}, UNIX_DIAG_PEER,
UNIX_DIAG_ICONS: the clients of the embryos in a listener's accept queue,
UNIX_DIAG_SHUTDOWN; a plain netlink dump, ``kernel/netlink.py``),
read in the tree's net namespace and in ours, pairs the ends.  Queued data is read without
being consumed: MSG_PEEK from offset 0 with SO_PEEK_OFF walking the queue (one datagram at
a time for dgram/seqpacket, with its sender's address).

Restore.  An unconnected socket without queued data is made in its task (socket, a stale
socket file at the path removed, bind, listen).  Everything else is made in the restorer by
one helper process that enters the init's net and mount namespaces (so names resolve and
bind as in the tree, and sock_diag of the tree sees the sockets), then passed into the init
(files.inherit), from which every task inherits it:

- a pair: socketpair, each queue refilled by sending from the other end;
- an accepted connection: a listener bound at the recorded path (the tree's own listener
  if it is made here too, else a temporary one, closed and its socket file removed again
  unless a stale one stood there), connect() from the client end (bound first if it had a
  name), accept(); getsockname() of the accepted end and getpeername() of the client are
  then the listener's path.  Queues refilled from the other end;
- a connection waiting in an accept queue: its listener is made here, the client connects
  and is left unaccepted;
- a bound datagram receiver with queued datagrams, or with senders in the tree: made here,
  its datagrams resent from a temporary unbound socket (the receiver then sees an unnamed
  sender and, with SO_PASSCRED, the restorer's credentials); each sender connect()s to it
  (also a sender whose receiver is gone when a socket of the tree is bound at its path now,
  as after a syslogd restart);
- a connection to a listener (or bound datagram socket) outside the tree: connect()ed again
  to the recorded path; only without data in flight (the old connection's other end sees
  EOF and the outside server a new connection);
- a stream/seqpacket end whose peer has closed (UNIX_DIAG_SHUTDOWN both ways, the peer gone
  from sock_diag): connected the same way to a fresh peer, its queue refilled, the peer
  closed, so it reads its data and then EOF.

The shutdown() state of the sockets it makes (UNIX_DIAG_SHUTDOWN) is applied last.

Refused by name: a peer outside the tree that is not a listening socket reachable at its
path on the tree's root, unread data on such a connection, data sent into an accept queue,
queued data on a connected datagram sender, an unbound unconnected socket with queued data,
named datagram sockets connected to each other, a shut-down connection to a peer outside the
tree, and a stream accepted on a listener of the tree whose accepted end is held outside.
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
from lxc_cr.resources.records_common import Blob, Str

KINDS = ("unix socket",)
SIOCINQ, SIOCOUTQ = 0x541B, 0x5411
O_NONBLOCK, SOCK_CLOEXEC, SOCK_NONBLOCK = 0o4000, 0o2000000, 0o4000
SOL_SOCKET, SO_PASSCRED, SO_ACCEPTCONN, SO_PEEK_OFF, SO_SNDBUFFORCE = 1, 16, 30, 42, 32
MSG_PEEK, MSG_DONTWAIT = 2, 0x40
DEFAULT_BACKLOG = 128
AT_FDCWD = -100
TCP_LISTEN = 10                    # udiag_state of a listening socket
# sock_diag of unix sockets (linux/unix_diag.h)
SS_ALL = (1 << 12) - 1
UDIAG_SHOW_NAME, UDIAG_SHOW_VFS, UDIAG_SHOW_PEER, UDIAG_SHOW_ICONS = 0x1, 0x2, 0x4, 0x8
UNIX_DIAG_NAME, UNIX_DIAG_VFS, UNIX_DIAG_PEER, UNIX_DIAG_ICONS = 0, 1, 2, 3
UNIX_DIAG_SHUTDOWN = 6
SHUTDOWN_MASK = 3                  # sk_shutdown: RCV_SHUTDOWN 1 | SEND_SHUTDOWN 2
TYPE_NAMES = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "dgram",
              socket.SOCK_SEQPACKET: "seqpacket"}
HELPER_TIMEOUT = 30.0              # a refill that cannot fit fails instead of hanging

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

UnixRole = cs.Enum(cs.Int8ul, accepted=1, client=2, pending=3, sender=4, outside=5, closed=6)

UNIX_CONN = record_kind(0x0342, "unix_conn", cs.Struct(
    "file_id" / cs.Int32ul,
    "ino" / cs.Int64ul,
    "peer_ino" / cs.Int64ul,      # accepted/client: the other end; pending: the listener;
                                  # sender: the bound receiver; outside, closed: the peer
                                  # (not kept)
    "type" / cs.Int32ul,
    "role" / UnixRole,
    "passcred" / cs.Flag,
    "name" / Str,                 # getsockname(): the listener's path for an accepted end
    "peer_name" / Str,            # getpeername()
    "queue" / cs.PrefixedArray(cs.VarInt, Blob),
), doc="a connected unix socket that is not an anonymous pair: an accepted end or its "
       "client, a client waiting in a listener's accept queue, a datagram sender connected "
       "to a bound socket of the tree, a client of a listener outside the tree "
       "(reconnected to peer_name), or a stream/seqpacket end whose peer has closed "
       "(remade connected, then its peer closed); queue as in unix_pair")

UNIX_SHUTDOWN = record_kind(0x0344, "unix_shutdown", cs.Struct(
    "file_id" / cs.Int32ul,
    "shutdown" / cs.Int8ul,       # sk_shutdown: RCV_SHUTDOWN 1 | SEND_SHUTDOWN 2
), doc="shutdown() state of a connected unix socket (UNIX_DIAG_SHUTDOWN), applied with "
       "shutdown(how = bits - 1) once its queues are refilled")

UNIX_DGRAM_QUEUE = record_kind(0x0343, "unix_dgram_queue", cs.Struct(
    "file_id" / cs.Int32ul,
    "ino" / cs.Int64ul,
    "datagrams" / cs.PrefixedArray(cs.VarInt, cs.Struct(
        "sender" / Str,           # the sender's address at the dump ("" unnamed); not restored
        "data" / Blob,
    )),
), doc="datagrams queued on an unconnected bound unix datagram socket, in order; resent "
       "at restore from a temporary unnamed socket")


# --- inspecting a live socket ---------------------------------------------------------------

def _name(raw) -> str:
    """A socket address as text: "@name" for an abstract one, the path otherwise (as
    getsockname gives it, a str, or as sock_diag does, NUL-padded bytes)."""
    if isinstance(raw, bytes):
        return "@" + raw[1:].decode(errors="replace") if raw[:1] == b"\0" else \
            raw.rstrip(b"\0").decode(errors="replace")
    return raw or ""


def _ioctl_int(s: socket.socket, req: int) -> int:
    try:
        return struct.unpack("i", fcntl.ioctl(s.fileno(), req, b"\0" * 4))[0]
    except OSError:
        return 0


def _inspect(host_pid: int, fd: int) -> dict:
    from lxc_cr.resources import files
    s = socket.socket(fileno=files.getfd(host_pid, fd))
    try:
        try:
            peer_name, connected = _name(s.getpeername()), True
        except OSError:
            peer_name, connected = "", False
        return dict(type=s.type & 0xF, connected=connected, name=_name(s.getsockname()),
                    peer_name=peer_name, listening=bool(s.getsockopt(SOL_SOCKET, SO_ACCEPTCONN)),
                    queued=_ioctl_int(s, SIOCINQ), outq=_ioctl_int(s, SIOCOUTQ),
                    passcred=bool(s.getsockopt(SOL_SOCKET, SO_PASSCRED)))
    finally:
        s.close()


def _diag_all() -> dict[int, dict]:
    """{inode: {type, state, name, vfs (ino, major, minor), peer, icons, shutdown}} of every
    unix socket of the calling thread's net namespace (sock_diag)."""
    from lxc_cr.kernel import netlink
    req = struct.pack("=BBHIII8x", socket.AF_UNIX, 0, 0, SS_ALL, 0,
                      UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS)
    return dict(_diag_entry(msg, netlink.attrs(msg, 32))
                for msg in netlink.dump(netlink.NETLINK_SOCK_DIAG, netlink.SOCK_DIAG_BY_FAMILY,
                                        req, "unix sock_diag"))


def _diag_entry(msg: bytes, a: dict[int, bytes]) -> tuple[int, dict]:
    """(inode, entry) of one reply: ``struct unix_diag_msg`` after the netlink header, then
    its attributes ``a``."""
    _fam, typ, state, _pad, ino = struct.unpack_from("=BBBBI", msg, 16)
    vfs = a.get(UNIX_DIAG_VFS)
    if vfs is not None:
        vino, vdev = struct.unpack_from("=II", vfs)
        vfs = (vino, vdev >> 20, vdev & 0xFFFFF)       # the kernel's own dev_t
    icons = a.get(UNIX_DIAG_ICONS, b"")
    return ino, dict(
        type=typ, state=state, vfs=vfs,
        name=_name(a.get(UNIX_DIAG_NAME, b"")),
        peer=_u(a.get(UNIX_DIAG_PEER), "=I"),
        icons=[i for (i,) in struct.iter_unpack("=I", icons[:len(icons) // 4 * 4])],
        shutdown=_u(a.get(UNIX_DIAG_SHUTDOWN), "=B"))


def _u(raw: bytes | None, fmt: str) -> int:
    return struct.unpack_from(fmt, raw)[0] if raw and len(raw) >= struct.calcsize(fmt) else 0


def _diag(ctx, host_pid: int) -> dict[int, dict]:
    """sock_diag of the task's net namespace merged with ours (a peer outside the tree, or
    a socket the restorer made, may live in either); socket inodes are unique."""
    cache = ctx.__dict__.setdefault("_unix_diag", {})
    try:
        netns = os.stat(f"/proc/{host_pid}/ns/net").st_ino
    except OSError:
        netns = 0
    mine = os.stat("/proc/self/ns/net").st_ino
    if mine not in cache:
        cache[mine] = _diag_all()
    if netns not in cache:
        from lxc_cr.resources.namespaces import run_in
        cache[netns] = run_in(host_pid, ("net",), _diag_all)
    if ("merged", netns) not in cache:
        cache[("merged", netns)] = {**cache[mine], **cache[netns]}
    return cache[("merged", netns)]


def _peers(ctx, host_pid: int) -> dict[int, int]:
    return {ino: m["peer"] for ino, m in _diag(ctx, host_pid).items() if m["peer"]}


def _tree_socket_inodes(ctx) -> set[int]:
    descs = getattr(ctx, "descs", None) or {}
    return {d.ino for ds in descs.values() for d in ds if d.kind == "unix socket"}


def _bound_at(host_pid: int, info: dict, diag: dict) -> int:
    """The inode of the socket of the right kind (a listener for stream/seqpacket) bound at
    the peer name, a path on the task's root: found by its socket file's inode, or by name;
    0 if there is none."""
    path = info["peer_name"]
    if not path or path.startswith("@"):
        return 0
    try:
        st = os.stat(f"/proc/{host_pid}/root/{path.lstrip('/')}" if path.startswith("/")
                     else f"/proc/{host_pid}/cwd/{path}")
    except OSError:
        return 0
    if not stat.S_ISSOCK(st.st_mode):
        return 0
    vfs = (st.st_ino, os.major(st.st_dev), os.minor(st.st_dev))
    for ino, m in diag.items():
        if m["type"] != info["type"] or m["peer"]:
            continue
        if info["type"] != socket.SOCK_DGRAM and m["state"] != TCP_LISTEN:
            continue
        if (m["vfs"] and (m["vfs"] == vfs or m["vfs"][0] == st.st_ino)) or m["name"] == path:
            return ino
    return 0


def _classify(ctx, task, fd: int, ino: int, info: dict):
    """(role, peer inode) of a socket, or an Unsupported problem.  Roles: "plain" (an
    unconnected socket), "queue" (bound datagram socket with queued datagrams), "pair",
    and the UnixRole names."""
    comm = task.stat.comm
    t = TYPE_NAMES.get(info["type"], f"type {info['type']}")

    def refuse(what: str) -> Unsupported:
        return Unsupported(task.host_pid, comm, f"unix {t} socket {what}", fd=fd)

    if not info["connected"]:
        if not info["queued"] or info["listening"]:
            return "plain", 0
        if info["type"] == socket.SOCK_DGRAM and info["name"]:
            return "queue", 0
        return refuse(f"with {info['queued']} bytes of queued data and no name to resend "
                      f"them to")
    diag = _diag(ctx, task.host_pid)
    peer = (diag.get(ino) or {}).get("peer")
    shut = (diag.get(ino) or {}).get("shutdown", 0)
    pn = info["peer_name"] or "an unnamed socket"
    inodes = _tree_socket_inodes(ctx)
    stream = info["type"] != socket.SOCK_DGRAM
    if peer and peer in inodes:
        mutual = (diag.get(peer) or {}).get("peer") == ino
        if mutual:
            if not info["name"] and not info["peer_name"]:
                return "pair", peer
            if info["type"] == socket.SOCK_DGRAM:
                return refuse(f"{info['name'] or 'unnamed'} connected to {pn} both ways")
            accepted = bool(info["name"]) and (not info["peer_name"] or ino < peer)
            return ("accepted" if accepted else "client"), peer
        if info["type"] == socket.SOCK_DGRAM:
            if info["queued"]:
                return refuse(f"connected to {pn} with {info['queued']} bytes queued on it")
            return "sender", peer
        return refuse(f"connected to {pn}, which is closed")
    if info["type"] != socket.SOCK_DGRAM:
        for lino in inodes:     # UNIX_DIAG_ICONS: the clients of the embryos in the queue
            if ino in (diag.get(lino) or {}).get("icons", ()):
                if info["queued"] or info["outq"]:
                    return refuse(f"waiting in the accept queue of {pn} with "
                                  f"{info['outq']} bytes sent")
                return "pending", lino
    if stream and shut == SHUTDOWN_MASK and (peer or 0) not in diag:
        return "closed", peer or 0          # the peer closed: it is gone from sock_diag
    bound = _bound_at(task.host_pid, info, diag)
    if bound and bound in inodes and not stream and (peer or 0) not in diag:
        if info["queued"]:          # its receiver is gone, a new one of the tree took the path
            return refuse(f"connected to {pn} with {info['queued']} bytes queued on it")
        return "sender", bound
    if bound and bound in inodes and stream:
        return refuse(f"connected to {pn} of the tree, its accepted end held outside the tree")
    if bound:
        if shut:
            return refuse(f"connected to {pn} outside the tree, shut down ({shut:#x})")
        unread = info["queued"] + (info["outq"] if info["type"] != socket.SOCK_DGRAM else 0)
        if unread:
            return refuse(f"connected to {pn} outside the tree with unread data "
                          f"({info['queued']} bytes in, {info['outq']} bytes out)")
        return "outside", peer or 0
    what = "a listening socket" if info["type"] != socket.SOCK_DGRAM else "a bound socket"
    on = f", accepted on {info['name']}" if info["name"] else ""
    return refuse(f"connected to a peer outside the tree ({pn}, socket inode {peer or '?'}"
                  f"{on}; not {what} reachable at that path on the tree's root)")


def check(ctx, task, d) -> list:
    try:
        info = _inspect(task.host_pid, d.fd)
        got = _classify(ctx, task, d.fd, d.ino, info)
    except Exception:
        return [Unsupported(task.host_pid, task.stat.comm, "unix socket", fd=d.fd)]
    return [got] if isinstance(got, Unsupported) else []


class FdsInFlight(Exception):
    """Queued data carries file descriptors (SCM_RIGHTS), which a refill cannot resend."""


def _peek_queue(host_pid: int, fd: int, typ: int, senders: bool = False) -> list:
    """Everything queued on the socket, without consuming it (SO_PEEK_OFF + MSG_PEEK; only
    on a frozen tree: a peek offset would shift the task's own MSG_PEEKs); with
    ``senders``, (sender name, datagram) items.  FdsInFlight if a message carries fds (the
    peek hands us copies, closed at once)."""
    from lxc_cr.resources import files
    s = socket.socket(fileno=files.getfd(host_pid, fd))
    try:
        s.setsockopt(SOL_SOCKET, SO_PEEK_OFF, 0)
        out = []
        try:
            while True:
                try:
                    data, anc, _flags, addr = s.recvmsg(
                        1 << 20, socket.CMSG_SPACE(253 * 4),
                        MSG_PEEK | MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
                except BlockingIOError:
                    break
                passed = [fd for level, kind, raw in anc
                          if level == SOL_SOCKET and kind == socket.SCM_RIGHTS
                          for (fd,) in struct.iter_unpack("i", raw[:len(raw) // 4 * 4])]
                for f in passed:
                    os.close(f)
                if passed:
                    raise FdsInFlight(len(passed))
                if not data:
                    break
                out.append((_name(addr), data) if senders else data)
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
    got = _classify(ctx, task, d.fd, d.ino, info)   # the state may have changed since
    if isinstance(got, Unsupported):
        raise got
    role, peer = got
    try:
        _dump_records(ctx, task, d, file_id, info, role, peer)
    except FdsInFlight as e:
        raise Unsupported(task.host_pid, task.stat.comm, f"unix socket with {e.args[0]} file "
                          f"descriptors in flight (SCM_RIGHTS) in its queue", fd=d.fd) from None


def _dump_records(ctx, task, d, file_id, info: dict, role: str, peer: int) -> None:
    typ = info["type"]
    shut = (_diag(ctx, task.host_pid).get(d.ino) or {}).get("shutdown", 0)
    if shut and role not in ("plain", "closed"):
        ctx.writer.add(UNIX_SHUTDOWN, dict(file_id=file_id, shutdown=shut))
    if role == "pair":
        ctx.writer.add(UNIX_PAIR, dict(file_id=file_id, peer_file_id=0, ino=d.ino,
                                       peer_ino=peer, type=typ,
                                       queue=_peek_queue(task.host_pid, d.fd, typ)))
        return
    if role in ("plain", "queue"):
        ctx.writer.add(UNIX_SOCKET, dict(file_id=file_id, type=typ,
                                          listening=info["listening"],
                                          passcred=info["passcred"], name=info["name"]))
        if role == "queue":
            items = _peek_queue(task.host_pid, d.fd, typ, senders=True)
            ctx.writer.add(UNIX_DGRAM_QUEUE, dict(
                file_id=file_id, ino=d.ino,
                datagrams=[dict(sender=a, data=b) for a, b in items]))
        return
    queue = _peek_queue(task.host_pid, d.fd, typ) \
        if role in ("accepted", "client", "closed") else []
    ctx.writer.add(UNIX_CONN, dict(file_id=file_id, ino=d.ino, peer_ino=peer, type=typ,
                                   role=role, passcred=info["passcred"], name=info["name"],
                                   peer_name=info["peer_name"], queue=queue))


# --- restore: sockets made in the tree's namespaces by a helper ------------------------------

def _plan(ctx) -> tuple[list, dict, dict]:
    """The steps for the helper, {file_id: shutdown bits} and {file_id: flags} of the
    sockets it makes."""
    ino_fid = {}
    for r in ctx.records["fd"]:
        if r.kind == "unix socket" and r.target.startswith("socket:["):
            ino_fid[int(r.target[8:-1])] = r.file_id
    flags = {r.file_id: r.flags for r in ctx.records["fd"] if r.kind == "unix socket"}
    sockets = {r.file_id: r for r in ctx.records.get("unix_socket", [])}
    queues = {r.file_id: r for r in ctx.records.get("unix_dgram_queue", [])}
    conns = list(ctx.records.get("unix_conn", []))
    by_ino = {c.ino: c for c in conns}

    def sock_of(ino: int, what: str):
        u = sockets.get(ino_fid.get(ino))
        if u is None:
            raise RestoreFailed(f"{ctx.path}: unix socket {what}: socket inode {ino} is "
                                f"not in the image")
        return u

    steps = []
    ends = {r.ino: r for r in ctx.records.get("unix_pair", [])}
    done = set()
    for ino, a in ends.items():
        if ino in done:
            continue
        b = ends.get(a.peer_ino)
        if b is None:
            raise RestoreFailed(f"{ctx.path}: unix socket {ino}: its peer {a.peer_ino} "
                                f"is not in the image")
        done.update((ino, b.ino))
        steps.append(("pair", a.type, (a.file_id, list(map(bytes, a.queue))),
                      (b.file_id, list(map(bytes, b.queue)))))
    # bound sockets made here: receivers with a queue or senders, listeners with pending
    here = set(queues)
    for c in conns:
        if c.role in ("pending", "sender"):
            here.add(sock_of(c.peer_ino, f"{c.role} {c.ino}").file_id)
    for fid in sorted(here):
        u = sockets[fid]
        q = queues.get(fid)
        steps.append(("bound", fid, u.type, u.name, u.listening, u.passcred,
                      [bytes(x.data) for x in q.datagrams] if q else []))
    def listener_here(name: str, typ: int):
        return next((f for f in here if sockets[f].listening and sockets[f].name == name
                     and sockets[f].type == typ), None)

    for c in conns:
        if c.role == "accepted":
            cl = by_ino.get(c.peer_ino)
            if cl is None:
                raise RestoreFailed(f"{ctx.path}: unix socket {c.ino} (accepted from "
                                    f"{c.name}): its client {c.peer_ino} is not in the image")
            steps.append(("conn", c.type, listener_here(c.name, c.type),
                          (c.file_id, c.name, c.passcred, list(map(bytes, c.queue))),
                          (cl.file_id, cl.name, cl.passcred, list(map(bytes, cl.queue)))))
        elif c.role == "closed":
            steps.append(("closed", c.file_id, c.type, c.name, c.passcred, c.peer_name,
                          listener_here(c.peer_name or c.name, c.type),
                          list(map(bytes, c.queue))))
    for role in ("pending", "sender", "outside"):
        for c in conns:
            if c.role == role:
                target = sock_of(c.peer_ino, role).file_id if role != "outside" else None
                steps.append((role, c.file_id, c.type, c.name, c.passcred, c.peer_name,
                              target))
    made = {fid for s in steps for fid in _step_ids(s)}
    # relative names resolve from the cwd of the first process holding the socket
    cwd = {r.pid: r.cwd for r in ctx.records.get("task", [])}
    holder = {}
    for r in ctx.records["fd"]:
        holder.setdefault(r.file_id, r.pid)
    steps = [(cwd.get(holder.get(_step_ids(s)[0]), "") or "/", s) for s in steps]
    shut = {r.file_id: r.shutdown for r in ctx.records.get("unix_shutdown", [])
            if r.file_id in made}
    return steps, shut, {fid: flags.get(fid, 0) for fid in made}


def _step_ids(step) -> list[int]:
    kind = step[0]
    if kind == "pair":
        return [step[2][0], step[3][0]]
    if kind == "conn":
        return [step[3][0], step[4][0]]
    return [step[1]]


def _addr(name: str):
    return b"\0" + name[1:].encode() if name.startswith("@") else name


def _unlink_stale_here(name: str) -> bool:
    """In the helper (the tree's root): remove a socket file left at a path; True if one
    stood there.  Anything that is not a socket is left alone (bind then fails)."""
    if not name or name.startswith("@"):
        return False
    try:
        if stat.S_ISSOCK(os.lstat(name).st_mode):
            os.unlink(name)
            return True
    except FileNotFoundError:
        pass
    return False


def _new(typ: int, name: str = "", passcred: bool = False) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, typ)
    s.settimeout(HELPER_TIMEOUT)
    if passcred:
        s.setsockopt(SOL_SOCKET, SO_PASSCRED, 1)
    if name:
        _unlink_stale_here(name)
        s.bind(_addr(name))
    return s


def _refill(typ: int, sender: socket.socket, items: list[bytes]) -> None:
    """Queue ``items`` on the peer of ``sender``.  The original sender may have had a larger
    SO_SNDBUF (unix queues are charged to the sender), so it is raised for the refill
    (SO_SNDBUFFORCE, CAP_NET_ADMIN) and put back after: lowering it drops nothing."""
    # each queued skb is charged its truesize: the bytes plus up to a few pages of overhead
    need = min(sum(len(i) for i in items) * 2 + len(items) * 16384 + 65536, 1 << 30)
    orig = sender.getsockopt(SOL_SOCKET, socket.SO_SNDBUF)      # the kernel's doubled value
    if need > orig:
        sender.setsockopt(SOL_SOCKET, SO_SNDBUFFORCE, need)
    try:
        for item in items:
            sender.sendall(item) if typ == socket.SOCK_STREAM else sender.send(item)
    finally:
        if need > orig:
            sender.setsockopt(SOL_SOCKET, SO_SNDBUFFORCE, orig // 2)


def _closed(typ: int, name: str, passcred: bool, peer_name: str, listener, queue):
    """A stream/seqpacket end whose peer has closed: connected as it was (to a listener at
    peer_name, or accepted on one at name, or a socketpair when both are unnamed), its
    queue refilled from the other end, which is then closed."""
    if not peer_name and not name:
        mine, other = socket.socketpair(socket.AF_UNIX, typ)
        mine.settimeout(HELPER_TIMEOUT)
        if passcred:
            mine.setsockopt(SOL_SOCKET, SO_PASSCRED, 1)
    else:
        lname = peer_name or name
        stale = False
        lst = listener
        if lst is None:
            stale = _unlink_stale_here(lname)
            lst = _new(typ, lname)
            lst.listen(1)
        if peer_name:                                   # a client of lname
            mine = _new(typ, name, passcred)
            mine.connect(_addr(lname))
            other, _ = lst.accept()
        else:                                           # accepted on lname
            other = _new(typ)
            other.connect(_addr(lname))
            mine, _ = lst.accept()
            mine.settimeout(HELPER_TIMEOUT)
            if passcred:
                mine.setsockopt(SOL_SOCKET, SO_PASSCRED, 1)
        if listener is None:
            lst.close()
            if not stale and not lname.startswith("@"):
                os.unlink(lname)
    with other:
        other.settimeout(HELPER_TIMEOUT)
        _refill(typ, other, queue)
    return mine


def _build_in_ns(steps: list, shutdowns: dict, chan_fd: int) -> str:
    """Run in the helper, inside the init's net and mount namespaces: make every socket
    of ``steps`` ((cwd, step) pairs: relative names resolve from cwd), apply
    ``shutdowns`` and send them back over ``chan_fd`` ((file_id, fd) batches).  Returns
    "" or the first failure, naming the socket."""
    made: dict[int, socket.socket] = {}
    what = ""
    try:
        for cwd, step in steps:
            try:
                os.chdir(cwd)
            except OSError:
                os.chdir("/")
            kind = step[0]
            if kind == "pair":
                what = f"{TYPE_NAMES.get(step[1])} socketpair"
                _, typ, (fa, qa), (fb, qb) = step
                sa, sb = socket.socketpair(socket.AF_UNIX, typ)
                made[fa], made[fb] = sa, sb
                sa.settimeout(HELPER_TIMEOUT)
                sb.settimeout(HELPER_TIMEOUT)
                _refill(typ, sb, qa)
                _refill(typ, sa, qb)
            elif kind == "bound":
                _, fid, typ, name, listening, passcred, datagrams = step
                what = f"{TYPE_NAMES.get(typ)} socket {name or '(unnamed)'}"
                s = made[fid] = _new(typ, name, passcred)
                if listening:
                    s.listen(DEFAULT_BACKLOG)
                if datagrams:
                    with _new(typ) as tmp:
                        for dg in datagrams:
                            tmp.sendto(dg, _addr(name))
            elif kind == "conn":
                _, typ, lid, (fa, name, pa, qa), (fc, cname, pc, qc) = step
                what = f"connection accepted from {name}"
                stale = False
                if lid is not None:
                    lst = made[lid]
                else:
                    stale = _unlink_stale_here(name)
                    lst = _new(typ, name)
                    lst.listen(1)
                c = made[fc] = _new(typ, cname, pc)
                c.connect(_addr(name))
                a, _ = lst.accept()
                made[fa] = a
                a.settimeout(HELPER_TIMEOUT)
                if pa:
                    a.setsockopt(SOL_SOCKET, SO_PASSCRED, 1)
                if lid is None:
                    lst.close()
                    if not stale and not name.startswith("@"):
                        os.unlink(name)
                _refill(typ, c, qa)
                _refill(typ, a, qc)
            elif kind == "closed":
                _, fid, typ, name, passcred, peer_name, lid, queue = step
                what = f"socket whose peer {peer_name or name or '(unnamed)'} closed"
                made[fid] = _closed(typ, name, passcred, peer_name,
                                    made[lid] if lid is not None else None, queue)
            else:                                   # pending, sender, outside
                _, fid, typ, name, passcred, peer_name, _target = step
                what = {"pending": "socket waiting in the accept queue of {}",
                        "sender": "dgram socket connected to {}",
                        "outside": "socket reconnecting to {} outside the tree"}[kind] \
                    .format(peer_name or "(unnamed)")
                s = made[fid] = _new(typ, name, passcred)
                s.connect(_addr(peer_name))          # target (if any) is made already
        for fid, bits in shutdowns.items():          # after every refill
            what = f"shutdown({bits - 1}) of file {fid}"
            made[fid].shutdown(bits - 1)
        chan = socket.socket(fileno=chan_fd)
        ids = list(made)
        for i in range(0, len(ids), 200):
            chunk = ids[i:i + 200]
            socket.send_fds(chan, [struct.pack(f"<{len(chunk)}i", *chunk)],
                            [made[f].fileno() for f in chunk])
        return ""
    except OSError as e:
        return f"{what}: {e.strerror or e}"


def prepare(ctx) -> None:
    """Every socket that is not a plain unconnected one: made by a helper in the init's
    net and mount namespaces, then inherited by every task (files.inherit)."""
    from lxc_cr.resources import files
    from lxc_cr.resources.namespaces import run_in
    steps, shutdowns, flags = _plan(ctx)
    if not steps:
        return
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    got: dict[int, int] = {}
    try:
        err = run_in(ctx.init_remote.t.pid, ("net", "mnt"), _build_in_ns, steps, shutdowns,
                     theirs.fileno())
        theirs.close()
        if err:
            raise RestoreFailed(f"unix socket: {err}")
        mine.setblocking(False)
        while len(got) < len(flags):
            try:
                data, fds, _, _ = socket.recv_fds(mine, 4096, 253)
            except BlockingIOError:
                break
            ids = struct.unpack(f"<{len(data) // 4}i", data)
            got.update(zip(ids, fds))
        if set(got) != set(flags):
            raise RestoreFailed(f"unix socket: the helper sent {len(got)} of "
                                f"{len(flags)} sockets")
        for fid, fd in list(got.items()):
            os.set_blocking(fd, not flags[fid] & O_NONBLOCK)
            files.inherit(ctx, fid, got.pop(fid))
    finally:
        mine.close()
        theirs.close()
        for fd in got.values():
            os.close(fd)


# --- restore: an unconnected socket, in its task ---------------------------------------------

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
