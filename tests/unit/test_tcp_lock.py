"""lxc_cr.resources.tcp_lock: the nft rules the network lock plans for each connection
(no nft run here: the integration tests in test_res_tcp.py run them), and the watchdog
process exiting quietly when the dumper ends normally."""

from __future__ import annotations

import os
import subprocess
import sys

from lxc_cr.resources.tcp_lock import NetLock


def planned(*conns) -> tuple[NetLock, list[str]]:
    lk = NetLock(os.getpid(), "t")
    try:
        for c in conns:
            lk.add(*c)
        return lk, list(lk.pending)
    finally:
        os.close(lk.ns_fd)


def test_v4_connection_both_ends_one_rule_pair():
    lk, lines = planned((11, "127.0.0.1", 7070, "127.0.0.1", 40000),
                        (12, "127.0.0.1", 40000, "127.0.0.1", 7070))
    assert lines[:3] == ["add table inet t",
                         "add chain inet t input { type filter hook input priority -300 ; }",
                         "add chain inet t output { type filter hook output priority -300 ; }"]
    assert lines[3:] == [
        "add rule inet t input ip saddr 127.0.0.1 ip daddr 127.0.0.1 tcp sport 40000 "
        "tcp dport 7070 drop",
        "add rule inet t output ip saddr 127.0.0.1 ip daddr 127.0.0.1 tcp sport 7070 "
        "tcp dport 40000 drop"]
    assert not lk.external                       # both ends dumped


def test_v6_and_v4_mapped_and_one_end():
    lk, lines = planned((21, "::1", 7070, "::1", 5000),
                        (22, "::ffff:10.0.3.2", 80, "::ffff:10.0.3.9", 6000))
    assert "add rule inet t input ip6 saddr ::1 ip6 daddr ::1 tcp sport 5000 " \
           "tcp dport 7070 drop" in lines
    assert "add rule inet t output ip saddr 10.0.3.2 ip daddr 10.0.3.9 tcp sport 80 " \
           "tcp dport 6000 drop" in lines
    assert lk.external                           # peers outside


def test_a_shared_socket_is_one_end():
    lk, lines = planned((31, "127.0.0.1", 7070, "127.0.0.1", 40000),
                        (31, "127.0.0.1", 7070, "127.0.0.1", 40000))   # same inode twice
    assert len(lines) == 5 and lk.external


def test_watchdog_exits_on_done_without_acting():
    p = subprocess.run([sys.executable, "-m", "lxc_cr.resources.tcp_lock"],
                       input="sock 1 0 0\ndone\n", capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stderr == "", p.stderr
