"""Resources: established TCP connections through TCP_REPAIR (``tree dump --tcp-established``).

A server and its client, both in one tree (own pid and net namespace, tests/workloads/
res_tcp.c), exchange a numbered stream in both directions over 127.0.0.1 (or ::1); each end
checks every record it reads, and always leaves unread bytes queued.  After a dump with
``--tcp-established`` and a restore the stream goes on with no gap or duplicate and the
server's request counter continues; without the flag the dump is refused naming the pid,
the fd and both addresses, and the tree runs on; a failure at any step of a dump leaves the
connection working.  Not covered: a peer outside the tree (see docs/support-matrix.md).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import struct
import subprocess

import pytest

from test_res_inet import launch_netns
from test_tree_faults import trace_steps
from treeutil import (LXC_CR, assert_continued,
                      assert_one_error_line, assert_running_untraced, build, children,
                      dump_kill, harness_fixture, read_state, refused_dump, wait_for,
                      wait_state)

pytestmark = pytest.mark.integration

tree = harness_fixture()

ASK = r"""
import socket, sys
with socket.create_connection((sys.argv[1], 7070), timeout=10) as c:
    print(c.makefile().readline().strip())
"""


def start(tree, label: str, mode: str = ""):
    """The workload, running until both ends have read a few records; (workload, dir,
    server state path, client state path)."""
    d = tree.dir(label)
    st, cst = d / "state", d / "state.client"
    argv = [build("res_tcp"), st] + ([mode] if mode else [])
    wl = launch_netns(tree, argv, lambda: all(
        p.exists() and int(read_state(p).get("got", 0)) >= 3 for p in (st, cst)))
    return wl, d, st, cst


def progressed(path, before: dict, records: int, what: str) -> dict:
    """Wait until the end writing ``path`` read ``records`` more records than in ``before``
    (same run: boot token), with no error."""
    want = int(before["got"]) + records
    st = wait_state(path, lambda s: "error" in s or int(s["got"]) >= want,
                    f"{what}: {records} more records read after {before['got']}", timeout=60)
    assert "error" not in st, f"{what}: the stream broke: {st['error']}"
    assert_continued(before, st, "got", what)
    return st


def ask(pid: int, host: str) -> dict:
    """One request to the server's listener from pid's net namespace: its parsed answer."""
    r = subprocess.run(["nsenter", "-t", str(pid), "-n", "/usr/bin/python3", "-c", ASK, host],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"client failed: {r.stderr}"
    return dict(kv.split("=") for kv in r.stdout.split())


def conn_props(pid: int, fd: int) -> dict:
    """What the task sees of its connection: addresses, state, TCP_NODELAY, negotiated
    options (tcpi_options, window scales), and whether its segment size is above the
    536-byte default (TCP_MAXSEG is mss_cache, also bounded by half the peer's window at
    the time it was computed, so its exact value may differ after a restore)."""
    from lxc_cr.resources.files import getfd
    with socket.socket(fileno=getfd(pid, fd)) as s:
        ti = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        return dict(name=s.getsockname()[:2], peer=s.getpeername()[:2], family=s.family,
                    state=ti[0], options=ti[5], wscale=ti[6],
                    nodelay=s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                    big_mss=s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG) > 536)


def send_queue(pid: int, fd: int) -> int:
    """Bytes in the send queue of the task's socket, sent or not, not yet acknowledged
    (SIOCOUTQ)."""
    from lxc_cr.resources.files import getfd
    with socket.socket(fileno=getfd(pid, fd)) as s:
        return struct.unpack("i", fcntl.ioctl(s.fileno(), 0x5411, b"\0" * 4))[0]


def both_props(root: int, st, cst) -> dict:
    client = children(root)
    assert len(client) == 1, f"the server should have one child (the client): {client}"
    return {"server": conn_props(root, int(read_state(st)["fd"])),
            "client": conn_props(client[0], int(read_state(cst)["fd"]))}


def connections_of(image) -> list[dict]:
    """The image's tcp_connection records (``lxc-cr inspect --json``)."""
    res = subprocess.run([LXC_CR, "inspect", image, "--json", "--section", "tcp_connection"],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert res.returncode == 0, res.stderr
    return [r["fields"] for r in json.loads(res.stdout)["records"]]



@pytest.mark.parametrize("mode", ["v4", "v6", "bulk", "lowfd"])
def test_established_connection_continues(tree, mode):
    host = "::1" if mode == "v6" else "127.0.0.1"
    wl, d, st, cst = start(tree, f"tcp-{mode}", "" if mode == "v4" else mode)
    assert ask(wl.root, host)["counter"] == "1"
    p0 = both_props(wl.root, st, cst)
    assert p0["server"]["state"] == 1 and p0["server"]["nodelay"] and not p0["client"]["nodelay"]
    assert p0["server"]["peer"] == p0["client"]["name"] and p0["server"]["big_mss"], p0
    if mode == "bulk":      # the checkpoint must find the client's send queue well filled
        wait_for(lambda: send_queue(children(wl.root)[0], int(read_state(cst)["fd"])) > 65536,
                 "the client's send queue to hold more than 64 KiB")

    dump_kill(tree, wl.root, d / "img", "--tcp-established")
    s0, c0 = read_state(st), read_state(cst)      # as the tree was at the checkpoint
    conns = connections_of(d / "img")
    by_port = {c["port"]: c for c in conns}
    assert len(conns) == 2 and set(by_port) == {7070, p0["client"]["name"][1]}, conns
    srv, cli = by_port[7070], by_port[p0["client"]["name"][1]]
    assert (srv["peer_addr"], srv["peer_port"]) == (cli["addr"], cli["port"]), conns
    # unread bytes sat in both directions at the checkpoint, and the sequence numbers
    # agree: each end received up to a point between what the other end wrote and what
    # it still holds unacknowledged
    assert srv["rcv_queue"] and cli["rcv_queue"], conns
    for a, b in ((cli, srv), (srv, cli)):
        unacked = len(bytes.fromhex(a["snd_queue"]))
        assert (b["rcv_seq"] - (a["snd_seq"] - unacked)) % 2**32 <= unacked, conns
    if mode == "bulk":      # the client wrote more than the server took: its send queue too
        assert len(bytes.fromhex(cli["snd_queue"])) > 65536, len(cli["snd_queue"])

    root = tree.restore(d / "img")
    progressed(st, s0, 50, "server after the restore")
    progressed(cst, c0, 50, "client after the restore")
    assert both_props(root, st, cst) == p0
    answer = ask(root, host)
    assert answer == {"counter": "2", "boot": s0["boot"]}, answer
    assert_running_untraced(root)


def test_established_refused_without_flag(tree):
    wl, d, st, cst = start(tree, "tcp-refused")
    s0, c0 = read_state(st), read_state(cst)
    line, m = refused_dump(tree, wl.root, d / "img")
    assert int(m.group(1)) == wl.root and m.group(2) == "res_tcp", line
    want = (f"fd {s0['fd']}: tcp connection 127.0.0.1:7070 -> 127.0.0.1:{c0['port']}: "
            f"not supported (use --tcp-established)")
    assert want in line, line
    progressed(st, s0, 20, "server after the refusal")
    progressed(cst, c0, 20, "client after the refusal")
    assert_running_untraced(wl.root)


def test_failed_or_leave_running_dump_leaves_connection_working(tree):
    wl, d, st, cst = start(tree, "tcp-faults")
    p0 = both_props(wl.root, st, cst)
    trace = d / "trace"
    s0, c0 = read_state(st), read_state(cst)
    tree.dump(wl.root, d / "img", "--tcp-established", "--leave-running",
              env={"LXC_CR_FAULT_TRACE": str(trace)})
    assert len(connections_of(d / "img")) == 2
    os.unlink(d / "img")
    progressed(st, s0, 20, "server after --leave-running")
    progressed(cst, c0, 20, "client after --leave-running")
    steps = trace_steps(trace, "dump")
    assert any(name.startswith("memory") for _, name in steps), steps   # after the sockets
    for n, name in steps:
        where = f"LXC_CR_FAULT=dump:{n} ({name})"
        s1, c1 = read_state(st), read_state(cst)
        res = tree.cli("tree", "dump", wl.root, d / "img", "--tcp-established",
                       env={"LXC_CR_FAULT": f"dump:{n}"})
        assert res.rc == 1, f"{where}: " + res.describe()
        assert_one_error_line(res)
        assert not (d / "img").exists(), where
        progressed(st, s1, 10, f"server after {where}")
        progressed(cst, c1, 10, f"client after {where}")
        assert_running_untraced(wl.root)
    assert both_props(wl.root, st, cst) == p0
    assert ask(wl.root, "127.0.0.1")["counter"] == "1"


def records(first: int, n: int) -> bytes:
    return b"".join(b"%015d\n" % k for k in range(first, first + n))


def recv_exactly(s: socket.socket, size: int) -> bytes:
    out = b""
    while len(out) < size:
        b = s.recv(size - len(out))
        assert b, f"the connection was closed after {len(out)} of {size} bytes"
        out += b
    return out


def outq(s: socket.socket) -> int:
    import fcntl
    import termios
    return struct.unpack("i", fcntl.ioctl(s.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]


def test_one_end_with_the_peer_outside_the_tree(tree):
    """Only the client end is in the tree (host net namespace); its peer is this test,
    which keeps its socket across the dump (tree killed), restores failing at every step
    before the connections leave repair mode, and the restore, and sends while the client
    is down.  One record sits unread in the client's receive queue at the checkpoint."""
    from lxc_cr.resources.files import getfd
    d = tree.dir("tcp-peer")
    st = d / "state"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(60)
        wl = tree.launch([build("res_tcp"), st, "peer", listener.getsockname()[1]])
        peer, _ = listener.accept()
    with peer:
        peer.settimeout(60)
        peer.sendall(records(0, 10))
        assert recv_exactly(peer, 9 * 16) == records(0, 9)   # record 9 stays unread
        s0 = wait_state(st, lambda s: s.get("got") == "9", "the client read 9 records")
        fd = int(s0["fd"])
        with socket.socket(fileno=getfd(wl.root, fd)) as client:
            def quiet():
                return outq(peer) == 0 and outq(client) == 0
            wait_for(quiet, "both ends' data acknowledged")
        dump_kill(tree, wl.root, d / "img", "--tcp-established")
        (conn,) = connections_of(d / "img")
        assert bytes.fromhex(conn["rcv_queue"]) == records(9, 1), conn
        assert (conn["peer_addr"], conn["peer_port"]) == peer.getsockname(), conn
        lock = conn["net_lock"]
        try:
            _one_end_down_and_back(tree, d, peer, lock)
        finally:                 # never leave a lock table in the host's namespace
            subprocess.run(["nft", "delete", "table", "inet", lock], capture_output=True,
                           check=False)
        s1 = wait_state(st, lambda s: s.get("got") == "19", "the client read 19 records")
        assert s1["boot"] == s0["boot"] and "error" not in s1, s1
        ti = peer.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        assert ti[0] == 1, f"the peer's socket left ESTABLISHED: state {ti[0]}"
    assert_running_untraced(tree.restored[-1])


def _one_end_down_and_back(tree, d, peer, lock):
    """While the client is down its network lock stays (the peer's packets are dropped, no
    reset) and the peer sends anyway; failed restores keep it; the restore lifts it and the
    peer's retransmission reaches the restored client, which answers in order."""
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True,
                            check=True).stdout.split()
    assert lock in tables, f"the network lock {lock} is gone after the kill: {tables}"
    peer.sendall(records(10, 10))           # dropped by the lock until the restore
    # a restore failing at any step up to the credentials (the connections leave repair
    # mode after them) closes the half-built connection silently: the peer keeps its own
    for n in range(1, 100):
        trace = d / f"trace-{n}"
        res = tree.cli("tree", "restore", d / "img", env={
            "LXC_CR_FAULT": f"restore:{n}", "LXC_CR_FAULT_TRACE": str(trace)})
        where = f"LXC_CR_FAULT=restore:{n}"
        assert res.rc == 1, f"{where}: " + res.describe()
        assert_one_error_line(res)
        ti = peer.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        assert ti[0] == 1, f"{where}: the peer's socket left ESTABLISHED: state {ti[0]}"
        if trace_steps(trace, "restore")[-1][1] == "credentials":
            break
    else:
        raise AssertionError("no restore step named credentials")
    tree.restore(d / "img")
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True,
                            check=True).stdout.split()
    assert lock not in tables, f"the restore left the network lock {lock}"
    assert recv_exactly(peer, 10 * 16) == records(9, 10)


