"""Namespaces of the tree: which kinds it owns, and their state that this engine restores.

``/proc/PID/ns/KIND`` links (``net:[4026531840]``) tell each namespace; a kind whose inode
differs from the dumper's is the tree's own and is recreated fresh on restore.  UTS: the
``struct utsname`` fields nodename and domainname (uname(2) injected into the root).  Net:
the links of the namespace (name, IFF_* flags, MTU, MAC) read with pyroute2; this engine
restores the loopback device's up state; veths and addresses belong to the net module.
"""

from __future__ import annotations

import os
import socket

from lxc_cr.errors import RestoreFailed, Unsupported
from lxc_cr.kernel import sys as ksys
from lxc_cr.resources.ns_records import NETLINK, NS, UTS

KINDS = ("pid", "uts", "ipc", "net", "mnt", "cgroup", "time", "user")
IFF_UP = 1
_UTSNAME = 65


def own_kinds(proc, host_pid: int) -> dict[str, tuple[int, bool]]:
    out = {}
    me = os.getpid()
    for kind in KINDS:
        try:
            ino = proc.ns(host_pid, kind)
            mine = proc.ns(me, kind)
        except Exception:
            continue
        out[kind] = (ino, ino != mine)
    return out


def check(proc, root) -> list[Unsupported]:
    out = []
    kinds = own_kinds(proc, root.host_pid)
    if kinds.get("user", (0, False))[1]:
        out.append(Unsupported(root.host_pid, root.stat.comm, "user namespace",
                               reason="not supported yet"))
    if kinds.get("time", (0, False))[1]:
        out.append(Unsupported(root.host_pid, root.stat.comm, "time namespace",
                               reason="not supported yet"))
    return out


def dump(ctx, root, remote) -> None:
    kinds = own_kinds(ctx.proc, root.host_pid)
    for kind, (ino, own) in kinds.items():
        ctx.writer.add(NS, dict(kind=kind, ino=ino, own=own or kind == "pid"))
    buf = ctx.scratch_for(root)
    remote.call("uname", buf)
    raw = remote.read(buf, _UTSNAME * 6)
    field = lambda i: raw[i * _UTSNAME:(i + 1) * _UTSNAME].split(b"\0", 1)[0].decode()
    ctx.writer.add(UTS, dict(hostname=field(1), domainname=field(5)))
    if kinds.get("net", (0, False))[1]:
        for link in net_links(f"/proc/{root.host_pid}/ns/net"):
            ctx.writer.add(NETLINK, link)


def net_links(nspath: str) -> list[dict]:
    from pyroute2 import IPRoute
    out = []
    with IPRoute(netns=nspath, flags=0) as ipr:
        for msg in ipr.get_links():
            linkinfo = msg.get_attr("IFLA_LINKINFO")
            kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo else None
            name = msg.get_attr("IFLA_IFNAME")
            if kind is None:
                kind = "loopback" if name == "lo" else "unknown"
            out.append(dict(index=msg["index"], name=name, kind=kind, flags=msg["flags"],
                            mtu=msg.get_attr("IFLA_MTU") or 0,
                            address=msg.get_attr("IFLA_ADDRESS") or ""))
    return out


def unshare_flags(ns_recs) -> int:
    """CLONE_NEW* flags for the kinds the tree owned, except pid (done by the restorer)."""
    flags = 0
    for r in ns_recs:
        if r.own and str(r.kind) not in ("pid", "user", "time"):
            flags |= ksys.NS_FLAGS[str(r.kind)]
    return flags


def setup_in_child(ns_recs, uts, links, mount_proc: bool) -> None:
    """Run in the restored init before takeover (still restorer code, in the new pid ns):
    unshare the other kinds, set the UTS names, bring up loopback, mount a fresh /proc."""
    ksys.unshare(unshare_flags(ns_recs))
    own = {str(r.kind) for r in ns_recs if r.own}
    if uts is not None and "uts" in own:
        socket.sethostname(uts.hostname)
        name = uts.domainname.encode()
        ksys.syscall("setdomainname", name, len(name))
    if "mnt" in own:
        _mount(b"none", b"/", None, 0x4000 | 0x40000)          # MS_REC | MS_PRIVATE
        if mount_proc:
            _mount(b"proc", b"/proc", b"proc", 0x2 | 0x8 | 0x4)  # nosuid nodev noexec
    if "net" in own:
        lo_up = any(link.name == "lo" and link.flags & IFF_UP for link in links)
        if lo_up:
            from pyroute2 import IPRoute
            with IPRoute() as ipr:
                idx = ipr.link_lookup(ifname="lo")
                if not idx:
                    raise RestoreFailed("no loopback device in the new net namespace")
                ipr.link("set", index=idx[0], state="up")


def _mount(src, target, fstype, flags) -> None:
    ksys.syscall("mount", src, target, fstype, flags, None)
