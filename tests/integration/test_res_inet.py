"""Resources: TCP listeners (IPv4 and IPv6) and UDP sockets of a server in its own net
namespace keep serving after ``tree dump`` + ``tree restore``, with the request counter
continued; an established TCP connection is refused by name before anything is frozen."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading

import pytest

from treeutil import (UNSUPPORTED_RE, Workload, assert_one_error_line,
                      assert_running_untraced, build, children, dump_kill, exe,
                      harness_fixture, read_state, status, tids, tree_pids, wait_for)

pytestmark = pytest.mark.integration

tree = harness_fixture()

CLIENT = r"""
import socket, sys
out = []
for fam, host, port in ((socket.AF_INET, "127.0.0.1", 8080), (socket.AF_INET6, "::1", 8086)):
    with socket.create_connection((host, port), timeout=10) as c:
        out.append(c.makefile().readline().strip())
for fam, host, port in ((socket.AF_INET, "127.0.0.1", 9090), (socket.AF_INET6, "::1", 9096)):
    with socket.socket(fam, socket.SOCK_DGRAM) as u:
        u.settimeout(10)
        u.sendto(b"ping", (host, port))
        out.append(u.recv(256).decode().strip())
print("\n".join(out))
"""


def launch_netns(h, argv, ready) -> Workload:
    """Like Harness.launch, with a new net namespace too (the workload brings lo up)."""
    p = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--net",
                          *map(str, argv)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
                         start_new_session=True, cwd=str(h.base))
    wl = Workload(p, 0, os.path.realpath(str(argv[0])), h.base)
    h.workloads.append(wl)

    def root():
        assert p.poll() is None, f"unshare exited with {p.returncode}: {argv}"
        kids = children(p.pid)
        return kids[0] if len(kids) == 1 and exe(kids[0]) == wl.binary else None
    wl.root = wait_for(root, f"the root of {argv} to exec")
    wait_for(ready, "the server to be ready")
    return wl


def ask(pid: int) -> list[dict]:
    """One TCP request to each listener and one datagram to each UDP port, from a client
    in pid's net namespace; the parsed answers."""
    r = subprocess.run(["nsenter", "-t", str(pid), "-n", "/usr/bin/python3", "-c", CLIENT],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"client failed: {r.stderr}"
    return [dict(kv.split("=") for kv in ln.split()) for ln in r.stdout.splitlines()]


def sock_of(pid: int, fd: int) -> socket.socket:
    from lxc_cr.resources.files import getfd
    return socket.socket(fileno=getfd(pid, fd))


def flags_of(pid: int, fd: int) -> int:
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        return int(next(ln for ln in f if ln.startswith("flags:")).split()[1], 8)


def props(pid: int, st: dict) -> dict:
    out = {}
    for k in ("t4", "t6", "u4", "u6", "un", "uc", "tc"):
        fd = int(st[k])
        with sock_of(pid, fd) as s:
            d = dict(name=s.getsockname()[:2], type=s.type & 0xF, family=s.family,
                     reuseaddr=s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR),
                     reuseport=s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT),
                     nonblock=bool(flags_of(pid, fd) & os.O_NONBLOCK))
            if s.family == socket.AF_INET6:
                d["v6only"] = s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
            if s.type & 0xF == socket.SOCK_STREAM:
                ti = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
                d["state"] = ti[0]
                d["backlog"] = struct.unpack_from("<I", ti, 28)[0] if ti[0] == 10 else 0
            try:
                d["peer"] = s.getpeername()[:2]
            except OSError:
                d["peer"] = None
        out[k] = d
    return out


def test_tcp_listeners_and_udp_continue(tree):
    binary = build("res_inet")
    d = tree.dir("inet")
    st = d / "state"
    wl = launch_netns(tree, [binary, st], lambda: "t4" in read_state(st))
    s0 = read_state(st)
    p0 = props(wl.root, s0)
    assert p0["t4"]["backlog"] == 17 and p0["t6"]["backlog"] == 33, p0
    assert p0["t4"]["nonblock"] and p0["t6"]["v6only"] and p0["t6"]["reuseport"], p0
    answers = ask(wl.root)
    assert len(answers) == 4 and all(a["boot"] == s0["boot"] for a in answers), answers
    n = max(int(a["counter"]) for a in answers)
    assert n == 4

    dump_kill(tree, wl.root, d / "img")
    root = tree.restore(d / "img")
    s1 = read_state(st)
    assert s1["boot"] == s0["boot"] and int(s1["counter"]) == n
    assert props(root, s1) == p0
    answers = ask(root)
    assert all(a["boot"] == s0["boot"] for a in answers), answers
    assert sorted(int(a["counter"]) for a in answers) == [n + 1, n + 2, n + 3, n + 4], answers
    assert_running_untraced(root)


def test_established_tcp_refused_before_freezing(tree):
    binary = build("res_inet")
    d = tree.dir("inet-hold")
    st = d / "state"
    wl = launch_netns(tree, [binary, st, "hold"], lambda: "t4" in read_state(st))
    s0 = read_state(st)
    seen, samples, stop = [], [0], threading.Event()

    def watch():
        while not stop.is_set():
            for h in tree_pids(wl.root):
                for t in tids(h):
                    try:
                        s = status(h, t)
                    except FileNotFoundError:
                        continue
                    if s["TracerPid"] != "0" or s["State"][0] in "tT":
                        seen.append(f"pid {h} tid {t}: {s['State']} {s['TracerPid']}")
            samples[0] += 1
    w = threading.Thread(target=watch, daemon=True)
    w.start()
    try:
        res = tree.cli("tree", "dump", wl.root, d / "img")
    finally:
        stop.set()
        w.join()
    assert res.rc == 1, res.describe()
    line = assert_one_error_line(res)
    m = UNSUPPORTED_RE.search(line)
    assert m and int(m.group(1)) == wl.root and m.group(2) == "res_inet", line
    assert int(m.group(3)) == int(s0["hc"]), line
    want = (f"fd {s0['hc']}: tcp connection 127.0.0.1:{s0['hport']} -> 127.0.0.1:8080: "
            f"not supported (use --tcp-established)")
    assert want in line, line
    assert not (d / "img").exists()
    assert samples[0] > 0 and seen == [], seen[:5]
    # still serving, same run
    answers = ask(wl.root)
    assert all(a["boot"] == s0["boot"] for a in answers) and len(answers) == 4
    assert_running_untraced(wl.root)


@pytest.mark.parametrize("mode", ["queued", "closewait"])
def test_queued_udp_and_close_wait_refused(tree, mode):
    binary = build("res_inet")
    d = tree.dir(f"inet-{mode}")
    st = d / "state"
    wl = launch_netns(tree, [binary, st, mode], lambda: "t4" in read_state(st))
    s0 = read_state(st)
    res = tree.cli("tree", "dump", wl.root, d / "img")
    assert res.rc == 1, res.describe()
    line = assert_one_error_line(res)
    if mode == "queued":
        want = (f"pid {wl.root} (res_inet) fd {s0['hc']}: udp socket 127.0.0.1:9191 with 4 "
                f"bytes of queued datagrams: not supported")
    else:
        want = (f"pid {wl.root} (res_inet) fd {s0['hc']}: tcp socket 127.0.0.1:{s0['hport']} "
                f"in state CLOSE_WAIT: not supported")
    assert line.endswith(want), line
    assert not (d / "img").exists()
    assert_running_untraced(wl.root)
