"""ns_net.restore: its requests on a plain netlink socket (kernel/netlink.request)
rebuild what ns_net read.  A net namespace of its own (unshare) with veth, bridge,
macvlan, IPv4/IPv6 addresses with labels, routes with metrics and multipath, more tables,
rules and two sysctls is dumped by ns_net.dump, its records go through their kinds'
encoding as an image would carry them, and ns_net.restore rebuilds them in a fresh
namespace: ``ip`` must show the same devices, addresses, routes and rules in both.  A
refused request names itself, and a restore never imports pyroute2's IPRoute (nor the
asyncio under it).  The forked helpers that read the namespace beside a dump
(ns_net.Reads) and rebuild it beside a restore (ns_net.Rebuild) give the same records and
the same namespace; a device added after the check is refused by the dump."""

from __future__ import annotations

import errno
import json
import struct
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from lxc_cr.errors import Refused, RestoreFailed
from lxc_cr.image import kinds
from lxc_cr.kernel import netlink
from lxc_cr.kernel import sys as ksys
from lxc_cr.resources import ns_net, ns_records  # noqa: F401 - registers net_link
from lxc_cr.resources.namespaces import run_in
import test_netlink
from treeutil import netns_process

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

# test_netlink's namespace (veth, bridge, macvlan, labelled and IPv6 addresses, routes with
# metrics and multipath, a second table, three rules) and more of each kind
SETUP = test_netlink.SETUP + """
ip link set mv0 mtu 1300 promisc on
ip addr add 10.200.0.9/24 dev ve0 label ve0:sec
ip addr add 10.210.0.1 peer 10.210.0.2/32 dev mv0
ip addr add fd00:201::1/64 dev br0 nodad noprefixroute
ip addr add 10.220.0.1/24 dev br0 scope link
echo 1 > /proc/sys/net/ipv4/ip_forward
echo 2 > /proc/sys/net/ipv4/conf/ve0/rp_filter
ip route add 10.205.0.0/16 dev br0 table 1000 src 10.200.0.2 tos 0x10
ip route add 10.230.0.0/16 dev ve0
ip route add 10.212.0.0/16 via 10.230.0.1
ip -6 route add fd00:302::/64 via fd00:200::2 dev ve0 metric 7
ip -6 route add fd00:301::/64 from fd00:200::/64 dev ve0
ip route add unreachable 10.207.0.0/16 table 100 proto static
ip rule add to 10.205.0.0/16 oif br0 table 1000 priority 1003 tos 0x10
ip rule add from all lookup main suppress_prefixlength 0 priority 1004
ip rule add from 10.209.0.0/16 goto 1006 priority 1005
ip rule add prohibit from 10.208.0.0/16 priority 1006
"""


@pytest.fixture
def source(cleanup_pids, tmp_path):
    return netns_process(cleanup_pids, tmp_path, SETUP)


@pytest.fixture
def target(cleanup_pids, tmp_path):
    """An empty net namespace (loopback down, as the kernel makes it)."""
    return netns_process(cleanup_pids, tmp_path, "")


def _dumped(pid: int, reads=None) -> list[tuple[str, dict]]:
    """(kind name, record) as ns_net.dump writes them for pid's namespace."""
    out = []
    writer = types.SimpleNamespace(add=lambda kind, obj: out.append((kind.name, obj)))
    ns_net.dump(types.SimpleNamespace(writer=writer),
                types.SimpleNamespace(host_pid=pid, stat=types.SimpleNamespace(comm="sleep")),
                run_in, reads)
    return out


def _records(dumped) -> dict[str, list]:
    """The records as a restore gets them: built and parsed by their kinds."""
    out: dict[str, list] = {}
    for name, obj in dumped:
        kind = kinds.by_name(name)
        out.setdefault(name, []).append(kind.parse(kind.build(obj)))
    return out


def _ip(pid: int, *args) -> list:
    r = subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "-j", *args],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"ip {args}: {r.stderr}"
    return json.loads(r.stdout or "[]")


def _sorted(items: list) -> list:
    return sorted(items, key=lambda x: json.dumps(x, sort_keys=True))


