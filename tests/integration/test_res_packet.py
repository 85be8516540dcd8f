"""Resources: AF_PACKET sockets of a program in its own net namespace (a filtered
SOCK_DGRAM one bound to lo, as udhcpc holds, and a SOCK_RAW ETH_P_ALL one) go on receiving
after ``tree dump`` + ``tree restore``, with the same interface, protocol, options and
filter; rings, fanout groups, memberships and queued frames are refused by name before
anything is frozen."""

from __future__ import annotations

import os
import re
import socket
import subprocess

import pytest
from treeutil import (
    UNSUPPORTED_RE,
    assert_continued,
    assert_one_error_line,
    assert_running_untraced,
    build,
    dump_kill,
    harness_fixture,
    read_state,
    wait_state,
)

pytestmark = pytest.mark.integration

tree = harness_fixture()

SEND = r"""
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port in sys.argv[1:]:
    u.sendto(b"x" * 20, ("127.0.0.1", int(port)))
"""


def send(pid: int, *ports: int) -> None:
    r = subprocess.run(["nsenter", "-t", str(pid), "-n", "/usr/bin/python3", "-c", SEND,
                        *map(str, ports)], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def props(pid: int, fd: int) -> dict:
    from lxc_cr.resources.files import getfd
    with socket.socket(fileno=getfd(pid, fd)) as s:
        name = s.getsockname()
        out = dict(ifname=name[0], bound_proto=name[1], type=s.type & 0xF,
                   proto=s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL),
                   priority=s.getsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY),
                   auxdata=s.getsockopt(263, 8),                     # PACKET_AUXDATA
                   rcvbuf=s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        flags = int(next(ln for ln in f if ln.startswith("flags:")).split()[1], 8)
    out["nonblock"] = bool(flags & os.O_NONBLOCK)
    out["cloexec"] = bool(flags & 0o2000000)
    return out


def counts(st: dict) -> tuple[int, int]:
    return int(st["matched"]), int(st["raw"])


def test_packet_sockets_keep_receiving_through_filter(tree):
    binary = build("res_packet")
    d = tree.dir("packet")
    st = d / "state"
    wl = tree.launch([binary, st], lambda: "pd" in read_state(st), unshare=("--net",))
    s0 = read_state(st)
    pd, pr = int(s0["pd"]), int(s0["pr"])
    p0 = {"pd": props(wl.root, pd), "pr": props(wl.root, pr)}
    assert p0["pd"]["ifname"] == "lo" and p0["pd"]["type"] == socket.SOCK_DGRAM, p0
    assert p0["pd"]["nonblock"] and p0["pd"]["auxdata"] == 1 and p0["pd"]["priority"] == 3, p0
    assert p0["pr"]["bound_proto"] == 0x0003 and p0["pr"]["proto"] == 0, p0   # ETH_P_ALL

    send(wl.root, 6767, 6768, 6767)         # the filter passes 6767 only
    s1 = wait_state(st, lambda s: counts(s)[0] == 2 and counts(s)[1] >= 3, "frames counted")
    dump_kill(tree, wl.root, d / "img")
    m1, r1 = counts(read_state(st))
    assert m1 == 2

    root = tree.restore(d / "img")
    assert {"pd": props(root, pd), "pr": props(root, pr)} == p0
    send(root, 6768, 6767, 6768, 6768, 6767)
    s2 = wait_state(st, lambda s: counts(s)[0] == m1 + 2 and counts(s)[1] >= r1 + 5,
                    "frames counted after the restore")
    assert_continued(s1, s2, "matched", "packet sockets")
    send(root, 6768, 6768)
    s3 = wait_state(st, lambda s: counts(s)[1] >= counts(s2)[1] + 2, "raw frames")
    assert counts(s3)[0] == m1 + 2, "the filter did not drop port 6768 after the restore"
    assert_running_untraced(root)