def test_lxc_container_connection_survives(lxc_container, tmp_path):
    """#7 in a busybox LXC container: the server and its client run inside it; after
    ``lxc-cr lxc checkpoint --stop --tcp-established`` and ``lxc-cr lxc restore`` the stream
    goes on and the server's request counter continues."""
    from test_lxc_checkpoint import rootfs, run
    ct = lxc_container("tcp")
    fs = rootfs(ct)
    shutil.copy(build("res_tcp", "-static"), fs / "bin" / "res_tcp")
    (fs / "etc" / "init.d" / "rcS").write_text(
        "#!/bin/sh\n/bin/syslogd\n/bin/res_tcp /tmp/state </dev/null >/dev/null 2>&1 &\n")
    st, cst = fs / "tmp" / "state", fs / "tmp" / "state.client"
    ct.start()
    wait_for(lambda: all(p.exists() and int(read_state(p).get("got", 0)) >= 3
                         for p in (st, cst)), "the stream in the container", timeout=60)
    assert ask(ct.init_pid(), "127.0.0.1")["counter"] == "1"
    ckpt = tmp_path / "ckpt"
    res = run(LXC_CR, "lxc", "checkpoint", ct.name, ckpt, "-P", ct.lxcpath, "--stop",
              "--tcp-established")
    assert res.returncode == 0, res.stderr
    s0, c0 = read_state(st), read_state(cst)
    conns = connections_of(ckpt / "lxc-cr.img")
    assert len(conns) == 2 and all(c["rcv_queue"] for c in conns), conns
    res = run(LXC_CR, "lxc", "restore", ct.name, ckpt, "-P", ct.lxcpath)
    assert res.returncode == 0, res.stderr
    progressed(st, s0, 50, "server in the restored container")
    progressed(cst, c0, 50, "client in the restored container")
    answer = ask(ct.init_pid(), "127.0.0.1")
    assert answer == {"counter": "2", "boot": s0["boot"]}, answer


