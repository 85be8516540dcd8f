"""kernel/netlink.py: the plain netlink dumps that checks and dumps read a namespace with.
Against the real kernel, each reader must give exactly what pyroute2's own sockets
(IPRoute, DiagSocket) give for the same objects: a net namespace of its own (unshare) with
veth, bridge, macvlan, addresses with labels and IPv6, routes with metrics, multipath and
a second table, and rules; unix sockets of every shape sock_diag reports; nftables tables
through nfnetlink."""

from __future__ import annotations

import os
import socket
import struct
import subprocess

import pytest

from lxc_cr.kernel import netlink
from lxc_cr.resources import ns_net, unix_sockets
from lxc_cr.resources.namespaces import run_in
from treeutil import netns_process

pytestmark = pytest.mark.integration

SETUP = """
ip link set lo up
ip link add ve0 type veth peer name ve1
ip link add br0 type bridge
ip link set ve1 master br0
ip link add mv0 link ve0 type macvlan mode bridge
ip link set ve0 address 02:00:00:c0:00:01 mtu 1400 txqueuelen 500
ip addr add 10.200.0.1/24 brd + dev ve0 label ve0:1
ip addr add fd00:200::1/64 dev ve0 nodad
ip addr add 10.200.0.2/24 dev br0
for d in ve0 ve1 br0 mv0; do ip link set $d up; done
ip route add 10.201.0.0/16 via 10.200.0.2 dev ve0 mtu 1300 advmss 1200
ip route add 10.202.0.0/16 via 10.200.0.2 dev ve0 table 100 metric 5
ip route add 10.203.0.0/16 nexthop via 10.200.0.2 dev ve0 weight 2 nexthop via 10.200.0.3 dev br0
ip -6 route add fd00:300::/64 via fd00:200::2 dev ve0
ip route add blackhole 10.204.0.0/16
ip rule add from 10.200.0.0/24 table 100 priority 1000
ip rule add fwmark 0x5/0xff iif ve0 table 100 priority 1001
ip -6 rule add to fd00:300::/64 table 100 priority 1002
"""


@pytest.fixture
def netns(cleanup_pids, tmp_path):
    """A sleeping process in a configured net namespace of its own; its pid."""
    return netns_process(cleanup_pids, tmp_path, SETUP)