@pytest.mark.parametrize("mode, what", [
    ("ring", r"packet raw socket \(protocol 0x0000\) with a PACKET_RX_RING \(mmap'ed ring\)"),
    ("fanout", r"packet raw socket \(protocol 0x0800 on lo\) in a PACKET_FANOUT group"),
    ("member", r"packet raw socket \(protocol 0x0000\) with 1 PACKET_ADD_MEMBERSHIP membership\(s\)"),
    ("queued", r"packet dgram socket \(protocol 0x0800 on lo\) with queued frames"),
])
def test_packet_socket_refused_by_name(tree, mode, what):
    binary = build("res_packet")
    d = tree.dir(f"packet-{mode}")
    st = d / "state"
    wl = tree.launch([binary, st, mode], lambda: "pd" in read_state(st), unshare=("--net",))
    s0 = read_state(st)
    res = tree.cli("tree", "dump", wl.root, d / "img")
    assert res.rc == 1, res.describe()
    line = assert_one_error_line(res)
    m = UNSUPPORTED_RE.search(line)
    assert m and int(m.group(1)) == wl.root and m.group(2) == "res_packet", line
    assert int(m.group(3)) == int(s0["hc"]), line
    assert re.fullmatch(what, m.group(4)), line
    assert not (d / "img").exists()
    assert_running_untraced(wl.root)


# --- a stock busybox container whose udhcpc holds its packet socket ------------------------

def udhcpc_packet_socket(init: int):
    """(host pid of the container's udhcpc, its fd, ifindex) once it holds a bound packet
    socket (/proc/PID/net/packet: sk RefCnt Type Proto Iface R Rmem User Inode); None before."""
    pidns = os.stat(f"/proc/{init}/ns/pid").st_ino
    with open(f"/proc/{init}/net/packet") as f:
        bound = {int(c[8]): int(c[4]) for c in (ln.split() for ln in list(f)[1:]) if len(c) >= 9}
    for p in os.listdir("/proc"):
        try:
            if not p.isdigit() or os.stat(f"/proc/{p}/ns/pid").st_ino != pidns:
                continue
            with open(f"/proc/{p}/comm") as f:
                if f.read().strip() != "udhcpc":
                    continue
            for fd in os.listdir(f"/proc/{p}/fd"):
                m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(f"/proc/{p}/fd/{fd}"))
                if m and bound.get(int(m.group(1))):
                    return int(p), int(fd), bound[int(m.group(1))]
        except OSError:
            continue
    return None


def test_stock_busybox_container_with_udhcpc(lxc_container, tmp_path):
    """udhcpc (Debian 12's busybox 1.35) holds a SOCK_DGRAM ETH_P_IP socket bound to eth0,
    without a BPF filter (busybox disabled it); it is bound to eth0's new ifindex after the
    restore, with the same (empty) filter."""
    from test_lxc_checkpoint import VENV_BIN, processes, run, wait_for

    from lxc_cr.resources.files import getfd
    from lxc_cr.resources.packet_sockets import _get_filter
    ct = lxc_container("udhcpc", start=True)          # template config and rcS unchanged
    pid, fd, _ = wait_for(lambda: udhcpc_packet_socket(ct.init_pid()), timeout=60,
                          what="udhcpc to hold its packet socket")
    before = processes(ct)
    mine = getfd(pid, fd)
    try:
        prog = _get_filter(mine, pid)
    finally:
        os.close(mine)
    r = run(VENV_BIN / "lxc-cr", "lxc", "checkpoint", ct.name, tmp_path / "d", "--stop",
            "-P", ct.lxcpath)
    assert r.returncode == 0, r.stderr
    r = run(VENV_BIN / "lxc-cr", "lxc", "restore", ct.name, tmp_path / "d", "-P", ct.lxcpath)
    assert r.returncode == 0, r.stderr
    init = ct.init_pid()
    got = udhcpc_packet_socket(init)
    assert got is not None and got[1] == fd, got
    eth0 = subprocess.run(["nsenter", "-t", str(init), "-n", "ip", "-o", "link", "show", "eth0"],
                          capture_output=True, text=True, check=True).stdout
    assert got[2] == int(eth0.split(":")[0]), (got, eth0)
    mine = getfd(got[0], fd)
    try:
        assert _get_filter(mine, got[0]) == prog, "udhcpc's BPF filter was not restored"
    finally:
        os.close(mine)
    assert processes(ct) == before
    ct.stop()