def _view(pid: int) -> dict:
    """Devices with their addresses, every route and rule, the macvlan modes and the two
    sysctls of pid's namespace; lifetimes dropped."""
    links = _ip(pid, "addr")
    for ln in links:
        for a in ln.get("addr_info", ()):
            a.pop("valid_life_time", None)
            a.pop("preferred_life_time", None)
        ln["addr_info"] = _sorted(ln.get("addr_info", []))
    kinds_ = {ln["ifname"]: [ln.get("linkinfo", {}).get("info_kind"),
                             ln.get("linkinfo", {}).get("info_data", {}).get("mode")]
              for ln in _ip(pid, "-d", "link")}
    sysctls = ["/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv4/conf/ve0/rp_filter"]
    r = subprocess.run(["nsenter", "-t", str(pid), "-n", "cat", *sysctls],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    return {
        "links": sorted(links, key=lambda ln: ln["ifindex"]),
        "kinds": kinds_,
        "routes": {fam: _sorted(_ip(pid, fam, "route", "show", "table", "all"))
                   for fam in ("-4", "-6")},
        "rules": {fam: _ip(pid, fam, "rule") for fam in ("-4", "-6")},
        "sysctls": r.stdout.split(),
    }


def _settled_view(pid: int, like: dict | None = None) -> dict:
    """The view once no address is tentative (IPv6 DAD) and, given ``like``, once it
    equals it (operstate and carrier follow the devices coming up), or after 30 s."""
    deadline = time.monotonic() + 30
    while True:
        view = _view(pid)
        settled = "tentative" not in json.dumps(view["links"])
        if settled and (like is None or view == like) or time.monotonic() > deadline:
            return view
        time.sleep(0.1)


def test_restore_rebuilds_what_was_dumped(source, target):
    dumped = _dumped(source)
    names = {name for name, _obj in dumped}
    assert {"net_link", "net_link_conf", "net_addr", "net_route", "net_rule",
            "net_sysctl"} <= names
    routes = [obj for name, obj in dumped if name == "net_route"]
    assert any(r["multipath"] for r in routes) and any(r["metrics"] for r in routes)
    assert {r["table"] for r in routes} >= {100, 254, 1000}
    before = _settled_view(source)
    run_in(target, ("net",), ns_net.restore, _records(dumped))
    after = _settled_view(target, like=before)
    assert after == before
    assert after["kinds"]["mv0"] == ["macvlan", "bridge"]
    assert after["sysctls"] == ["1", "2"]


def test_rebuild_beside_rebuilds_what_was_dumped(source, target):
    """ns_net.Rebuild, the helper a restore into a manager's container forks to rebuild
    the net namespace beside it, gives the same namespace as restoring in place."""
    before = _settled_view(source)
    with ns_net.Rebuild() as rebuild:
        rebuild.start(target, _records(_dumped(source)))
        rebuild.wait()
    assert _settled_view(target, like=before) == before


def test_rebuild_beside_reports_a_refused_request(target):
    records = _records(LO + [_route(dst="10.240.0.0", dst_len=16, oif=7)])
    with ns_net.Rebuild() as rebuild:
        rebuild.start(target, records)
        with pytest.raises(RestoreFailed) as e:
            rebuild.wait()
    assert str(e.value).startswith(f"rebuild in the net namespace of pid {target}: "
                                   "RestoreFailed: ")
    assert "10.240.0.0/16" in str(e.value), str(e.value)


def _in_new_netns(fn, *args):
    """``fn(*args)`` in a thread with a net namespace of its own (gone with the thread)."""
    out = {}

    def run():
        try:
            ksys.unshare(ksys.CLONE_NEWNET)
            out["value"] = fn(*args)
        except BaseException as e:          # noqa: BLE001 - raised in the caller
            out["error"] = e
    th = threading.Thread(target=run)
    th.start()
    th.join()
    if "error" in out:
        raise out["error"]
    return out.get("value")


LO = [("net_link", dict(index=1, name="lo", kind="loopback", flags=0x49, mtu=65536,
                        address="00:00:00:00:00:00")),
      ("net_link_conf", dict(index=1, peer=0, peer_outside=False, master=0, txqlen=1000,
                             macvlan_mode=0))]


def _route(**kw) -> tuple[str, dict]:
    r = dict(family=2, table=254, dst="", dst_len=0, src="", src_len=0, tos=0, proto=3,
             scope=0, type=1, flags=0, oif=0, gateway="", prefsrc="", priority=0,
             metrics=[], multipath=[])
    r.update(kw)
    return "net_route", r


def test_reads_beside_record_what_run_in_reads(source):
    """ns_net.Reads, the helper a dump forks to read the namespace beside it, gives the
    dump the same records as reading the namespace in place."""
    in_place = _dumped(source)
    with ns_net.Reads(source) as reads:
        assert reads.links() == run_in(source, ("net",), ns_net.read_links)
        reads.frozen()
        beside = _dumped(source, reads)
    assert beside == in_place


def test_a_device_added_after_the_check_is_refused_by_the_dump(source):
    with ns_net.Reads(source) as reads:
        root = types.SimpleNamespace(host_pid=source, stat=types.SimpleNamespace(comm="sleep"))
        assert ns_net.check(root, run_in, reads) == []
        subprocess.run(["nsenter", "-t", str(source), "-n", "ip", "link", "add", "vx0",
                        "type", "vxlan", "id", "5", "dstport", "4789"], check=True)
        reads.frozen()
        with pytest.raises(Refused) as e:
            _dumped(source, reads)
    assert str(e.value) == f"pid {source} (sleep) net device vx0: vxlan device: not supported"


def test_a_refused_request_names_itself():
    records = _records(LO + [_route(dst="10.250.0.0", dst_len=16, gateway="10.249.0.1")])
    with pytest.raises(RestoreFailed) as e:
        _in_new_netns(ns_net.restore, records)
    assert str(e.value) == "route 10.250.0.0/16 table 254: Network is unreachable"
    records = _records(LO + [("net_addr", dict(
        index=1, family=2, address="10.250.0.1", local="10.250.0.1", prefixlen=40,
        broadcast="", label="", scope=0, flags=0x80))])
    with pytest.raises(RestoreFailed,
                       match=r"^address 10\.250\.0\.1/40 on device index 1: .*Invalid"):
        _in_new_netns(ns_net.restore, records)


def test_netlink_request_gets_and_refuses():
    """A GET's answer comes back decoded; a refused request raises OSError naming it."""
    ifinfmsg = ns_net._msg("ifinfmsg")

    def get(index: int):
        req = ifinfmsg()
        req["index"] = index
        return netlink.rtnl_request(req, netlink.RTM_GETLINK, 0, f"get link {index}")
    assert _in_new_netns(get, 1).get_attr("IFLA_IFNAME") == "lo"
    with pytest.raises(OSError, match=r"^\[Errno 19\] get link 999: No such device$"):
        _in_new_netns(get, 999)
    # a bare struct ifinfomsg of lo: a change of nothing is acknowledged with no reply;
    # creating what exists is refused
    payload = struct.pack("=BxHiII", 0, 0, 1, 0, 0)
    assert _in_new_netns(netlink.request, netlink.NETLINK_ROUTE, netlink.RTM_NEWLINK, 0,
                         payload, "touch lo") == b""
    with pytest.raises(OSError) as e:
        _in_new_netns(netlink.request, netlink.NETLINK_ROUTE, netlink.RTM_NEWLINK,
                      netlink.NLM_F_CREATE | netlink.NLM_F_EXCL, payload, "create lo")
    assert e.value.errno == errno.EEXIST and e.value.strerror == "create lo: File exists"


IMPORTS = """
import json, sys
from lxc_cr.image import kinds
from lxc_cr.kernel import sys as ksys
from lxc_cr.resources import ns_net, ns_records
records = {}
for name, obj in json.load(sys.stdin):
    kind = kinds.by_name(name)
    records.setdefault(name, []).append(kind.parse(kind.build(obj)))
ksys.unshare(ksys.CLONE_NEWNET)
ns_net.preload_messages()
ns_net.restore(records)
print(json.dumps([len(ns_net.read_routes()),
                  sorted(m for m in sys.modules
                         if m == "asyncio" or m.startswith("pyroute2.iproute"))]))
"""


def test_restore_imports_no_iproute(source):
    dumped = _dumped(source)
    r = subprocess.run([sys.executable, "-c", IMPORTS], input=json.dumps(dumped),
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    routes, modules = json.loads(r.stdout)
    assert routes == len([1 for name, _obj in dumped if name == "net_route"])
    assert modules == []