def _via_iproute(msg: str, msg_type: int, family: int = 0) -> list:
    """What ns_net read through pyroute2's IPRoute before (the same messages, decoded by
    pyroute2's socket)."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        get = {"ifinfmsg": lambda: ipr.get_links(),
               "ifaddrmsg": lambda: ipr.get_addr(),
               "rtmsg": lambda: ipr.get_routes(family=family),
               "fibmsg": lambda: ipr.get_rules(family=family)}[msg]
        return list(get())


def _read_all() -> list:
    return [ns_net.read_links(), ns_net.read_addrs(), ns_net.read_routes(),
            ns_net.read_rules()]


def test_rtnetlink_reads_equal_pyroute2s(netns, monkeypatch):
    ours = run_in(netns, ("net",), _read_all)
    monkeypatch.setattr(ns_net, "_rtnl_dump", _via_iproute)
    theirs = run_in(netns, ("net",), _read_all)
    assert ours == theirs
    links, addrs, routes, rules = ours
    assert {ln["name"]: ln["kind"] for ln, _c in links} == {
        "lo": "loopback", "ve0": "veth", "ve1": "veth", "br0": "bridge", "mv0": "macvlan"}
    assert len(addrs) >= 4 and any(a["label"] == "ve0:1" for a in addrs)
    assert {r["table"] for r in routes} >= {100, 254}
    assert any(r["multipath"] for r in routes) and any(r["metrics"] for r in routes)
    assert sorted(r["priority"] for r in rules) == [1000, 1001, 1002]


def _unix_pyroute2(inodes: set[int]) -> dict[int, dict]:
    from pyroute2.netlink.diag import DiagSocket
    out = {}
    with DiagSocket() as ds:
        ds.bind()
        for m in ds.get_sock_stats(family=socket.AF_UNIX):
            if m["udiag_ino"] not in inodes:
                continue
            vfs = m.get_attr("UNIX_DIAG_VFS")
            icons = bytes.fromhex((m.get_attr("UNIX_DIAG_ICONS") or "").replace(":", ""))
            out[m["udiag_ino"]] = dict(
                type=m["udiag_type"], state=m["udiag_state"],
                peer=m.get_attr("UNIX_DIAG_PEER") or 0,
                vfs=(vfs["udiag_vfs_ino"], vfs["udiag_vfs_dev"] >> 20,
                     vfs["udiag_vfs_dev"] & 0xFFFFF) if vfs else None,
                icons=[i for (i,) in struct.iter_unpack("=I", icons)],
                shutdown=m.get_attr("UNIX_DIAG_SHUTDOWN") or 0,
                name=m.get_attr("UNIX_DIAG_NAME") or "")
    return out


def test_unix_sock_diag_equals_pyroute2s(tmp_path):
    socks = []

    def mk(kind):
        s = socket.socket(socket.AF_UNIX, kind)
        socks.append(s)
        return s
    try:
        lst = mk(socket.SOCK_STREAM)
        lst.bind(str(tmp_path / "listener"))
        lst.listen(4)
        waiting = mk(socket.SOCK_STREAM)
        waiting.connect(str(tmp_path / "listener"))        # in the accept queue: an icon
        dg = mk(socket.SOCK_DGRAM)
        dg.bind(f"\0lxccr-test-{os.getpid()}")             # abstract name
        a, b = socket.socketpair()
        socks += [a, b]
        a.shutdown(socket.SHUT_WR)
        inodes = {os.fstat(s.fileno()).st_ino for s in socks}
        ours = {i: e for i, e in unix_sockets._diag_all().items() if i in inodes}
        theirs = _unix_pyroute2(inodes)
        assert set(ours) == set(theirs) == inodes
        for ino, e in ours.items():
            t = dict(theirs[ino])
            # pyroute2 strips the leading NUL of an abstract name; sock_diag keeps it
            if e["name"].startswith("@"):
                assert t["name"] == e["name"][1:]
                t["name"] = e["name"]
            assert e == t, ino
        lino = os.fstat(lst.fileno()).st_ino
        assert ours[lino]["name"] == str(tmp_path / "listener")
        assert ours[lino]["state"] == unix_sockets.TCP_LISTEN and len(ours[lino]["icons"]) == 1
        assert ours[os.fstat(dg.fileno()).st_ino]["name"] == f"@lxccr-test-{os.getpid()}"
        assert ours[os.fstat(a.fileno()).st_ino]["peer"] == os.fstat(b.fileno()).st_ino
        assert ours[os.fstat(a.fileno()).st_ino]["shutdown"] == 2     # SEND_SHUTDOWN
    finally:
        for s in socks:
            s.close()


def test_a_refused_dump_names_itself():
    # sock_diag has no handler for this family: the kernel answers with an error
    with pytest.raises(OSError, match="test dump: "):
        netlink.dump(netlink.NETLINK_SOCK_DIAG, netlink.SOCK_DIAG_BY_FAMILY,
                     bytes([socket.AF_APPLETALK, 0, 0, 0]) + bytes(20), "test dump")


def test_attrs_walks_padding_and_masks_flags():
    buf = (b"\x05\x00\x01\x00" + b"a" + b"\0" * 3          # type 1, 1 byte, padded
           + b"\x08\x00\x02\x80" + b"bcde"                 # type 2 with NLA_F_NESTED
           + b"\x03\x00")                                 # a truncated header: ignored
    assert netlink.attrs(buf) == {1: b"a", 2: b"bcde"}


def test_nftables_tables_asked_through_nfnetlink(netns):
    """A namespace without a table is empty without running nft; with one (any family),
    nft lists it."""
    assert run_in(netns, ("net",), ns_net._nft_tables) is False
    assert run_in(netns, ("net",), ns_net.read_nft) == ""
    subprocess.run(["nsenter", "-t", str(netns), "-n", "nft", "add", "table", "ip", "lxccrt"],
                   check=True)
    assert run_in(netns, ("net",), ns_net._nft_tables) is True
    assert '"name":"lxccrt"' in run_in(netns, ("net",), ns_net.read_nft)
