"""Network namespace: devices, addresses, routes, rules, net sysctls and the nftables ruleset.

Everything is read and written through rtnetlink on a plain socket (``kernel/netlink.py``,
no ``ip`` subprocess, no pyroute2 IPRoute): reads are dumps decoded by pyroute2's message
classes, a restore sends one request per change, encoded by the same classes::

    struct ifinfomsg { u8 family; u16 type; s32 index; u32 flags; u32 change; }   RTM_*LINK
    struct ifaddrmsg { u8 family, prefixlen, flags, scope; u32 index; }          RTM_*ADDR
    struct rtmsg     { u8 family, dst_len, src_len, tos, table, protocol, scope, type;
                       u32 flags; }                                             RTM_*ROUTE
    struct fib_rule_hdr { u8 family, dst_len, src_len, tos, table, res1, res2, action;
                          u32 flags; }                                          RTM_*RULE

Devices kept: loopback, veth (both ends inside the namespace: recreated as a pair, same
ifindexes), bridge (ports re-enslaved), macvlan on a device of the namespace.  A device that
already exists under the recorded name on restore (loopback always; a veth a container
manager moved in) is reconciled, not recreated: ``reconcile()``.  Fallback tunnel devices a
loaded module puts in every namespace (sit0, tunl0, ...) are reconciled the same way.

Net sysctls (``/proc/sys/net/{ipv4,ipv6,core,unix}``, top level and ``conf/*/``) are read
from a helper that setns()'s into the namespace, compared with a freshly created namespace,
and only differing values recorded.  nftables: ``nft -j list ruleset`` run inside the
namespace, restored with ``nft -j -f -``.  There is no iptables binary on these machines:
iptables-nft rules appear in the nft ruleset; legacy xtables rules are not recorded.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess

import construct as cs

from lxc_cr.errors import OperationFailed, Refused, RestoreFailed, Unsupported
from lxc_cr.image.kinds import record_kind
from lxc_cr.kernel import netlink
from lxc_cr.resources.records_common import Str

AF_INET, AF_INET6 = socket.AF_INET, socket.AF_INET6
IFF_UP, IFF_NOARP, IFF_PROMISC, IFF_ALLMULTI, IFF_MULTICAST = 0x1, 0x80, 0x100, 0x200, 0x1000
IFF_SETTABLE = IFF_NOARP | IFF_PROMISC | IFF_ALLMULTI | IFF_MULTICAST
IFA_F_NODAD, IFA_F_PERMANENT = 0x02, 0x80
IFAPROT_KERNEL = (1, 2, 3)     # IFA_PROTO: IFAPROT_KERNEL_LO, _RA, _LL (linux/if_addr.h)
RTPROT_KERNEL, RTPROT_RA = 2, 9
RTM_F_CLONED = 0x200
RT_TABLE_LOCAL = 255
KINDS = ("loopback", "veth", "bridge", "macvlan")
MACVLAN_MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8, "source": 16}
# created by a loaded tunnel module in every new namespace: reconciled, never created
FALLBACK = {"sit0", "tunl0", "ip6tnl0", "gre0", "gretap0", "erspan0", "ip6gre0",
            "ip6_vti0", "ip_vti0", "ip6gretap0"}
SYSCTL_DIRS = ("ipv4", "ipv6", "core", "unix")
# values the kernel derives from something else we restore, or that cannot be written
SYSCTL_SKIP = ("stable_secret", "/mtu", "base_reachable_time", "retrans_time")
NFT = "nft"

NET_LINK_CONF = record_kind(0x0411, "net_link_conf", cs.Struct(
    "index" / cs.Int32ul,        # of the net_link record it completes
    "peer" / cs.Int32ul,         # IFLA_LINK: veth peer / macvlan lower ifindex, 0 none
    "peer_outside" / cs.Flag,    # IFLA_LINK_NETNSID set: peer/lower in another namespace
    "master" / cs.Int32ul,       # IFLA_MASTER (bridge), 0 none
    "txqlen" / cs.Int32ul,
    "macvlan_mode" / cs.Int32ul,  # IFLA_MACVLAN_MODE, 0 unless macvlan
), doc="net_link details needed to recreate the device")

NET_ADDR = record_kind(0x0412, "net_addr", cs.Struct(
    "index" / cs.Int32ul,
    "family" / cs.Int8ul,        # AF_INET 2, AF_INET6 10
    "address" / Str,             # IFA_ADDRESS
    "local" / Str,               # IFA_LOCAL ("" if absent)
    "prefixlen" / cs.Int8ul,
    "broadcast" / Str,
    "label" / Str,
    "scope" / cs.Int8ul,
    "flags" / cs.Int32ul,        # IFA_FLAGS (IFA_F_NODAD 0x2, IFA_F_PERMANENT 0x80, ...)
), doc="an address of a device in the tree's net namespace")

NET_ROUTE = record_kind(0x0413, "net_route", cs.Struct(
    "family" / cs.Int8ul,
    "table" / cs.Int32ul,        # RTA_TABLE
    "dst" / Str,
    "dst_len" / cs.Int8ul,
    "src" / Str,
    "src_len" / cs.Int8ul,
    "tos" / cs.Int8ul,
    "proto" / cs.Int8ul,
    "scope" / cs.Int8ul,
    "type" / cs.Int8ul,
    "flags" / cs.Int32ul,
    "oif" / cs.Int32ul,
    "gateway" / Str,
    "prefsrc" / Str,
    "priority" / cs.Int32ul,
    "metrics" / cs.PrefixedArray(cs.VarInt, cs.Struct("name" / Str, "value" / cs.Int32ul)),
    "multipath" / cs.PrefixedArray(cs.VarInt, cs.Struct(
        "oif" / cs.Int32ul, "gateway" / Str, "hops" / cs.Int8ul, "flags" / cs.Int8ul)),
), doc="a route of any table but the kernel's own (proto kernel, ra, cloned)")

NET_RULE = record_kind(0x0414, "net_rule", cs.Struct(
    "family" / cs.Int8ul,
    "priority" / cs.Int32ul,
    "table" / cs.Int32ul,
    "action" / cs.Int8ul,
    "src" / Str,
    "src_len" / cs.Int8ul,
    "dst" / Str,
    "dst_len" / cs.Int8ul,
    "tos" / cs.Int8ul,
    "flags" / cs.Int32ul,
    "iifname" / Str,
    "oifname" / Str,
    "fwmark" / cs.Int32ul,
    "fwmask" / cs.Int32ul,
    "goto" / cs.Int32ul,
    "suppress_prefixlen" / cs.Int32ul,  # FRA_SUPPRESS_PREFIXLEN, 0xffffffff: unset
), doc="a policy routing rule other than the three every namespace starts with")

NET_SYSCTL = record_kind(0x0415, "net_sysctl", cs.Struct(
    "key" / Str,                 # path under /proc/sys/net, e.g. "ipv4/ip_forward"
    "value" / Str,
), doc="a net sysctl whose value differs from a fresh namespace's")

NET_NFT = record_kind(0x0416, "net_nftables", cs.Struct(
    "ruleset" / Str,             # `nft -j list ruleset` output
), doc="the nftables ruleset of the namespace (absent when empty)")


# --- reading ----------------------------------------------------------------------------

MESSAGES = ("ifinfmsg", "ifaddrmsg", "rtmsg", "fibmsg")


def _msg(name: str):
    """pyroute2's rtnetlink message class ``name`` (one of MESSAGES), imported without
    pyroute2's package __init__ (lightimport)."""
    from lxc_cr.lightimport import submodule
    return getattr(submodule("pyroute2", f"netlink.rtnl.{name}"), name)


