"""AF_PACKET sockets (``packet dgram socket``, ``packet raw socket``), such as the one
busybox's udhcpc holds during DHCP discovery: type, protocol, the interface it is bound to,
its classic BPF filter and options.

Sources, none of which stops anything:

* sock_diag of the task's net namespace (``NETLINK_SOCK_DIAG``, made by a helper that
  setns()'s into it; pyroute2 has no packet_diag).  ``include/uapi/linux/packet_diag.h``::

      struct packet_diag_req { __u8 sdiag_family, sdiag_protocol; __u16 pad;
                               __u32 pdiag_ino, pdiag_show, pdiag_cookie[2]; };
      struct packet_diag_msg { __u8 pdiag_family, pdiag_type; __u16 pdiag_num;
                               __u32 pdiag_ino, pdiag_cookie[2]; };
      PACKET_DIAG_INFO: struct packet_diag_info { __u32 pdi_index, pdi_version,
          pdi_reserve, pdi_copy_thresh, pdi_tstamp, pdi_flags; }
          (pdi_flags: PDI_RUNNING 1, PDI_AUXDATA 2, PDI_ORIGDEV 4, PDI_VNETHDR 8, PDI_LOSS 16)
      PACKET_DIAG_MCLIST (memberships), PACKET_DIAG_RX_RING / TX_RING (present only with a
      ring), PACKET_DIAG_FANOUT (u32, only in a fanout group), PACKET_DIAG_MEMINFO
      (u32 SK_MEMINFO_*: [0] rmem_alloc = bytes of queued frames)

  ``pdiag_num`` is the bound protocol (ntohs(po->num)), ``pdi_index`` the bound ifindex.
* a copy of the socket taken with pidfd_getfd: SO_TYPE, SO_PROTOCOL (sk_protocol, 0 for
  packet sockets on 6.18: the protocol that counts is pdiag_num), getsockname() (the interface name, resolved in the socket's own net
  namespace), SO_GET_FILTER (the classic BPF program; EACCES for an eBPF one),
  SO_LOCK_FILTER, SO_RCVBUF/SO_SNDBUF, SO_PRIORITY, SO_MARK, PACKET_QDISC_BYPASS,
  PACKET_IGNORE_OUTGOING, and SIOCINQ (length of the next queued frame) again at the dump.
  O_NONBLOCK comes from the fd record's flags.

Restore, injected into the task (so in its own, restored, net namespace):
socket(AF_PACKET, type, protocol), the options, bind() to the new ifindex of the recorded
interface name (ioctl SIOCGIFINDEX in the task) with the recorded bound protocol (a socket
that was never bound but has a protocol gets bind() with ifindex 0: all interfaces),
SO_ATTACH_FILTER with the recorded program, SO_LOCK_FILTER.

Refused by name, before freezing: a ring (PACKET_RX_RING/PACKET_TX_RING, mmap'ed), a
PACKET_FANOUT group, PACKET_ADD_MEMBERSHIP memberships, queued frames (they cannot be put
back into a socket's receive queue), an eBPF filter, a bound interface that no longer has a
name.  Frames arriving while the tree is frozen are dropped, as on a busy wire.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct

import construct as cs

from lxc_cr.errors import KernelError, RestoreFailed, Unsupported
from lxc_cr.image.kinds import record_kind
from lxc_cr.resources.records_common import Blob, Str

KINDS = ("packet dgram socket", "packet raw socket")
AF_PACKET, SOL_SOCKET, SOL_PACKET = 17, 1, 263
SOCK_CLOEXEC, SOCK_NONBLOCK, O_NONBLOCK = 0o2000000, 0o4000, 0o4000
SO_TYPE, SO_PROTOCOL, SO_PRIORITY, SO_RCVBUF, SO_SNDBUF, SO_MARK = 3, 38, 12, 8, 7, 36
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
SO_ATTACH_FILTER = SO_GET_FILTER = 26
SO_LOCK_FILTER = 44
PACKET_ADD_MEMBERSHIP, PACKET_RX_RING, PACKET_AUXDATA, PACKET_ORIGDEV = 1, 5, 8, 9
PACKET_VERSION, PACKET_RESERVE, PACKET_TX_RING, PACKET_LOSS, PACKET_VNET_HDR = 10, 12, 13, 14, 15
PACKET_TIMESTAMP, PACKET_FANOUT, PACKET_QDISC_BYPASS, PACKET_IGNORE_OUTGOING = 17, 18, 20, 23
PACKET_COPY_THRESH = 7
SIOCINQ, SIOCGIFINDEX = 0x541B, 0x8933
PDI_AUXDATA, PDI_ORIGDEV, PDI_VNETHDR, PDI_LOSS = 2, 4, 8, 16

# sock_diag (linux/packet_diag.h)
PACKET_SHOW_INFO, PACKET_SHOW_MCLIST, PACKET_SHOW_RING_CFG = 1, 2, 4
PACKET_SHOW_FANOUT, PACKET_SHOW_MEMINFO = 8, 16
(PACKET_DIAG_INFO, PACKET_DIAG_MCLIST, PACKET_DIAG_RX_RING, PACKET_DIAG_TX_RING,
 PACKET_DIAG_FANOUT, PACKET_DIAG_UID, PACKET_DIAG_MEMINFO, PACKET_DIAG_FILTER) = range(8)

PACKET_SOCKET = record_kind(0x0370, "packet_socket", cs.Struct(
    "file_id" / cs.Int32ul,
    "type" / cs.Int32ul,           # SOCK_DGRAM 2, SOCK_RAW 3
    "protocol" / cs.Int32ul,       # socket(2) protocol, network byte order (htons(ETH_P_*))
    "bound_protocol" / cs.Int32ul,  # pdiag_num, network byte order
    "ifname" / Str,                # bound interface ("": not bound to one)
    "version" / cs.Int32ul,        # PACKET_VERSION (TPACKET_V1 0)
    "reserve" / cs.Int32ul,
    "copy_thresh" / cs.Int32ul,
    "tstamp" / cs.Int32ul,         # PACKET_TIMESTAMP
    "auxdata" / cs.Flag, "origdev" / cs.Flag, "vnet_hdr" / cs.Flag, "loss" / cs.Flag,
    "qdisc_bypass" / cs.Flag, "ignore_outgoing" / cs.Flag,
    "rcvbuf" / cs.Int32ul, "sndbuf" / cs.Int32ul,   # as getsockopt reports them (doubled)
    "priority" / cs.Int32ul, "mark" / cs.Int32ul,
    "filter" / Blob,               # struct sock_filter[] (8 bytes each), "" for none
    "filter_locked" / cs.Flag,
), doc="an AF_PACKET socket: type, protocols, bound interface, classic BPF filter, options")


# --- the socket diag of the task's net namespace --------------------------------------------

def _diag_all() -> dict[int, dict]:
    """{inode: {num, index, version, reserve, copy_thresh, tstamp, flags, rx_ring, tx_ring,
    fanout, mclist, rmem}} of every packet socket of this net namespace."""
    from lxc_cr.kernel import netlink
    req = struct.pack("<BBHIII", AF_PACKET, 0, 0, 0,
                      PACKET_SHOW_INFO | PACKET_SHOW_MCLIST | PACKET_SHOW_RING_CFG
                      | PACKET_SHOW_FANOUT | PACKET_SHOW_MEMINFO, 0) + struct.pack("<I", 0)
    out: dict[int, dict] = {}
    for msg in netlink.dump(netlink.NETLINK_SOCK_DIAG, netlink.SOCK_DIAG_BY_FAMILY, req,
                            "packet_diag"):
        _, _, num, ino = struct.unpack_from("<BBHI", msg, 16)
        out[ino] = _diag_attrs(netlink.attrs(msg, 32), num)
    return out


def _diag_attrs(attrs: dict[int, bytes], num: int) -> dict:
    d = dict(num=num, index=0, version=0, reserve=0, copy_thresh=0, tstamp=0, flags=0,
             rx_ring=PACKET_DIAG_RX_RING in attrs, tx_ring=PACKET_DIAG_TX_RING in attrs,
             fanout=None, mclist=len(attrs.get(PACKET_DIAG_MCLIST, b"")) // 44,  # 44 bytes each
             rmem=0)
    info = attrs.get(PACKET_DIAG_INFO, b"")
    if len(info) >= 24:
        (d["index"], d["version"], d["reserve"], d["copy_thresh"], d["tstamp"],
         d["flags"]) = struct.unpack_from("<6I", info)
    if len(attrs.get(PACKET_DIAG_FANOUT, b"")) >= 4:
        d["fanout"] = struct.unpack_from("<I", attrs[PACKET_DIAG_FANOUT])[0]
    if len(attrs.get(PACKET_DIAG_MEMINFO, b"")) >= 4:
        d["rmem"] = struct.unpack_from("<I", attrs[PACKET_DIAG_MEMINFO])[0]
    return d


def _diag(ctx, host_pid: int) -> dict[int, dict]:
    cache = ctx.__dict__.setdefault("_packet_diag", {})
    netns = os.stat(f"/proc/{host_pid}/ns/net").st_ino
    if netns not in cache:
        from lxc_cr.resources.namespaces import run_in
        cache[netns] = run_in(host_pid, ("net",), _diag_all)
    return cache[netns]


# --- the socket itself, through a copy --------------------------------------------------------

def _get_filter(fd: int, host_pid: int) -> bytes | None:
    """The classic BPF program (``struct sock_filter[]``), b"" for none, None for an eBPF
    program (SO_GET_FILTER: EACCES).  optlen counts instructions, not bytes."""
    from lxc_cr.kernel.sys import syscall
    n = ctypes.c_uint32(0)
    try:
        syscall("getsockopt", fd, SOL_SOCKET, SO_GET_FILTER, None, ctypes.byref(n),
                pid=host_pid)
    except KernelError as e:
        if e.errno == 13:
            return None
        raise
    if n.value == 0:
        return b""
    buf = ctypes.create_string_buffer(8 * n.value)
    syscall("getsockopt", fd, SOL_SOCKET, SO_GET_FILTER, buf, ctypes.byref(n), pid=host_pid)
    return buf.raw[:8 * n.value]


def _inspect(host_pid: int, fd: int) -> dict:
    from lxc_cr.resources import files
    mine = files.getfd(host_pid, fd)
    s = socket.socket(fileno=mine)
    try:
        i = dict(ino=os.fstat(s.fileno()).st_ino,
                 type=s.getsockopt(SOL_SOCKET, SO_TYPE),
                 protocol=s.getsockopt(SOL_SOCKET, SO_PROTOCOL),
                 ifname=s.getsockname()[0],
                 rcvbuf=s.getsockopt(SOL_SOCKET, SO_RCVBUF),
                 sndbuf=s.getsockopt(SOL_SOCKET, SO_SNDBUF),
                 priority=s.getsockopt(SOL_SOCKET, SO_PRIORITY),
                 mark=s.getsockopt(SOL_SOCKET, SO_MARK),
                 filter_locked=bool(s.getsockopt(SOL_SOCKET, SO_LOCK_FILTER)),
                 qdisc_bypass=bool(s.getsockopt(SOL_PACKET, PACKET_QDISC_BYPASS)),
                 ignore_outgoing=bool(s.getsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING)),
                 filter=_get_filter(s.fileno(), host_pid))
        try:
            i["inq"] = struct.unpack("i", fcntl.ioctl(s.fileno(), SIOCINQ, b"\0" * 4))[0]
        except OSError:
            i["inq"] = 0
        return i
    finally:
        s.close()


def _what(i: dict, diag: dict) -> str:
    kind = "packet raw socket" if i["type"] == socket.SOCK_RAW else "packet dgram socket"
    return f"{kind} (protocol {diag['num']:#06x}{' on ' + i['ifname'] if i['ifname'] else ''})"


def _problems(task, fd: int, i: dict, diag: dict, full: bool = True) -> list:
    """What makes this socket unsupported; ``full`` false: only what can change while the
    tree is frozen (frames queued since the check)."""
    def no(what: str) -> Unsupported:
        return Unsupported(task.host_pid, task.stat.comm, f"{_what(i, diag)} {what}", fd=fd)
    out = []
    if i["inq"]:
        out.append(no("with queued frames"))
    if not full:
        return out
    if i["filter"] is None:
        out.append(no("with an eBPF filter (SO_ATTACH_BPF)"))
    for ring, name in (("rx_ring", "PACKET_RX_RING"), ("tx_ring", "PACKET_TX_RING")):
        if diag[ring]:
            out.append(no(f"with a {name} (mmap'ed ring)"))
    if diag["fanout"] is not None:
        out.append(no("in a PACKET_FANOUT group"))
    if diag["mclist"]:
        out.append(no(f"with {diag['mclist']} PACKET_ADD_MEMBERSHIP membership(s)"))
    if diag["rmem"] and not i["inq"]:
        out.append(no(f"with {diag['rmem']} bytes of queued frames"))
    if diag["index"] and not i["ifname"]:
        out.append(no(f"bound to ifindex {diag['index']}, which has no name"))
    return out


def check(ctx, task, d) -> list:
    try:
        i = _inspect(task.host_pid, d.fd)
        diag = _diag(ctx, task.host_pid).get(i["ino"])
    except Exception:      # noqa: BLE001 - unreadable: refused by its kind
        return [Unsupported(task.host_pid, task.stat.comm, d.kind, fd=d.fd)]
    if diag is None:
        return [Unsupported(task.host_pid, task.stat.comm, d.kind, fd=d.fd,
                            reason="not found by packet_diag")]
    return _problems(task, d.fd, i, diag)


def dump(ctx, task, d, file_id) -> None:
    from lxc_cr.resources import files
    if not files.once(ctx, "packet_sockets", file_id):
        return
    i = _inspect(task.host_pid, d.fd)
    diag = _diag(ctx, task.host_pid).get(i["ino"])
    if diag is None:
        raise Unsupported(task.host_pid, task.stat.comm, d.kind, fd=d.fd,
                          reason="not found by packet_diag")
    problems = _problems(task, d.fd, i, diag, full=False)     # frames queued since check()
    if problems:
        raise problems[0]
    f = diag["flags"]
    ctx.writer.add(PACKET_SOCKET, dict(
        file_id=file_id, type=i["type"], protocol=i["protocol"],
        bound_protocol=socket.htons(diag["num"]),
        ifname=i["ifname"], version=diag["version"], reserve=diag["reserve"],
        copy_thresh=diag["copy_thresh"], tstamp=diag["tstamp"],
        auxdata=bool(f & PDI_AUXDATA), origdev=bool(f & PDI_ORIGDEV),
        vnet_hdr=bool(f & PDI_VNETHDR), loss=bool(f & PDI_LOSS),
        qdisc_bypass=i["qdisc_bypass"], ignore_outgoing=i["ignore_outgoing"],
        rcvbuf=i["rcvbuf"], sndbuf=i["sndbuf"], priority=i["priority"], mark=i["mark"],
        filter=i["filter"] or b"", filter_locked=i["filter_locked"]))


# --- restore ----------------------------------------------------------------------------------

def _options(u) -> list[tuple[int, int, int]]:
    """(level, optname, value) to set, only where the recorded value is not the default."""
    opts = [(SOL_PACKET, PACKET_VERSION, u.version), (SOL_PACKET, PACKET_RESERVE, u.reserve),
            (SOL_PACKET, PACKET_COPY_THRESH, u.copy_thresh),
            (SOL_PACKET, PACKET_TIMESTAMP, u.tstamp),
            (SOL_PACKET, PACKET_AUXDATA, int(u.auxdata)),
            (SOL_PACKET, PACKET_ORIGDEV, int(u.origdev)),
            (SOL_PACKET, PACKET_VNET_HDR, int(u.vnet_hdr)), (SOL_PACKET, PACKET_LOSS, int(u.loss)),
            (SOL_PACKET, PACKET_QDISC_BYPASS, int(u.qdisc_bypass)),
            (SOL_PACKET, PACKET_IGNORE_OUTGOING, int(u.ignore_outgoing)),
            (SOL_SOCKET, SO_PRIORITY, u.priority), (SOL_SOCKET, SO_MARK, u.mark)]
    return [o for o in opts if o[2]]


def restore(ctx, task, rec, remote) -> int:
    u = next((r for r in ctx.records["packet_socket"] if r.file_id == rec.file_id), None)
    if u is None:
        raise RestoreFailed(f"{ctx.path}: no packet_socket record for file {rec.file_id}")
    nonblock = SOCK_NONBLOCK if rec.flags & O_NONBLOCK else 0
    fd = remote.call("socket", AF_PACKET, u.type | SOCK_CLOEXEC | nonblock, u.protocol)
    buf = ctx.scratch + 2048                       # 1 KiB of the scratch page
    for level, name, value in _options(u):
        remote.write(buf, struct.pack("<i", value))
        remote.call("setsockopt", fd, level, name, buf, 4)
    # setsockopt doubles SO_*BUF; the FORCE variants ignore rmem_max/wmem_max
    for name, value in ((SO_RCVBUFFORCE, u.rcvbuf), (SO_SNDBUFFORCE, u.sndbuf)):
        remote.write(buf, struct.pack("<i", value // 2))
        remote.call("setsockopt", fd, SOL_SOCKET, name, buf, 4)
    ifindex = 0
    if u.ifname:
        remote.write(buf, u.ifname.encode()[:15].ljust(40, b"\0"))       # struct ifreq
        try:
            remote.call("ioctl", fd, SIOCGIFINDEX, buf)
        except KernelError:
            raise RestoreFailed(f"{ctx.path}: packet socket bound to {u.ifname}: no such "
                                "interface in the restored net namespace") from None
        ifindex = struct.unpack("<i", remote.read(buf + 16, 4))[0]
    if ifindex or u.bound_protocol != u.protocol:
        # struct sockaddr_ll: family, protocol (be16), ifindex, hatype, pkttype, halen, addr
        remote.write(buf, struct.pack("<HHiHBB8s", AF_PACKET, u.bound_protocol, ifindex,
                                      0, 0, 0, b""))
        remote.call("bind", fd, buf, 20)
    if u.filter:
        _attach_filter(remote, fd, u.filter, buf)
        if u.filter_locked:
            remote.write(buf, struct.pack("<i", 1))
            remote.call("setsockopt", fd, SOL_SOCKET, SO_LOCK_FILTER, buf, 4)
    return fd


def _attach_filter(remote, fd: int, prog: bytes, buf: int) -> None:
    """SO_ATTACH_FILTER with ``struct sock_fprog { u16 len; struct sock_filter *filter; }``,
    in the scratch buffer, or in a page mapped for it when the program is larger."""
    size = 16 + len(prog)
    tmp = 0
    if size > 1024:
        tmp = remote.call("mmap", 0, (size + 4095) & ~4095, 3, 0x22, -1, 0)
        buf = tmp
    try:
        remote.write(buf + 16, prog)
        remote.write(buf, struct.pack("<HxxxxxxQ", len(prog) // 8, buf + 16))
        remote.call("setsockopt", fd, SOL_SOCKET, SO_ATTACH_FILTER, buf, 16)
    finally:
        if tmp:
            remote.call("munmap", tmp, (size + 4095) & ~4095)
