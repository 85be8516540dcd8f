"""Namespaces: a mini-container (own pid, mount, UTS, IPC and net namespaces) survives
``tree dump`` + ``tree restore`` with its namespace state.

The container is ``unshare --pid --fork --mount-proc --uts --ipc --net --mount`` running
tests/workloads/ns_setup.sh, which sets hostname alpha / domainname lab, a veth pair kept
inside the namespace (IPv4 + IPv6 addresses, an extra route, a rule with its own table),
ip_forward and rp_filter, an nftables table, a tmpfs on /mnt (so nothing is created on the
host's filesystem) with a tmpfs on /mnt/scratch holding a 10 MiB file and a symlink, the
namespace's mqueue fs mounted on /mnt/scratch/mq and a POSIX queue with two messages; then
it execs ns_counter.  Everything observed from inside (nsenter into the restored root's
namespaces) must equal what was observed before the dump.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from treeutil import (WORKLOADS, Workload, assert_continued, build, children, dump_kill, exe,
                      harness_fixture, read_state, wait_changed, wait_for, wait_state)

pytestmark = pytest.mark.integration

tree = harness_fixture()

SETUP = WORKLOADS / "ns_setup.sh"
MQ = WORKLOADS / "ns_mq.py"
UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--uts", "--ipc", "--net", "--mount"]


def launch(h, state, extra=()) -> Workload:
    counter = build("ns_counter")
    p = subprocess.Popen([*UNSHARE, "/bin/sh", str(SETUP), str(state), str(counter), *extra],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True,
                         cwd=str(h.base))
    wl = Workload(p, 0, str(counter), h.base)
    h.workloads.append(wl)

    def root():
        if p.poll() is not None:
            raise AssertionError(f"the mini-container's setup failed (exit {p.returncode})")
        kids = children(p.pid)
        return kids[0] if len(kids) == 1 and exe(kids[0]) == str(counter) else None
    wl.root = wait_for(root, "the mini-container's workload to start", timeout=60)
    wait_state(state, lambda st: int(st.get("counter", 0)) >= 2, "the counter to run")
    return wl


def inside(pid: int, *argv, kinds=("-n", "-m", "-u", "-i")) -> str:
    r = subprocess.run(["nsenter", "-t", str(pid), *kinds, *map(str, argv)],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"nsenter {argv}: {r.stderr}"
    return r.stdout


def _clean_addr(links: list) -> list:
    for ln in links:
        for a in ln.get("addr_info", ()):
            a.pop("valid_life_time", None)
            a.pop("preferred_life_time", None)
        ln["addr_info"] = sorted(ln.get("addr_info", ()), key=lambda a: json.dumps(a))
    return sorted(links, key=lambda ln: ln["ifname"])


def _sorted(items: list) -> list:
    return sorted(items, key=lambda x: json.dumps(x, sort_keys=True))


def net_view(pid: int) -> dict:
    """ip addr / route / rule of the namespace, volatile fields (lifetimes) dropped; waits
    until no address is tentative (IPv6 DAD after the devices came up)."""
    def settled():
        out = inside(pid, "ip", "-j", "addr", kinds=("-n",))
        return None if "tentative" in out else out
    addr = wait_for(settled, "IPv6 duplicate address detection to finish", timeout=30)
    routes = {}
    for fam, tables in (("-4", ("main", "100", "local")), ("-6", ("main", "local"))):
        for table in tables:
            routes[f"{fam} {table}"] = _sorted(json.loads(inside(
                pid, "ip", "-j", fam, "route", "show", "table", table, kinds=("-n",)) or "[]"))
    return {
        "addr": _clean_addr(json.loads(addr)),
        "route": routes,
        "rule": json.loads(inside(pid, "ip", "-j", "rule", kinds=("-n",))),
        "nft": re.sub(r"\s+", " ", inside(pid, "nft", "list", "ruleset", kinds=("-n",))),
        "sysctl": inside(pid, "sh", "-c", "cat /proc/sys/net/ipv4/ip_forward "
                         "/proc/sys/net/ipv4/conf/ve0/rp_filter", kinds=("-n",)).split(),
    }


def mount_view(pid: int) -> list:
    """Lines of mountinfo below /mnt and /proc with ids and device numbers dropped."""
    out = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == "/proc" or fields[4] == "/mnt" or fields[4].startswith("/mnt/s"):
                out.append(" ".join(fields[3:]))
    return out


def scratch_view(pid: int) -> dict:
    root = f"/proc/{pid}/root/mnt/scratch"
    st = os.stat(f"{root}/data")
    return {
        "sha256": inside(pid, "sha256sum", "/mnt/scratch/data", kinds=("-m",)).split()[0],
        "size": st.st_size, "mode": oct(st.st_mode),
        "link": os.readlink(f"{root}/link"),
        "root_mode": oct(os.stat(root).st_mode),
        "names": sorted(os.listdir(root)),
    }


def views(pid: int) -> dict:
    return {
        "hostname": inside(pid, "hostname", kinds=("-u",)).strip(),
        "domainname": inside(pid, "domainname", kinds=("-u",)).strip(),
        "net": net_view(pid),
        "mounts": mount_view(pid),
        "scratch": scratch_view(pid),
        "mq_attrs": json.loads(inside(pid, "/usr/bin/python3", MQ, "attrs", "ns-test",
                                      kinds=("-i",))),
    }


def test_minicontainer_namespaces_survive(tree):
    d = tree.dir("mini")
    state = d / "state"
    wl = launch(tree, state)
    before = views(wl.root)
    assert before["hostname"] == "alpha" and before["domainname"] == "lab"
    assert before["mq_attrs"]["curmsgs"] == 2
    assert before["scratch"]["size"] == 10 << 20
    s0 = read_state(state)

    image = d / "img"
    dump_kill(tree, wl.root, image)
    s_dumped = read_state(state)
    root = tree.restore(image)
    s1 = wait_changed(state, s_dumped)
    assert_continued(s_dumped, s1, what="mini-container counter")
    assert s1["boot"] == s0["boot"] and s1["hostname"] == "alpha"

    after = views(root)
    for key in ("hostname", "domainname", "mounts", "scratch", "mq_attrs"):
        assert after[key] == before[key], f"{key}: {before[key]!r} -> {after[key]!r}"
    for key in before["net"]:
        assert after["net"][key] == before["net"][key], (
            f"net {key}: {before['net'][key]!r}\n -> {after['net'][key]!r}")
    msgs = json.loads(inside(root, "/usr/bin/python3", MQ, "read", "ns-test", kinds=("-i",)))
    assert msgs == [[5, "second, higher priority"], [1, "first message"]]

    res = tree.cli("inspect", "--json", image)
    assert res.rc == 0, res.describe()
    ns = json.loads(res.out)["namespaces"]
    assert ns["uts"]["hostname"] == "alpha" and ns["uts"]["domainname"] == "lab"
    addrs = {a["address"] or a["local"] for a in ns["net"]["addresses"]}
    assert {"10.200.0.1", "fd00:200::1", "10.200.0.2"} <= addrs, addrs
    assert any(m["mount_point"] == "/mnt/scratch" and m["fstype"] == "tmpfs"
               for m in ns["mnt"]["mounts"])
    assert [q["name"] for q in ns["ipc"]["mqueues"]] == ["ns-test"]


def test_fuse_mount_refused_naming_the_mount_point(tree):
    d = tree.dir("fuse")
    state = d / "state"
    wl = launch(tree, state, extra=("fuse",))
    res = tree.cli("check", wl.root)
    assert res.rc == 1, res.describe()
    want = f"pid {wl.root} (ns_counter) mount /mnt/scratch/fuse: fuse mount: not supported"
    assert want in res.out + res.err, res.describe()
    res = tree.cli("tree", "dump", wl.root, d / "img")
    assert res.rc == 1, res.describe()
    assert want in res.err, res.describe()
    assert not os.path.exists(d / "img")
    s0 = read_state(state)
    assert_continued(s0, wait_changed(state, s0), what="counter after the refused dump")