def _rtnl_dump(msg: str, msg_type: int, family: int = 0) -> list:
    """The messages of one rtnetlink dump in the calling thread's net namespace
    (namespaces.run_in puts a thread there), decoded by pyroute2's class ``msg``."""
    return netlink.rtnl_dump(_msg(msg), msg_type, family)


def preload_messages() -> None:
    """Import the message classes a dump and a restore read and write with (about 15 ms)."""
    for name in MESSAGES:
        _msg(name)


def _kind(msg) -> str:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info else None
    if kind is None:
        return "loopback" if msg.get_attr("IFLA_IFNAME") == "lo" else "unknown"
    return kind


def read_links() -> list[tuple[dict, dict]]:
    """(net_link, net_link_conf) for every device."""
    out = []
    for msg in _rtnl_dump("ifinfmsg", netlink.RTM_GETLINK):
        kind = _kind(msg)
        mode = 0
        info = msg.get_attr("IFLA_LINKINFO")
        if kind == "macvlan" and info is not None:
            data = info.get_attr("IFLA_INFO_DATA")
            m = data.get_attr("IFLA_MACVLAN_MODE") if data else None
            mode = MACVLAN_MODES.get(m, m if isinstance(m, int) else 0)
        link = dict(index=msg["index"], name=msg.get_attr("IFLA_IFNAME"), kind=kind,
                    flags=msg["flags"], mtu=msg.get_attr("IFLA_MTU") or 0,
                    address=msg.get_attr("IFLA_ADDRESS") or "")
        conf = dict(index=msg["index"], peer=msg.get_attr("IFLA_LINK") or 0,
                    peer_outside=msg.get_attr("IFLA_LINK_NETNSID") is not None,
                    master=msg.get_attr("IFLA_MASTER") or 0,
                    txqlen=msg.get_attr("IFLA_TXQLEN") or 0, macvlan_mode=mode)
        if conf["peer"] == msg["index"]:
            conf["peer"] = 0
        out.append((link, conf))
    return out


