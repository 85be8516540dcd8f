"""Resources: signal dispositions (handlers with their flags and masks, ignored signals,
default ones with flags set) survive ``tree dump`` + ``tree restore``, and the handlers
run again on the next signal; the pending-signal reader that restore uses to discard
signals queued meanwhile."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from treeutil import (assert_continued, build, dump_kill, harness_fixture, read_state,
                      state_int, status, wait_state)

pytestmark = pytest.mark.integration

tree = harness_fixture()


def masks(pid: int) -> tuple:
    st = status(pid)
    assert int(st["SigBlk"], 16) == (1 << (signal.SIGWINCH - 1)) | (1 << (signal.SIGURG - 1))
    return st["SigCgt"], st["SigIgn"], st["SigBlk"]


def test_dispositions_survive_and_handlers_run(tree):
    binary = build("res_signals")
    d = tree.dir("signals")
    st = d / "state"
    wl = tree.launch([binary, st], ready=lambda: state_int(st, "counter") >= 3)
    os.kill(wl.root, signal.SIGUSR1)
    os.kill(wl.root, signal.SIGHUP)
    s0 = wait_state(st, lambda s: s["usr1"] == "1" and s["hup"] == "1", "handlers ran")
    m0 = masks(wl.root)

    dump_kill(tree, wl.root, d / "img")
    before = read_state(st)
    root = tree.restore(d / "img")
    after = wait_state(st, lambda s: int(s["counter"]) > int(before["counter"]) + 2,
                       "counter going on after restore")
    assert_continued(before, after)
    # the program's own sigaction() view of all 64 actions, and the kernel's masks
    assert after["digest"] == s0["digest"], (s0, after)
    assert masks(root) == m0
    assert (after["usr1"], after["hup"]) == ("1", "1")     # nothing delivered twice
    os.kill(root, signal.SIGUSR1)
    os.kill(root, signal.SIGHUP)
    os.kill(root, signal.SIGUSR2)                          # ignored: must not kill it
    wait_state(st, lambda s: s["usr1"] == "2" and s["hup"] == "2", "handlers ran again")
    c = state_int(st, "counter")
    wait_state(st, lambda s: int(s["counter"]) > c + 2, "still running after SIGUSR2")


def test_pending_reads_shared_and_thread_queues():
    from lxc_cr.kernel.procfs import Proc
    from lxc_cr.resources.signals import _pending
    code = ("import signal, threading, time\n"
            "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGUSR2, "
            "signal.SIGWINCH})\n"
            "t = threading.Thread(target=time.sleep, args=(60,), daemon=True)\n"
            "t.start()\n"
            "print(t.native_id, flush=True)\n"
            "time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        thread_tid = int(p.stdout.readline())
        ctx = SimpleNamespace(proc=Proc())
        assert _pending(ctx, p.pid) == []
        os.kill(p.pid, signal.SIGUSR2)                  # the process-wide queue (ShdPnd)
        os.kill(p.pid, signal.SIGWINCH)
        wait_pending(ctx, p.pid, [signal.SIGUSR2, signal.SIGWINCH])
        libc = ctypes.CDLL(None, use_errno=True)        # one thread's own queue (SigPnd)
        assert libc.syscall(234, p.pid, thread_tid, signal.SIGUSR1) == 0    # tgkill
        wait_pending(ctx, p.pid, [signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH])
    finally:
        p.kill()
        p.wait()


def wait_pending(ctx, pid, want):
    from lxc_cr.resources.signals import _pending
    deadline = time.monotonic() + 10
    while (got := _pending(ctx, pid)) != want:
        assert time.monotonic() < deadline, got
        time.sleep(0.01)


@contextlib.contextmanager
def injecting(pid: int):
    """(GuardedRemote, page) on pid, seized and interrupted, with an rwx page pair mapped
    in it (the trampoline in the second page); afterwards unmapped, the registers and the
    signal mask put back and the process detached."""
    from lxc_cr.kernel.procfs import Proc
    from lxc_cr.kernel.ptrace import (O_TRACESYSGOOD, GuardedRemote, Tracee,
                                      find_syscall_insn, trampoline)
    tr = Tracee.seize(pid, O_TRACESYSGOOD)
    tr.interrupt()
    regs, mask = tr.getregs(), tr.get_sigmask()
    mem = os.open(f"/proc/{pid}/mem", os.O_RDWR)
    try:
        vdso = [m for m in Proc().maps(pid) if m.path == "[vdso]"][0]
        r = GuardedRemote(tr, find_syscall_insn(mem, vdso.start, vdso.end, pid), regs, mem,
                          mask)
        page = r.call("mmap", 0, 8192, 7, 0x22, -1, 0)
        r.write(page + 4096, trampoline(regs, mask))
        r.ip = page + 4096
        yield r, page
        r.call("munmap", page, 8192)
    finally:
        os.close(mem)
        tr.setregs(regs)
        tr.set_sigmask(mask)
        tr.detach()


def test_dump_query_by_helper_thread_equals_64_calls(tree):
    """The dump reads all 64 actions with one injected clone() whose thread runs the
    query loop (signals._QUERY_LOOP): same table as 64 injected rt_sigaction calls, the
    thread is gone afterwards (reaped), and the process runs on once released."""
    from lxc_cr.kernel.ptrace import thread_code
    from lxc_cr.resources import signals
    binary = build("res_signals")
    d = tree.dir("query")
    st = d / "state"
    wl = tree.launch([binary, st], ready=lambda: state_int(st, "counter") >= 3)
    pid = wl.root
    threads = sorted(os.listdir(f"/proc/{pid}/task"))
    with injecting(pid) as (r, page):
        one_by_one = signals.query(r, page)
        assert len(set(one_by_one)) > 3               # handlers, ignored, default ones
        r.write(page, bytes(4096))
        batched = signals.query(r, page, batched=True)
        assert batched == one_by_one
        assert sorted(os.listdir(f"/proc/{pid}/task")) == threads
        assert status(pid)["Threads"] == str(len(threads))
        # the helper's exit status comes back (the query loop exits with the signal whose
        # rt_sigaction failed, and the dump then asks again one by one)
        at = page + 3072
        r.write(at, thread_code(at, r.ip + 2, bytes.fromhex("bf07000000b83c0000000f05")))
        assert r.in_new_thread(at, 0) == 7                # mov edi, 7; exit(edi)
        assert sorted(os.listdir(f"/proc/{pid}/task")) == threads
    c = state_int(st, "counter")
    wait_state(st, lambda s: int(s["counter"]) > c + 2, "running on after the query")


def test_actions_right_after_exec_read_from_status():
    """A manager's init is taken over right after its execve, and the restore reads its
    actions from /proc/PID/status (signals.after_exec) instead of 64 injected calls: the
    same table as the injected calls, for a process that had handlers (with flags and
    masks) and ignored signals before its exec."""
    from lxc_cr.kernel.procfs import Proc
    from lxc_cr.resources import signals
    ignored = (signal.SIGHUP, signal.SIGUSR2, signal.SIGRTMIN + 3)

    def before_exec():
        for sig in ignored:
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, lambda *_: None)     # a handler: reset by the exec
        signal.signal(signal.SIGTERM, lambda *_: None)
    p = subprocess.Popen(["sleep", "60"], preexec_fn=before_exec)
    try:
        pid = p.pid
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{pid}/exe").startswith(sys.executable) or \
                "sleep" not in open(f"/proc/{pid}/comm").read():
            assert time.monotonic() < deadline, "sleep never ran"
            time.sleep(0.01)
        with injecting(pid) as (r, page):
            asked = signals.query(r, page)
        assert signals.after_exec(Proc().status(pid)) == asked
        assert {sig for sig in range(1, 65) if asked[sig - 1][0] == signals.SIG_IGN} >= \
            set(ignored)
        assert asked[signal.SIGUSR1 - 1] == (0, 0, 0, 0)
    finally:
        p.kill()
        p.wait()
