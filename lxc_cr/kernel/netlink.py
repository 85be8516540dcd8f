"""Netlink dumps and requests on a plain blocking socket.

A dump is one request (``NLM_F_REQUEST | NLM_F_DUMP``) and the replies up to NLMSG_DONE.
Checks and dumps read state this way: devices, addresses, routes and rules (rtnetlink), the
unix and packet sockets of a namespace (sock_diag), and whether it has any nftables table
(nfnetlink).  A request (``NLM_F_REQUEST | NLM_F_ACK``) is one message and its ACK: a
restore creates devices, addresses, routes and rules with one each.  pyroute2's message
classes, the same its IPRoute uses, decode the rtnetlink replies (``rtnl_dump``) and encode
the requests (``rtnl_request``).

Why not IPRoute: pyroute2 0.9 runs every socket on an asyncio event loop.  Importing that
machinery costs 50-70 ms, and each socket opens a loop of its own, while a busybox
container's whole checkpoint is budgeted at 0.2 s and its restore-to-running at 0.15 s
(issue #11).  The message classes alone import in about 15 ms and do not touch asyncio.

The socket is made in the calling thread's net namespace (namespaces.run_in puts a thread
in the target's).  A dump that the kernel marks inconsistent (NLM_F_DUMP_INTR: the table
changed while it was being read) is read again.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

NETLINK_ROUTE, NETLINK_SOCK_DIAG, NETLINK_NETFILTER = 0, 4, 12
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP_INTR, NLM_F_DUMP = 0x1, 0x4, 0x10, 0x300
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400  # of a NEW request: create, and fail if it exists
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE, RTM_NEWRULE = 16, 20, 24, 32
RTM_GETLINK, RTM_GETADDR, RTM_GETROUTE, RTM_GETRULE = 18, 22, 26, 34
SOCK_DIAG_BY_FAMILY = 20
NFT_MSG_GETTABLE = (10 << 8) | 1         # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETTABLE

_HDR = struct.Struct("=IHHII")           # struct nlmsghdr: len, type, flags, seq, pid
_ATTR = struct.Struct("=HH")             # struct nlattr / rtattr: len, type
_TRIES = 5


class DumpInterrupted(OSError):
    """The kernel kept marking the dump inconsistent (NLM_F_DUMP_INTR)."""


def dump(protocol: int, msg_type: int, payload: bytes, what: str) -> list[bytes]:
    """Every reply message of one dump request, each whole (header included), in order.
    ``what`` names the dump in errors."""
    for _ in range(_TRIES):
        out, interrupted = _dump_once(protocol, msg_type, payload, what)
        if not interrupted:
            return out
    raise DumpInterrupted(errno.EINTR, f"{what}: the dump kept changing while read "
                                       f"({_TRIES} tries)")


def _dump_once(protocol: int, msg_type: int, payload: bytes, what: str):
    req = _HDR.pack(_HDR.size + len(payload), msg_type, NLM_F_REQUEST | NLM_F_DUMP,
                    1, 0) + payload
    out: list[bytes] = []
    interrupted = False
    with _socket(protocol) as nl:
        nl.send(req)
        for typ, flags, msg in _replies(nl, what):
            interrupted |= bool(flags & NLM_F_DUMP_INTR)
            if typ in (NLMSG_DONE, NLMSG_ERROR):
                _check(msg, what)
                return out, interrupted
            out.append(msg)


def request(protocol: int, msg_type: int, flags: int, payload: bytes, what: str) -> bytes:
    """Send one request (``NLM_F_REQUEST | NLM_F_ACK | flags``) and wait for its ACK.
    Returns the reply message that came before the ACK (a GET's answer, header included),
    b"" if none.  A refusal raises OSError(errno, "WHAT: strerror")."""
    req = _HDR.pack(_HDR.size + len(payload), msg_type, NLM_F_REQUEST | NLM_F_ACK | flags,
                    1, 0) + payload
    reply = b""
    with _socket(protocol) as nl:
        nl.send(req)
        for typ, _flags, msg in _replies(nl, what):
            if typ == NLMSG_ERROR:
                _check(msg, what)
                return reply
            reply = msg


def _socket(protocol: int) -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)


def _replies(nl: socket.socket, what: str):
    """(type, flags, message with its header) of each message read from ``nl``, until the
    caller stops."""
    while True:
        data = nl.recv(1 << 20)
        if not data:
            raise OSError(errno.EPROTO, f"{what}: netlink socket closed mid-reply")
        off = 0
        while off + _HDR.size <= len(data):
            length, typ, flags, _seq, _pid = _HDR.unpack_from(data, off)
            if length < _HDR.size or off + length > len(data):
                raise OSError(errno.EPROTO, f"{what}: truncated netlink message")
            yield typ, flags, data[off:off + length]
            off += (length + 3) & ~3


def _check(msg: bytes, what: str) -> None:
    """Raise the error an NLMSG_ERROR (or NLMSG_DONE) message carries, if any."""
    err = -struct.unpack_from("=i", msg, _HDR.size)[0] if len(msg) >= _HDR.size + 4 else 0
    if err:
        raise OSError(err, f"{what}: {os.strerror(err)}")


def attrs(buf: bytes, off: int = 0) -> dict[int, bytes]:
    """{type: payload} of the netlink attributes in ``buf`` from ``off`` (nested and
    byte-order flags masked off; a later duplicate wins)."""
    out = {}
    while off + _ATTR.size <= len(buf):
        alen, atype = _ATTR.unpack_from(buf, off)
        if alen < _ATTR.size:
            break
        out[atype & 0x3FFF] = buf[off + _ATTR.size:off + alen]
        off += (alen + 3) & ~3
    return out


def rtnl_dump(msg_class, msg_type: int, family: int = 0) -> list:
    """A dump through rtnetlink, each reply decoded by pyroute2's ``msg_class`` (ifinfmsg,
    ifaddrmsg, rtmsg, fibmsg: the request's header and family field is the same class)."""
    req = msg_class()
    req["family"] = family
    req.encode()
    payload = bytes(req.data[_HDR.size:])
    out = []
    for raw in dump(NETLINK_ROUTE, msg_type, payload, f"rtnetlink {msg_class.__name__} dump"):
        msg = msg_class(raw)
        msg.decode()
        out.append(msg)
    return out


def rtnl_request(msg, msg_type: int, flags: int, what: str):
    """``request`` through rtnetlink of pyroute2's message ``msg`` (its fields and attrs
    set), encoded here: a value it cannot hold raises OSError(EINVAL) naming ``what``.
    Returns the reply decoded by the same class, None if there is none."""
    try:
        msg.encode()
    except Exception as e:           # noqa: BLE001 - whatever the encoder chokes on
        raise OSError(errno.EINVAL, f"{what}: cannot encode: {e}") from None
    raw = request(NETLINK_ROUTE, msg_type, flags, bytes(msg.data[_HDR.size:]), what)
    if not raw:
        return None
    reply = type(msg)(raw)
    reply.decode()
    return reply