def read_addrs() -> list[dict]:
    """Every address but those IFA_PROTO says the kernel made (loopback, router
    advertisement, link-local): a device's link-local address stays when its MAC changes,
    as a restore into a manager's fresh veth does, and recorded it was added again at the
    next restore, one more after each checkpoint."""
    out = []
    for a in _rtnl_dump("ifaddrmsg", netlink.RTM_GETADDR):
        if a.get_attr("IFA_PROTO") in IFAPROT_KERNEL:
            continue
        flags = a.get_attr("IFA_FLAGS")
        flags = a["flags"] if flags is None else flags
        out.append(dict(index=a["index"], family=a["family"],
                        address=a.get_attr("IFA_ADDRESS") or "",
                        local=a.get_attr("IFA_LOCAL") or "", prefixlen=a["prefixlen"],
                        broadcast=a.get_attr("IFA_BROADCAST") or "",
                        label=a.get_attr("IFA_LABEL") or "", scope=a["scope"], flags=flags))
    return out


def read_routes() -> list[dict]:
    out = []
    for fam in (AF_INET, AF_INET6):
        for r in _rtnl_dump("rtmsg", netlink.RTM_GETROUTE, fam):
            if r["proto"] in (RTPROT_KERNEL, RTPROT_RA) or r["flags"] & RTM_F_CLONED:
                continue
            table = r.get_attr("RTA_TABLE") or r["table"]
            metrics = []
            mx = r.get_attr("RTA_METRICS")
            if mx is not None:
                metrics = [dict(name=k, value=int(v)) for k, v in mx["attrs"]
                           if isinstance(v, int)]
            paths = []
            for nh in r.get_attr("RTA_MULTIPATH") or ():
                paths.append(dict(oif=nh["oif"], gateway=nh.get_attr("RTA_GATEWAY") or "",
                                  hops=nh["hops"], flags=nh["flags"]))
            out.append(dict(family=fam, table=table, dst=r.get_attr("RTA_DST") or "",
                            dst_len=r["dst_len"], src=r.get_attr("RTA_SRC") or "",
                            src_len=r["src_len"], tos=r["tos"], proto=r["proto"],
                            scope=r["scope"], type=r["type"], flags=r["flags"],
                            oif=r.get_attr("RTA_OIF") or 0,
                            gateway=r.get_attr("RTA_GATEWAY") or "",
                            prefsrc=r.get_attr("RTA_PREFSRC") or "",
                            priority=r.get_attr("RTA_PRIORITY") or 0,
                            metrics=metrics, multipath=paths))
    return out


_DEFAULT_RULES = {(AF_INET, 0, 255), (AF_INET, 32766, 254), (AF_INET, 32767, 253),
                  (AF_INET6, 0, 255), (AF_INET6, 32766, 254)}


def read_rules() -> list[dict]:
    out = []
    for fam in (AF_INET, AF_INET6):
        for r in _rtnl_dump("fibmsg", netlink.RTM_GETRULE, fam):
            table = r.get_attr("FRA_TABLE") or r["table"]
            prio = r.get_attr("FRA_PRIORITY") or 0
            plain = not (r["src_len"] or r["dst_len"] or r.get_attr("FRA_IIFNAME")
                         or r.get_attr("FRA_OIFNAME") or r.get_attr("FRA_FWMARK"))
            if plain and (fam, prio, table) in _DEFAULT_RULES:
                continue
            sp = r.get_attr("FRA_SUPPRESS_PREFIXLEN")
            out.append(dict(family=fam, priority=prio, table=table, action=r["action"],
                            src=r.get_attr("FRA_SRC") or "", src_len=r["src_len"],
                            dst=r.get_attr("FRA_DST") or "", dst_len=r["dst_len"],
                            tos=r["tos"], flags=r["flags"],
                            iifname=r.get_attr("FRA_IIFNAME") or "",
                            oifname=r.get_attr("FRA_OIFNAME") or "",
                            fwmark=r.get_attr("FRA_FWMARK") or 0,
                            fwmask=r.get_attr("FRA_FWMASK") or 0,
                            goto=r.get_attr("FRA_GOTO") or 0,
                            suppress_prefixlen=0xFFFFFFFF if sp is None else sp))
    return out


