"""Resources: unix sockets after ``tree dump`` + ``tree restore``.

- socketpairs with unread stream bytes (both directions) and unread datagrams;
- a server that accept()ed two clients over a path socket (stream, seqpacket), numbered
  records queued unread both ways on every end: no gap and no duplicate after the restore,
  getsockname/getpeername still the listener's path; a third client left in the accept
  queue is accepted after the restore;
- datagram senders connect()ed to a bound receiver (the syslog case) with datagrams queued
  on it: every sender's sequence continues without gap or duplicate;
- a client of a listener outside the tree (run by the test, same filesystem): reconnected
  at the restore, its numbered exchange continues; refused while a record is in flight;
- ends whose peer closed (a socketpair, a client of a server that closed) keep their data
  and then EOF; a seqpacket pair half shut down (SHUT_WR) stays so;
- a queue holding file descriptors (SCM_RIGHTS) is refused, and the tree runs on;
- a glibc syslog() client connected to busybox syslogd's /dev/log in an LXC container:
  after ``lxc-cr lxc checkpoint --stop`` + ``lxc restore`` every numbered message is in
  /var/log/messages once, in order.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from treeutil import (LXC_CR, UNSUPPORTED_RE, all_pids_with_exe, assert_continued,
                      assert_one_error_line, assert_running_untraced, build, dump_kill,
                      harness_fixture, read_state, wait_for, wait_state)

pytestmark = pytest.mark.integration

tree = harness_fixture()


def test_socketpair_queues_survive(tree):
    binary = build("res_unixpair")
    d = tree.dir("unixpair")
    st, go = d / "state", d / "go"
    wl = tree.launch([binary, st, go], ready=lambda: int(read_state(st).get("counter", 0)) >= 3)
    dump_kill(tree, wl.root, d / "img")
    before = read_state(st)
    assert before["result"] == "waiting"
    tree.restore(d / "img")
    go.write_text("go\n")
    after = wait_state(st, lambda s: s.get("result") not in (None, "waiting"),
                       "the program to read its queues")
    assert after["result"] == "ok", after["got"]
    assert after["got"] == "hello-stream|back|d1,d2,d3"
    assert_continued(before, after)


def test_closed_peers_and_shutdown_survive(tree):
    binary = build("res_unixshut")
    d = tree.dir("unixshut")
    st = d / "state"
    wl = tree.launch([binary, d], ready=lambda: int(read_state(st).get("counter", 0)) >= 3)
    dump_kill(tree, wl.root, d / "img")
    before = read_state(st)
    assert before["result"] == "waiting"
    assert sorted(c["role"] for c in records(d / "img", "unix_conn")) == ["closed"] * 2
    assert sorted(r["shutdown"] for r in records(d / "img", "unix_shutdown")) == [1, 2]
    tree.restore(d / "img")
    (d / "go").write_text("")
    after = wait_state(st, lambda s: s.get("result") not in (None, "waiting"),
                       "the program to read its sockets")
    assert after["got"] == f"last-words,EOF,bye,EOF,m1,m2,EOF,r1,peer={d / 'shut.sock'}"
    assert after["result"] == "ok"
    assert_continued(before, after)


def test_fds_in_flight_refused_and_tree_resumes(tree):
    binary = build("res_unixpair")
    d = tree.dir("unixfds")
    st = d / "state"
    wl = tree.launch([binary, st, d / "go", "fds"],
                     ready=lambda: int(read_state(st).get("counter", 0)) >= 3)
    res = tree.cli("tree", "dump", wl.root, d / "img")
    assert res.rc == 1, res.describe()
    m = UNSUPPORTED_RE.search(assert_one_error_line(res))
    assert m and int(m.group(3)) == int(read_state(st)["fd"]), res.describe()
    assert "file descriptors in flight (SCM_RIGHTS)" in m.group(4)
    assert not (d / "img").exists()
    before = read_state(st)
    assert_running_untraced(wl.root)
    wait_state(st, progressed(before, "counter", 5), "the tree to run on after the refusal")


def records(image, section: str) -> list[dict]:
    res = lxc_cr("inspect", image, "--json", "--section", section)
    return [r["fields"] for r in json.loads(res.stdout)["records"]]


def lxc_cr(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """The CLI, without the tree harness (which would reap the container's lxc-start)."""
    res = subprocess.run([LXC_CR, *map(str, args)], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=timeout, check=False)
    assert res.returncode == 0, f"lxc-cr {' '.join(map(str, args))}: {res.stderr}"
    return res


def states(d, names) -> dict[str, dict]:
    return {n: read_state(d / n) for n in names}


def progressed(before: dict, key: str, by: int):
    return lambda s: int(s.get(key, 0)) >= int(before[key]) + by


@pytest.mark.parametrize("kind,pending", [("stream", True), ("seqpacket", False)])
def test_accepted_connections_survive(tree, kind, pending):
    binary = build("res_unixconn")
    d = tree.dir(f"unixconn-{kind}")
    path = str(d / "srv.sock")
    ends = ["server", "client1", "client2"]

    def ready():
        s = states(d, ends + (["client3"] if pending else []))
        return all(int(s[n].get("counter", 0)) >= 5 for n in ends) and \
            (not pending or s["client3"].get("connected") == "1")
    root = tree.launch([binary, d, kind] + (["pending"] if pending else []), ready=ready).root
    for cycle in (1, 2):        # the second dump takes the sockets the restore made
        img = d / f"img{cycle}"
        dump_kill(tree, root, img)
        conns = records(img, "unix_conn")
        roles = sorted(c["role"] for c in conns)
        assert roles == sorted(["accepted"] * 2 + ["client"] * 2 + ["pending"] * pending)
        assert all(c["queue"] for c in conns if c["role"] != "pending"), \
            f"cycle {cycle}: every connected end should have had unread records at the dump"
        before = states(d, ends)
        root = tree.restore(img)
        after = {n: wait_state(d / n, progressed(before[n], "rcvd0", 40),
                               f"{n} to read 40 more records") for n in ends}
        after["server"] = wait_state(d / "server", progressed(before["server"], "rcvd1", 40),
                                     "the server to read 40 more records from its 2nd client")
        for n in ends:
            assert_continued(before[n], after[n], what=f"cycle {cycle}: {n}")
            for i in ((0, 1) if n == "server" else (0,)):
                assert after[n][f"bad{i}"] == "0", f"{n} end {i}: record out of sequence"
        srv = after["server"]
        assert srv["listener"] == path
        assert (srv["name0"], srv["peer0"], srv["name1"], srv["peer1"]) == (path, "", path, "")
        for n in ("client1", "client2"):
            assert (after[n]["name0"], after[n]["peer0"]) == ("", path), n
    (d / "more").write_text("")
    if pending:
        c3 = wait_state(d / "client3", lambda s: s.get("got") == "hi",
                        "the client left in the accept queue to be accepted")
        assert c3["peer"] == path
    with socket.socket(socket.AF_UNIX, getattr(socket, f"SOCK_{kind.upper()}")) as s:
        s.settimeout(30)
        s.connect(path)
        assert s.recv(16) == b"hi", "the restored listener did not accept a new client"


def test_dgram_senders_connected_to_bound_receiver(tree):
    binary = build("res_unixdgram")
    d = tree.dir("unixdgram")
    path = str(d / "log.sock")
    names = ["receiver", "sender1", "sender2"]

    def ready():
        s = states(d, names)
        return int(s["receiver"].get("counter", 0)) > 15 and \
            all(int(s[n].get("sent", 0)) >= 12 for n in names[1:])
    root = tree.launch([binary, d], ready=ready).root
    for cycle in (1, 2):        # the second dump takes the sockets the restore made
        img = d / f"img{cycle}"
        dump_kill(tree, root, img)
        before = states(d, names)
        queued = records(img, "unix_dgram_queue")
        assert len(queued) == 1 and queued[0]["datagrams"], "no datagram was queued at the dump"
        assert sorted(c["role"] for c in records(img, "unix_conn")) == ["sender"] * 2
        root = tree.restore(img)
        for i in (1, 2):
            want = int(before[f"sender{i}"]["sent"]) + 20
            wait_state(d / "receiver", lambda s, i=i, want=want: int(s.get(f"rcvd{i}", 0)) >= want,
                       f"cycle {cycle}: the receiver to get every queued and 20 new datagrams "
                       f"of sender {i}")
        after = states(d, names)
        assert after["receiver"]["bad"] == "0", after["receiver"]["bad"]
        assert after["receiver"]["name"] == path
        for n in names:
            assert_continued(before[n], after[n], what=f"cycle {cycle}: {n}")
        for n in names[1:]:
            assert (after[n]["name"], after[n]["peer"]) == ("", path), n


class EchoServer(threading.Thread):
    """A listener outside the tree (a path, or "@name" abstract): echoes every 16-byte
    record, logging its number; ``hold`` stops it reading (a record sent stays unread)."""

    def __init__(self, path: str):
        super().__init__(daemon=True)
        self.lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.lst.bind(b"\0" + path[1:].encode() if path.startswith("@") else path)
        self.lst.listen(4)
        self.got: list[int] = []
        self.connections = 0
        self.hold = threading.Event()
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            try:
                c, _ = self.lst.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c: socket.socket):
        with c:
            buf = b""
            while not self.done.is_set():
                if self.hold.is_set():
                    self.done.wait(0.01)
                    continue
                c.settimeout(0.05)
                try:
                    data = c.recv(16 - len(buf))
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                buf += data
                if len(buf) == 16:
                    self.got.append(int(buf))
                    c.sendall(buf)
                    buf = b""

    def close(self):
        self.done.set()
        self.lst.close()


