"""namespaces.run_in: a function run inside another process's namespaces.  Net, IPC and UTS
take a thread of lxc-cr (setns moves only the calling thread), a mount namespace a forked
helper; either way lxc-cr's own namespaces are untouched, and an exception comes back as
one OperationFailed naming the namespace.  Checked against a real process in namespaces
of its own (unshare)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import pytest

from lxc_cr.errors import OperationFailed
from lxc_cr.kernel import sys as ksys
from lxc_cr.resources.namespaces import run_in

pytestmark = pytest.mark.integration

KINDS = ("net", "ipc", "uts", "mnt")


def ns(path: str) -> dict[str, str]:
    return {k: os.readlink(f"{path}/ns/{k}") for k in KINDS}


@pytest.fixture
def target(cleanup_pids):
    p = subprocess.Popen(["unshare", "--net", "--ipc", "--uts", "--mount", "sh", "-c",
                          "hostname lxccr-helper-test && exec sleep 300"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    cleanup_pids.add(p)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{p.pid}/cmdline", "rb") as f:
                if f.read().startswith(b"sleep"):
                    break
        except OSError:
            pass
        time.sleep(0.02)
    else:
        pytest.fail("the unshare'd process did not start")
    theirs = ns(f"/proc/{p.pid}")
    assert all(theirs[k] != os.readlink(f"/proc/self/ns/{k}") for k in KINDS)
    return p.pid, theirs


def where():
    return (os.getpid(), threading.get_native_id(), ns("/proc/thread-self"),
            socket.gethostname())


def test_net_ipc_uts_in_a_thread(target):
    pid, theirs = target
    mine = ns("/proc/self")
    host = socket.gethostname()
    got_pid, got_tid, got_ns, got_host = run_in(pid, ("net", "ipc", "uts"), where)
    assert got_pid == os.getpid()                      # no fork
    assert got_tid != threading.get_native_id()        # another thread
    assert {k: got_ns[k] for k in ("net", "ipc", "uts")} == \
        {k: theirs[k] for k in ("net", "ipc", "uts")}
    assert got_ns["mnt"] == mine["mnt"]
    assert got_host == "lxccr-helper-test"
    assert ns("/proc/self") == mine and ns("/proc/thread-self") == mine
    assert socket.gethostname() == host


def test_mount_namespace_in_a_forked_helper(target):
    pid, theirs = target
    mine = ns("/proc/self")
    got_pid, _tid, got_ns, _host = run_in(pid, ("net", "mnt"), where)
    assert got_pid != os.getpid()
    assert got_ns["mnt"] == theirs["mnt"] and got_ns["net"] == theirs["net"]
    assert ns("/proc/self") == mine


def test_a_thread_may_unshare_without_moving_lxc_cr(target):
    mine = ns("/proc/self")

    def fresh():
        ksys.unshare(ksys.CLONE_NEWNET | ksys.CLONE_NEWNS)
        return ns("/proc/thread-self")

    got = run_in(os.getpid(), (), fresh)
    assert got["net"] != mine["net"] and got["mnt"] != mine["mnt"]
    assert ns("/proc/self") == mine and ns("/proc/thread-self") == mine


@pytest.mark.parametrize("kinds", [("net",), ("mnt",)])
def test_exception_comes_back_as_one_error(target, kinds):
    pid, _theirs = target

    def boom():
        raise ValueError("no such thing")

    with pytest.raises(OperationFailed) as e:
        run_in(pid, kinds, boom)
    assert str(e.value) == (f"boom in the {kinds[0]} namespace of pid {pid}: "
                            f"ValueError: no such thing")


def test_gone_process():
    with pytest.raises(OperationFailed, match="cannot open its namespace"):
        run_in(2 ** 22 + 1, ("net",), where)
