"""namespaces.run_in: a function run inside another process's namespaces.  Net, IPC and UTS
take a thread of lxc-cr (setns moves only the calling thread), a mount namespace a forked
helper; either way lxc-cr's own namespaces are untouched, and an exception comes back as
one OperationFailed naming the namespace.  namespaces.Beside: a forked helper that runs
calls in order while lxc-cr goes on, holds none of lxc-cr's files, and ends with it.
Checked against a real process in namespaces of its own (unshare)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lxc_cr.errors import OperationFailed
from lxc_cr.kernel import sys as ksys
from lxc_cr.resources.namespaces import Beside, run_in
from treeutil import exited

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


# --- Beside (its calls are pickled by reference: module-level functions) ------------------

def _unshare_net() -> str:
    ksys.unshare(ksys.CLONE_NEWNET)
    return ns("/proc/self")["net"]


def _open_files() -> dict[int, str]:
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            pass                       # the listing's own descriptor
    return out


def _boom():
    raise ValueError("no such thing")


def test_beside_runs_the_calls_in_order_in_the_namespaces(target):
    pid, theirs = target
    mine = ns("/proc/self")
    with open(__file__) as held, Beside(pid, ("net", "ipc", "uts")) as b:
        for fn in (where, _unshare_net, where, _open_files):
            b.send(fn)
        got_pid, _tid, got_ns, host = b.take()
        assert got_pid == b.child != os.getpid()
        assert {k: got_ns[k] for k in ("net", "ipc", "uts")} == \
            {k: theirs[k] for k in ("net", "ipc", "uts")}
        assert host == "lxccr-helper-test"
        assert b.take() not in (theirs["net"], mine["net"])   # a namespace of its own
        assert b.take()[2]["net"] == theirs["net"]             # entered again for the next
        files = b.take()
        # its pipes and the namespaces it enters; none of this process's files
        assert os.path.realpath(held.name) not in files.values()
        assert sorted(v.split(":")[0] for fd, v in files.items() if fd > 2) == \
            ["ipc", "net", "pipe", "pipe", "uts"]
        child = b.child
    assert exited(child)
    with pytest.raises(ChildProcessError):
        os.waitpid(child, os.WNOHANG)                          # reaped by close()
    assert ns("/proc/self") == mine


def test_beside_names_the_failed_call_and_a_dead_helper(target):
    pid, _theirs = target
    with Beside(pid, ("net",)) as b:
        b.send(_boom)
        b.send(where)
        with pytest.raises(OperationFailed) as e:
            b.take()
        assert str(e.value) == (f"_boom in the net namespace of pid {pid}: "
                                f"ValueError: no such thing")
        assert b.take()[0] == b.child                          # it goes on
        os.kill(b.child, signal.SIGKILL)
        b.send(where)
        with pytest.raises(OperationFailed) as e:
            b.take()
        assert str(e.value) == f"where in the net namespace of pid {pid}: the helper died"


def test_beside_close_ends_a_busy_helper(target):
    pid, _theirs = target
    b = Beside(pid, ("net",))
    b.send(time.sleep, 300)
    child = b.child
    b.close()
    assert exited(child)
    with pytest.raises(ChildProcessError):
        os.waitpid(child, os.WNOHANG)


def test_beside_ends_when_its_owner_dies(target, cleanup_pids):
    pid, _theirs = target
    code = (f"import sys, time; sys.path[:0] = {sys.path!r}\n"
            f"from lxc_cr.resources.namespaces import Beside\n"
            f"b = Beside({pid}, ('net',)); print(b.child, flush=True); time.sleep(300)")
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, cwd=Path(__file__).parent)
    cleanup_pids.add(owner)
    helper = int(owner.stdout.readline())
    cleanup_pids.add(helper)
    assert not exited(helper)
    owner.kill()
    owner.wait()
    deadline = time.monotonic() + 30
    while not exited(helper) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert exited(helper), "the helper outlived its owner"