def test_client_of_listener_outside_the_tree(tree):
    binary = build("res_unixout")
    d = tree.dir("unixout")
    path = str(d / "ext.sock")
    st = d / "state"
    servers = [EchoServer(path)]
    servers[0].start()
    try:
        wl = tree.launch([binary, path, d], ready=lambda: int(read_state(st).get("rounds", 0)) >= 20)
        # a record in flight (the server holds it unread): refused, naming the peer
        servers[0].hold.set()
        res = wait_for_refusal(tree, wl.root, path)
        assert "unread data" in res, res
        (d / "hold").write_text("")
        servers[0].hold.clear()
        wait_state(st, lambda s: s.get("held") == "1", "the client to hold")
        dump_kill(tree, wl.root, d / "img")
        before = read_state(st)
        assert [c["role"] for c in records(d / "img", "unix_conn")] == ["outside"]
        # no listener at the path any more: the restore fails naming it, nothing is left
        servers[0].close()
        os.unlink(path)
        res = tree.cli("tree", "restore", d / "img")
        assert res.rc == 1 and path in assert_one_error_line(res), res.describe()
        assert not all_pids_with_exe(binary), "a failed restore left the client running"
        servers.append(EchoServer(path))
        servers[1].start()
        tree.restore(d / "img")
        (d / "hold").unlink()
        after = wait_state(st, progressed(before, "rounds", 30), "30 more rounds after restore")
        assert_continued(before, after)
        assert after["bad"] == "0" and after["peer"] == path
        assert servers[1].connections == 1, "the restored client should have connected again"
        got = servers[0].got + servers[1].got
        assert got == list(range(1, len(got) + 1)), "records lost or repeated at the server"
        assert servers[1].got and servers[1].got[0] == int(before["rounds"]) + 1
    finally:
        for srv in servers:
            srv.close()