def test_dumper_killed_mid_dump_leaves_connections_working(tree):
    """lxc-cr SIGKILLed while the connections are in repair mode and locked (held after the
    image is written): its watchdog switches repair off and lifts the lock, and the stream
    goes on once the kernel has detached the tree."""
    wl, d, st, cst = start(tree, "tcp-crash")
    trace = d / "trace"
    tree.dump(wl.root, d / "img", "--tcp-established", "--leave-running",
              env={"LXC_CR_FAULT_TRACE": str(trace)})
    os.unlink(d / "img")
    n = next(n for n, name in trace_steps(trace, "dump") if name == "written")
    trace.unlink()
    env = dict(os.environ, LXC_CR_FAULT_HOLD=f"dump:{n}", LXC_CR_FAULT_TRACE=str(trace))
    env.pop("LXC_CR_FAULT", None)
    with open(d / "cli.out", "w") as out:
        cli = subprocess.Popen([LXC_CR, "tree", "dump", str(wl.root), str(d / "img"),
                                "--tcp-established"], stdin=subprocess.DEVNULL, stdout=out,
                               stderr=out, env=env)
    try:
        wait_for(lambda: trace.exists() and any(
            name == "written" for _, name in trace_steps(trace, "dump")),
            "the dump to hold after writing the image", timeout=60)
        watchdogs = [p for p in children(cli.pid)
                     if b"lxc_cr.resources.tcp_lock" in open(f"/proc/{p}/cmdline", "rb").read()]
        assert len(watchdogs) == 1, f"no tcp watchdog among {children(cli.pid)}"
        s0, c0 = read_state(st), read_state(cst)
    finally:
        cli.kill()
        cli.wait()
    # the watchdog, orphaned to us (the harness is a child subreaper), acts and exits
    wait_for(lambda: os.waitpid(watchdogs[0], os.WNOHANG)[0] == watchdogs[0],
             "the watchdog to finish", timeout=60)
    progressed(st, s0, 20, "server after the dumper died")
    progressed(cst, c0, 20, "client after the dumper died")
    tables = subprocess.run(["nsenter", "-t", str(wl.root), "-n", "nft", "list", "tables"],
                            capture_output=True, text=True, check=True).stdout
    assert "lxc_cr_tcp" not in tables, tables
    assert_running_untraced(wl.root)