def read_sysctls(devices: list[str]) -> dict[str, str]:
    """Readable net sysctls of the calling process's namespace (top level and conf/*/);
    per-device keys are named conf/DEV/... for DEV in ``devices`` plus all and default.
    About 600 small files, read here and in a fresh namespace at every dump: scandir's
    entry types instead of a stat each, and plain os.read."""
    out = {}
    base = "/proc/sys/net"
    for d in SYSCTL_DIRS:
        top = os.path.join(base, d)
        try:
            entries = list(os.scandir(top))
        except OSError:
            continue
        _read_sysctls(out, d, entries)
        conf = os.path.join(top, "conf")
        if os.path.isdir(conf):
            for dev in os.listdir(conf):
                if dev in ("all", "default", *devices):
                    _read_sysctls(out, f"{d}/conf/{dev}", os.scandir(os.path.join(conf, dev)))
    return out


def _read_sysctls(out: dict, prefix: str, entries) -> None:
    """Each regular file among ``entries`` (of /proc/sys/net/PREFIX) into out[PREFIX/name],
    but the SYSCTL_SKIP ones and those that cannot be read."""
    for e in entries:
        key = f"{prefix}/{e.name}"
        if e.is_dir() or any(s in "/" + key for s in SYSCTL_SKIP):
            continue
        try:
            fd = os.open(e.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            out[key] = os.read(fd, 65536).decode().rstrip("\n")
        except OSError:
            pass
        finally:
            os.close(fd)


def _fresh_sysctls() -> dict[str, str]:
    """The sysctls of a net namespace unshared for it (by the calling thread), the
    defaults a dump compares with: its devices are lo and the conf/all and conf/default."""
    from lxc_cr.kernel import sys as ksys
    ksys.unshare(ksys.CLONE_NEWNET)
    return read_sysctls(["lo"])


def sysctl_diff(ours: dict[str, str], fresh: dict[str, str]) -> list[dict]:
    """Keys whose value differs from a fresh namespace's; a device's conf keys compare
    with the fresh namespace's conf/default."""
    out = []
    for key, value in sorted(ours.items(), key=lambda kv: _sysctl_order(kv[0])):
        ref = fresh.get(key)
        parts = key.split("/")
        if ref is None and len(parts) == 4 and parts[1] == "conf":
            ref = fresh.get(f"{parts[0]}/conf/default/{parts[3]}")
        if ref is None or ref != value:
            out.append(dict(key=key, value=value))
    return out


def _sysctl_order(key: str) -> tuple:
    """Global keys first (ip_forward resets every conf/*/forwarding), then all, default,
    then devices."""
    parts = key.split("/")
    if len(parts) < 4:
        return (0, key)
    return ({"all": 1, "default": 2}.get(parts[2], 3), key)


def read_nft() -> str:
    """``nft -j list ruleset`` in the calling thread's namespace; "" when empty.  Everything
    nftables holds is in a table, so a namespace without one (asked through nfnetlink) is
    empty without running nft."""
    if not _nft_tables():
        return ""
    try:
        r = subprocess.run([NFT, "-j", "list", "ruleset"], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return ""
    if r.returncode != 0:
        raise OperationFailed(f"nft -j list ruleset: {r.stderr.strip()[:200]}")
    doc = json.loads(r.stdout or "{}")
    items = [x for x in doc.get("nftables", []) if "metainfo" not in x]
    return json.dumps(doc, separators=(",", ":")) if items else ""


def _nft_tables() -> bool:
    """Whether the calling thread's namespace has an nftables table (True when it cannot
    be told: nft is asked then)."""
    try:
        return bool(netlink.dump(netlink.NETLINK_NETFILTER, netlink.NFT_MSG_GETTABLE,
                                 bytes(4), "nftables tables"))   # struct nfgenmsg, AF_UNSPEC
    except OSError:
        return True


# --- check and dump ----------------------------------------------------------------------

def check(root, run_in, reads=None) -> list[Unsupported]:
    """``reads``: a Reads whose helper read the devices (else read here, with run_in)."""
    links = reads.links() if reads is not None else run_in(root.host_pid, ("net",),
                                                           read_links)
    return _link_problems(root, links)


def _link_problems(root, links) -> list[Unsupported]:
    out = []
    names = {ln["index"]: ln["name"] for ln, _c in links}
    for ln, conf in links:
        if ln["kind"] in KINDS or ln["name"] in FALLBACK:
            if ln["kind"] == "macvlan" and (conf["peer_outside"] or conf["peer"] not in names):
                out.append(Unsupported(root.host_pid, root.stat.comm, "macvlan",
                                       where=f"net device {ln['name']}",
                                       reason="lower device outside the namespace: "
                                              "not supported"))
            continue
        out.append(Unsupported(root.host_pid, root.stat.comm, f"{ln['kind']} device",
                               where=f"net device {ln['name']}"))
    return out


def _read_here() -> tuple:
    """Devices, addresses, routes, rules and sysctls of the calling thread's namespace."""
    links = read_links()
    return (links, read_addrs(), read_routes(), read_rules(),
            read_sysctls([ln["name"] for ln, _c in links]))


def _read_frozen() -> tuple:
    """What the dump records of the calling thread's namespace: _read_here's state and the
    nftables ruleset."""
    return (*_read_here(), read_nft())


class _Beside:
    """Owns a namespaces.Beside helper (``self.helper``): closed with it, or by ``with``."""

    def close(self) -> None:
        self.helper.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Reads(_Beside):
    """The tree's network state, read beside the dump by a helper in its net namespace
    (namespaces.Beside), made before the checks.  The helper reads the devices at once,
    for the check (``links()``), then imports the other message classes and reads the
    sysctls of a fresh namespace; ``frozen()``, called once the tree is frozen, asks it for
    what the dump records (``state()``), which the dump takes after the processes'."""

    def __init__(self, host_pid: int):
        from lxc_cr.resources.namespaces import Beside
        self.helper = Beside(host_pid, ("net",))
        for fn in (read_links, preload_messages, _fresh_sysctls):
            self.helper.send(fn)
        self._links = self._state = None

    def links(self) -> list:
        if self._links is None:
            self._links = self.helper.take()
        return self._links

    def frozen(self) -> None:
        self.helper.send(_read_frozen)
        self.helper.done()

    def state(self) -> tuple:
        """(links, addresses, routes, rules, sysctls, nftables ruleset, fresh sysctls)"""
        if self._state is None:
            self.links()                               # answers come in the order asked
            self.helper.take()
            fresh = self.helper.take()
            self._state = (*self.helper.take(), fresh)
        return self._state


def dump(ctx, root, run_in, reads=None) -> None:
    """``reads``: a Reads told the tree is frozen (else the state is read here, with
    run_in).  The devices recorded are checked again: one added between the check and the
    freeze is refused."""
    if reads is not None:
        links, addrs, routes, rules, ours, ruleset, fresh = reads.state()
    else:
        links, addrs, routes, rules, ours, ruleset = run_in(root.host_pid, ("net",),
                                                            _read_frozen)
        fresh = run_in(os.getpid(), (), _fresh_sysctls)
    problems = _link_problems(root, links)
    if problems:
        raise Refused(problems)
    w = ctx.writer
    from lxc_cr.resources.ns_records import NETLINK
    for ln, _conf in links:
        w.add(NETLINK, ln)
    for _ln, conf in links:
        w.add(NET_LINK_CONF, conf)
    for a in addrs:
        w.add(NET_ADDR, a)
    for r in routes:
        w.add(NET_ROUTE, r)
    for r in rules:
        w.add(NET_RULE, r)
    for s in sysctl_diff(ours, fresh):
        w.add(NET_SYSCTL, s)
    if ruleset:
        w.add(NET_NFT, dict(ruleset=ruleset))


# --- restore (in the target namespace: the restored init before takeover, or a helper) ----
#
# Each change is one rtnetlink request (netlink.rtnl_request): a pyroute2 message with its
# fields and attributes set one by one from the record.  RTM_NEWLINK creates a device (with
# NLM_F_CREATE | NLM_F_EXCL, as RTM_NEWADDR, RTM_NEWROUTE and RTM_NEWRULE) or changes it.

_CREATE = netlink.NLM_F_CREATE | netlink.NLM_F_EXCL


def restore(records) -> None:
    """Rebuild the recorded network state in the calling process's net namespace."""
    links = {ln.index: ln for ln in records.get("net_link", ())}
    confs = {c.index: c for c in records.get("net_link_conf", ())}
    sysctls = list(records.get("net_sysctl", ()))
    _write_sysctls([s for s in sysctls if _sysctl_order(s.key)[0] < 3])
    idx = _links(links, confs)
    for a in records.get("net_addr", ()):
        _add_addr(a, idx, links.get(a.index))
    for index, ln in links.items():
        if ln.flags & IFF_UP:
            _request(_ifinfmsg(idx[index], IFF_UP, IFF_UP), netlink.RTM_NEWLINK, 0,
                     f"net device {ln.name}: set up")
    _write_sysctls([s for s in sysctls if _sysctl_order(s.key)[0] == 3])
    _routes(list(records.get("net_route", ())), idx)
    for r in records.get("net_rule", ()):
        _add_rule(r)
    for n in records.get("net_nftables", ()):
        load_nft(n.ruleset)


RECORDS = ("net_link", "net_link_conf", "net_addr", "net_route", "net_rule", "net_sysctl",
           "net_nftables")


class Rebuild(_Beside):
    """The recorded network state rebuilt by a forked helper beside a restore into a
    manager's container (namespaces.Beside).  Made when the restore starts, the helper
    imports the message classes while this process checks the image; ``start(pid,
    records)``, once the manager's init is seized, has it enter the init's net namespace
    and rebuild there while this process forks the tree; ``wait()`` returns once it is
    done (RestoreFailed if it failed), before the tree's processes are rebuilt."""

    def __init__(self):
        from lxc_cr.resources.namespaces import Beside
        self.helper = Beside(None)
        self.helper.send(preload_messages)
        self._started = self._done = False

    def start(self, pid: int, records) -> None:
        self.helper.send(_restore_in, pid, {k: list(records.get(k, ())) for k in RECORDS},
                         what=f"rebuild in the net namespace of pid {pid}")
        self.helper.done()
        self._started = True

    def wait(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self.helper.take()
            if self._started:
                self.helper.take()
        except OperationFailed as e:
            raise RestoreFailed(str(e)) from None


def _restore_in(pid: int, records) -> None:
    """restore() in the net namespace of ``pid`` (the helper of Rebuild enters it)."""
    from lxc_cr.kernel import sys as ksys
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        ksys.setns(fd, ksys.CLONE_NEWNET)
    finally:
        os.close(fd)
    restore(records)


def _request(msg, msg_type: int, flags: int, what: str, exist_ok: bool = False):
    """Send ``msg`` in the calling thread's namespace; returns the reply to a GET.  A
    refusal raises RestoreFailed("WHAT: strerror"); with ``exist_ok``, EEXIST (the object
    is already there) returns None."""
    try:
        return netlink.rtnl_request(msg, msg_type, flags, what)
    except OSError as e:
        if exist_ok and e.errno == errno.EEXIST:
            return None
        raise RestoreFailed(e.strerror) from None


def _ifinfmsg(index: int, flags: int = 0, change: int = 0, attrs=()):
    """struct ifinfomsg of device ``index``: set the IFF_* ``flags`` among ``change``."""
    msg = _msg("ifinfmsg")()
    msg["index"], msg["flags"], msg["change"] = index, flags, change
    msg["attrs"] = list(attrs)
    return msg


def _links(links: dict, confs: dict) -> dict[int, int]:
    """Create or reconcile every device; returns recorded ifindex -> actual ifindex."""
    idx: dict[int, int] = {}
    existing = {m.get_attr("IFLA_IFNAME"): m["index"]
                for m in _rtnl_dump("ifinfmsg", netlink.RTM_GETLINK)}
    order = sorted(links.values(), key=lambda ln: (ln.kind == "macvlan", ln.index))
    for ln in order:
        conf = confs.get(ln.index)
        if ln.name in existing:
            idx[ln.index] = existing[ln.name]
            continue
        if ln.index in idx:
            continue                         # created as the peer of a veth
        kind = str(ln.kind)
        if kind == "veth":
            if conf is None or conf.peer_outside or conf.peer not in links:
                raise RestoreFailed(f"net device {ln.name}: veth whose peer is outside the "
                                    "namespace, and no device of that name exists")
            peer = links[conf.peer]
            _add_link(ln, "veth", data=[("VETH_INFO_PEER", {
                "index": peer.index, "attrs": [("IFLA_IFNAME", peer.name)]})])
            idx[peer.index] = peer.index
        elif kind == "bridge":
            _add_link(ln, "bridge")
        elif kind == "macvlan":
            lower = idx.get(conf.peer) if conf else None
            if lower is None:
                raise RestoreFailed(f"net device {ln.name}: macvlan lower device missing")
            mode = conf.macvlan_mode
            if mode not in MACVLAN_MODES.values():
                mode = MACVLAN_MODES["vepa"]         # the kernel's default
            _add_link(ln, "macvlan", [("IFLA_LINK", lower)], [("IFLA_MACVLAN_MODE", mode)])
        else:
            raise RestoreFailed(f"net device {ln.name}: {kind} device: not supported")
        idx[ln.index] = ln.index
    for ln in links.values():
        reconcile(ln, confs.get(ln.index), idx)
    return idx


def _add_link(ln, kind: str, attrs=(), data=()) -> None:
    """A device of ``kind`` with the recorded name and ifindex; ``attrs`` on its ifinfomsg,
    ``data`` its IFLA_INFO_DATA (a veth's peer: an ifinfomsg of its own, with the peer's
    ifindex and name)."""
    info = [("IFLA_INFO_KIND", kind)]
    if data:
        info.append(("IFLA_INFO_DATA", {"attrs": list(data)}))
    msg = _ifinfmsg(ln.index, attrs=[("IFLA_IFNAME", ln.name), *attrs,
                                     ("IFLA_LINKINFO", {"attrs": info})])
    _request(msg, netlink.RTM_NEWLINK, _CREATE, f"net device {ln.name}: add {kind}")


def reconcile(ln, conf, idx: dict[int, int]) -> None:
    """Make the existing device ``idx[ln.index]`` match its record: MAC, MTU, txqlen, the
    settable IFF_* flags and its bridge master (not its up state: restore() brings devices
    up after their addresses).  Used for devices created above and for devices that were
    already there (loopback; a veth moved in by a container manager)."""
    index = idx[ln.index]
    cur = _request(_ifinfmsg(index), netlink.RTM_GETLINK, 0, f"net device {ln.name}: get")
    spec = {}
    if ln.address and ln.kind != "loopback" and cur.get_attr("IFLA_ADDRESS") != ln.address:
        spec["address"] = ln.address
    if ln.mtu and cur.get_attr("IFLA_MTU") != ln.mtu:
        spec["mtu"] = ln.mtu
    if conf is not None and conf.txqlen and cur.get_attr("IFLA_TXQLEN") != conf.txqlen:
        spec["txqlen"] = conf.txqlen
    if (cur["flags"] ^ ln.flags) & IFF_SETTABLE:
        spec["flags"] = ln.flags & IFF_SETTABLE
        spec["change"] = IFF_SETTABLE
    if conf is not None and conf.master:
        master = idx.get(conf.master)
        if master is None:
            raise RestoreFailed(f"net device {ln.name}: master {conf.master} not recorded")
        if cur.get_attr("IFLA_MASTER") != master:
            spec["master"] = master
    if spec:
        attrs = [(f"IFLA_{k.upper()}", v) for k, v in spec.items()   # IFLA_ADDRESS, ...
                 if k not in ("flags", "change")]
        _request(_ifinfmsg(index, spec.get("flags", 0), spec.get("change", 0), attrs),
                 netlink.RTM_NEWLINK, 0, f"net device {ln.name}: set {sorted(spec)}")


def kernel_made(a, link) -> bool:
    """An address the kernel adds by itself when the device comes up: loopback's
    127.0.0.1/8 and ::1/128, a device's EUI-64 link-local address, dynamic (SLAAC,
    temporary) ones.  Adding them ourselves would add routes the kernel does not."""
    if not a.flags & IFA_F_PERMANENT:
        return True
    addr = a.local or a.address
    if link is not None and str(link.kind) == "loopback":
        return (addr, a.prefixlen) in (("127.0.0.1", 8), ("::1", 128))
    if a.family == AF_INET6 and link is not None and link.address and a.prefixlen == 64:
        return socket.inet_pton(AF_INET6, addr) == eui64_link_local(link.address)
    return False


def eui64_link_local(mac: str) -> bytes:
    """fe80::/64 address of a MAC (RFC 4291 appendix A: flip the U/L bit, insert ff:fe)."""
    b = bytes.fromhex(mac.replace(":", ""))
    if len(b) != 6:
        return b""
    return b"\xfe\x80" + b"\0" * 6 + bytes([b[0] ^ 2]) + b[1:3] + b"\xff\xfe" + b[3:]


def _add_addr(a, idx, link=None) -> None:
    """Add address ``a`` unless the kernel makes it.  Without IFA_LOCAL (IPv6 records) the
    kernel takes IFA_ADDRESS as the local address."""
    if kernel_made(a, link):
        return
    msg = _msg("ifaddrmsg")()
    msg["family"], msg["prefixlen"], msg["scope"] = a.family, a.prefixlen, a.scope
    msg["index"] = idx[a.index]
    extra = a.flags & ~IFA_F_PERMANENT & 0xFFFF & ~0x40   # not IFA_F_TENTATIVE
    msg["attrs"] = [(name, value) for name, value in (
        ("IFA_ADDRESS", a.address or a.local), ("IFA_LOCAL", a.local),
        ("IFA_BROADCAST", a.broadcast), ("IFA_LABEL", a.label), ("IFA_FLAGS", extra))
        if value]
    _request(msg, netlink.RTM_NEWADDR, _CREATE,
             f"address {a.address}/{a.prefixlen} on device index {a.index}", exist_ok=True)


def _route_msg(r, idx):
    """The rtmsg adding route ``r``: its table in RTA_TABLE (the u8 field holds only ids
    below 256; the kernel takes the attribute), devices by their restored ifindex."""
    msg = _msg("rtmsg")()
    for k in ("family", "dst_len", "src_len", "tos", "proto", "scope", "type"):
        msg[k] = getattr(r, k)
    msg["table"] = r.table if r.table < 256 else 0
    attrs = [("RTA_TABLE", r.table)]
    for k in ("dst", "src", "gateway", "prefsrc", "priority"):
        if getattr(r, k):
            attrs.append((f"RTA_{k.upper()}", getattr(r, k)))
    if r.oif:
        attrs.append(("RTA_OIF", idx.get(r.oif, r.oif)))
    if r.metrics:
        attrs.append(("RTA_METRICS", {"attrs": [(m.name, m.value) for m in r.metrics]}))
    if r.multipath:
        attrs.append(("RTA_MULTIPATH", [
            {"oif": idx.get(p.oif, p.oif), "hops": p.hops, "flags": p.flags,
             "attrs": [("RTA_GATEWAY", p.gateway)] if p.gateway else []}
            for p in r.multipath]))
    msg["attrs"] = attrs
    return msg


def _routes(routes, idx) -> None:
    """Add the routes; a route whose gateway needs another route comes later: repeat until
    no progress."""
    todo = list(routes)
    while todo:
        failed = []
        for r in todo:
            try:
                _request(_route_msg(r, idx), netlink.RTM_NEWROUTE, _CREATE,
                         f"route {r.dst or 'default'}/{r.dst_len} table {r.table}",
                         exist_ok=True)
            except RestoreFailed as e:
                failed.append((r, e))
        if len(failed) == len(todo):
            raise failed[0][1]
        todo = [r for r, _e in failed]


def _add_rule(r) -> None:
    msg = _msg("fibmsg")()
    for k in ("family", "src_len", "dst_len", "tos", "action", "flags"):
        msg[k] = getattr(r, k)
    msg["table"] = r.table if r.table < 256 else 0     # the kernel takes FRA_TABLE
    attrs = [("FRA_PRIORITY", r.priority), ("FRA_TABLE", r.table)]
    for k in ("src", "dst", "iifname", "oifname", "fwmark", "fwmask", "goto"):
        if getattr(r, k):
            attrs.append((f"FRA_{k.upper()}", getattr(r, k)))
    if r.suppress_prefixlen != 0xFFFFFFFF:
        attrs.append(("FRA_SUPPRESS_PREFIXLEN", r.suppress_prefixlen))
    msg["attrs"] = attrs
    _request(msg, netlink.RTM_NEWRULE, _CREATE,
             f"rule priority {r.priority} table {r.table}", exist_ok=True)


def _write_sysctls(items) -> None:
    for s in items:
        try:
            with open(f"/proc/sys/net/{s.key}", "w") as f:
                f.write(s.value)
        except OSError as e:
            raise RestoreFailed(f"net sysctl {s.key} = {s.value!r}: {e.strerror}") from None


def load_nft(ruleset: str) -> None:
    """``nft -j -f -`` in the calling process's namespace."""
    try:
        r = subprocess.run([NFT, "-j", "-f", "-"], input=ruleset, capture_output=True,
                           text=True, timeout=60)
    except FileNotFoundError:
        raise RestoreFailed("the image has an nftables ruleset and nft is not installed") \
            from None
    if r.returncode != 0:
        raise RestoreFailed(f"nft -j -f: {r.stderr.strip()[:300]}")