def test_client_of_abstract_listener_outside_is_refused(tree):
    binary = build("res_unixout")
    d = tree.dir("unixabs")
    name = f"@lxccr-test-{os.getpid()}-{d.name}"
    srv = EchoServer(name)
    srv.start()
    try:
        wl = tree.launch([binary, name, d],
                         ready=lambda: int(read_state(d / "state").get("rounds", 0)) >= 3)
        res = tree.cli("check", wl.root)
        assert res.rc == 1, res.describe()
        m = [UNSUPPORTED_RE.search(ln) for ln in res.out.splitlines() + res.err.splitlines()]
        m = [x for x in m if x and name in x.group(4)]
        assert m and int(m[0].group(1)) == wl.root and m[0].group(3) == "3", res.describe()
        assert "connected to a peer outside the tree" in m[0].group(4)
        assert not (d / "img").exists()
        dump = tree.cli("tree", "dump", wl.root, d / "img")
        assert dump.rc == 1 and name in assert_one_error_line(dump), dump.describe()
        assert not (d / "img").exists()
    finally:
        srv.close()


def wait_for_refusal(tree, root: int, path: str) -> str:
    """``lxc-cr check ROOT`` until it refuses the client's socket (a record in flight)."""
    def refused():
        res = tree.cli("check", root)
        lines = [ln for ln in res.out.splitlines() + res.err.splitlines()
                 if UNSUPPORTED_RE.search(ln) and path in ln]
        return lines[0] if res.rc == 1 and lines else None
    return wait_for(refused, "check to refuse the connection with a record in flight")


RCS_SYSLOG = """#!/bin/sh
/bin/syslogd
/bin/unixlog /tmp/unixlog.state </dev/null >/dev/null 2>&1 &
"""


def logged(rootfs: Path) -> list[int]:
    """The numbers res_unixlog logged, in the order syslogd wrote them (rotated file first)."""
    files = sorted((rootfs / "var" / "log").glob("messages*"), reverse=True)
    text = "".join(f.read_text(errors="replace") for f in files)
    return [int(n) for n in re.findall(r"unixlog(?:\[\d+\])?: n=(\d+)", text)]


def test_syslog_client_in_lxc_container(lxc_container, tmp_path):
    binary = build("res_unixlog", "-static")
    ct = lxc_container("unixlog")
    rootfs = Path(ct.lxcpath) / ct.name / "rootfs"
    shutil.copy(binary, rootfs / "bin" / "unixlog")
    (rootfs / "etc" / "init.d" / "rcS").write_text(RCS_SYSLOG)
    ct.start()
    st = rootfs / "tmp" / "unixlog.state"
    wait_state(st, lambda s: int(s.get("counter", 0)) >= 20 and logged(rootfs), "syslog lines")
    d = tmp_path / "ckpt"
    lxc_cr("lxc", "checkpoint", ct.name, d, "--stop", "-P", ct.lxcpath)
    before = read_state(st)
    senders = [c for c in records(d / "lxc-cr.img", "unix_conn") if c["role"] == "sender"]
    assert [c["peer_name"] for c in senders] == ["/dev/log"], senders
    lxc_cr("lxc", "restore", ct.name, d, "-P", ct.lxcpath)
    after = wait_state(st, progressed(before, "counter", 30), "30 more syslog() calls")
    assert_continued(before, after)
    assert after["peer"] == "/dev/log"
    want = int(before["counter"]) + 20
    wait_for(lambda: (logged(rootfs) or [0])[-1] >= want, f"syslogd to write message {want}")
    nums = logged(rootfs)
    assert nums == list(range(nums[0], nums[0] + len(nums))), \
        "syslog messages lost or repeated across the checkpoint"
