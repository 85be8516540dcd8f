"""Parsers of the time-namespace and cgroup modules, on stored /proc text and on this
machine's own files."""

from __future__ import annotations

import os

from lxc_cr.resources import ns_cgroup, ns_time

TIMENS = "monotonic       86400         0\nboottime         3600       500\n"

CGROUP = """9:name=systemd:/
8:pids:/lxc.payload.c1/sub
4:memory:/process_api/abc/lxc.payload.c1
2:cpu,cpuacct:/
0::/lxc.payload.c1/sub/inner
"""

MOUNTINFO = """31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:7 - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
77 50 0:36 /lxc.payload.c1 /var/lib/lxc/c1/pids rw - cgroup cgroup rw,pids
"""


def test_timens_offsets():
    assert ns_time.parse_offsets(TIMENS) == {"monotonic": (86400, 0), "boottime": (3600, 500)}
    assert ns_time.parse_offsets("") == {}


def test_timens_offsets_of_this_process():
    with open("/proc/self/timens_offsets") as f:
        got = ns_time.parse_offsets(f.read())
    assert set(got) == {"monotonic", "boottime"}


def test_cgroup_hierarchies():
    h = ns_cgroup.hierarchies(CGROUP)
    assert h == {"name=systemd": "/", "pids": "/lxc.payload.c1/sub",
                 "memory": "/process_api/abc/lxc.payload.c1", "cpu,cpuacct": "/",
                 "": "/lxc.payload.c1/sub/inner"}


def test_cgroup_mounts_only_at_their_root():
    keys = ["pids", "memory", "cpu,cpuacct", "name=systemd", "", "blkio"]
    assert ns_cgroup.mounts(MOUNTINFO, keys) == {
        "pids": "/sys/fs/cgroup/pids", "memory": "/sys/fs/cgroup/memory",
        "cpu,cpuacct": "/sys/fs/cgroup/cpu,cpuacct", "name=systemd": "/sys/fs/cgroup/systemd",
        "": "/sys/fs/cgroup/unified"}


def test_cgroup_below():
    assert ns_cgroup._below("/a/b", "/a/b") == ""
    assert ns_cgroup._below("/a/b/c/d", "/a/b") == "c/d"
    assert ns_cgroup._below("/a/bc", "/a/b") is None
    assert ns_cgroup._below("/x", "/") == "x"
    assert ns_cgroup._below("/", "/a") is None


def test_cgroup_of_this_process_is_mounted():
    with open(f"/proc/{os.getpid()}/cgroup") as f:
        mine = ns_cgroup.hierarchies(f.read())
    with open("/proc/self/mountinfo") as f:
        where = ns_cgroup.mounts(f.read(), mine)
    for h, mnt in where.items():
        assert os.path.isdir(f"{mnt}{mine[h]}"), (h, mnt, mine[h])