def test_libvirt_domain_connection_survives(libvirt_domain, tmp_path):
    """The server and its client as a libvirt LXC domain (host root, own net namespace):
    ``lxc-cr virsh save --tcp-established`` + ``virsh restore``, the stream goes on."""
    from conftest import domain_xml
    from lxc_cr.runtime.libvirt import _status_init_pid
    st, cst = tmp_path / "state", tmp_path / "state.client"
    xml = domain_xml("{name}", init=str(build("res_tcp")), initargs=(str(st),)).replace(
        "<devices>", "<features><privnet/></features>\n  <devices>")
    dom = libvirt_domain("tcp", persistent=True, xml=xml)
    wait_for(lambda: all(p.exists() and int(read_state(p).get("got", 0)) >= 3
                         for p in (st, cst)), "the stream in the domain", timeout=60)
    assert ask(_status_init_pid(dom.name(), timeout=10), "127.0.0.1")["counter"] == "1"
    img = tmp_path / "dom.save"
    res = subprocess.run([LXC_CR, "virsh", "save", dom.name(), img, "--tcp-established"],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert res.returncode == 0, res.stderr
    s0, c0 = read_state(st), read_state(cst)
    conns = connections_of(img)
    assert len(conns) == 2 and all(c["rcv_queue"] for c in conns), conns
    res = subprocess.run([LXC_CR, "virsh", "restore", img], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=120)
    assert res.returncode == 0, res.stderr
    progressed(st, s0, 50, "server in the restored domain")
    progressed(cst, c0, 50, "client in the restored domain")
    answer = ask(_status_init_pid(dom.name(), timeout=10), "127.0.0.1")
    assert answer == {"counter": "2", "boot": s0["boot"]}, answer
