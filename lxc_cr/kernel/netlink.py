"""Netlink dumps on a plain blocking socket.

A dump is one request (``NLM_F_REQUEST | NLM_F_DUMP``) and the replies up to NLMSG_DONE.
lxc-cr only ever reads state this way while it checks and dumps: devices, addresses,
routes and rules (rtnetlink), the unix and packet sockets of a namespace (sock_diag),
and whether it has any nftables table (nfnetlink).  pyroute2's message classes, the same
its IPRoute uses, decode the rtnetlink replies (``rtnl_dump``); a restore's writes still
go through IPRoute.

Why not IPRoute for the reads as well: pyroute2 0.9 runs every socket on an asyncio event
loop.  Importing that machinery costs about 50 ms, and each socket opens a loop of its own,
while a busybox container's whole checkpoint is budgeted at 0.2 s (issue #11).  The
message classes alone import in about 5 ms and do not touch asyncio.

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
NLM_F_REQUEST, NLM_F_DUMP_INTR, NLM_F_DUMP = 0x1, 0x10, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
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
    request = _HDR.pack(_HDR.size + len(payload), msg_type, NLM_F_REQUEST | NLM_F_DUMP,
                        1, 0) + payload
    out: list[bytes] = []
    interrupted = False
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       protocol) as nl:
        nl.send(request)
        while True:
            data = nl.recv(1 << 20)
            if not data:
                raise OSError(errno.EPROTO, f"{what}: netlink socket closed mid-dump")
            off = 0
            while off + _HDR.size <= len(data):
                length, typ, flags, _seq, _pid = _HDR.unpack_from(data, off)
                if length < _HDR.size or off + length > len(data):
                    raise OSError(errno.EPROTO, f"{what}: truncated netlink message")
                interrupted |= bool(flags & NLM_F_DUMP_INTR)
                if typ in (NLMSG_DONE, NLMSG_ERROR):
                    err = 0
                    if length >= _HDR.size + 4:
                        err = -struct.unpack_from("=i", data, off + _HDR.size)[0]
                    if err:
                        raise OSError(err, f"{what}: {os.strerror(err)}")
                    return out, interrupted
                out.append(data[off:off + length])
                off += (length + 3) & ~3


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
