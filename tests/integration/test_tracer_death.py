"""A signal that arrives while lxc-cr stops a task is never held only in lxc-cr's memory.

Stopping a running task (PTRACE_INTERRUPT) can meet a signal the task has just dequeued: the
tracer sees a signal-delivery-stop first.  lxc-cr hands that signal back to the kernel (queued
again, with its siginfo, while the thread briefly blocks everything) so that if lxc-cr is then
killed, the task, detached by the kernel, still receives it.  A busybox shell waiting for its
child in sigsuspend() hangs for ever when its SIGCHLD is lost that way (the crash-safety test
met it).  Real processes, a real tracer killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

TARGET = r"""
import os, signal
signal.signal(signal.SIGUSR1, lambda *a: os.write(1, b"got SIGUSR1\n"))
os.write(1, b"ready\n")
while True:
    signal.pause()
"""

# seize the target, send it SIGUSR1, wait until it sits in the signal-delivery-stop, stop it
# the way a dump does, then die without detaching
TRACER = r"""
import os, signal, sys, time
sys.path.insert(0, sys.argv[2])
from lxc_cr.kernel.ptrace import Tracee, O_TRACESYSGOOD
pid = int(sys.argv[1])

def state():
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]

tr = Tracee.seize(pid, O_TRACESYSGOOD)
os.kill(pid, signal.SIGUSR1)
deadline = time.monotonic() + 10
while state() != "t":
    assert time.monotonic() < deadline, "no signal-delivery-stop"
    time.sleep(0.001)
tr.interrupt()
print("stopped", tr.get_sigmask(), len(tr.intercepted), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def sig_blocked(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16)
    raise AssertionError("no SigBlk")


def test_signal_dequeued_at_the_stop_survives_the_tracers_death():
    target = subprocess.Popen([sys.executable, "-c", TARGET], stdout=subprocess.PIPE,
                              stdin=subprocess.DEVNULL)
    try:
        assert target.stdout.readline() == b"ready\n"
        tracer = subprocess.run([sys.executable, "-c", TRACER, str(target.pid), str(REPO)],
                                capture_output=True, text=True, timeout=60)
        assert tracer.returncode == -signal.SIGKILL, tracer.stderr
        # stopped with its own (empty) mask back and nothing kept on the tracer's side
        assert tracer.stdout.split() == ["stopped", "0", "0"], tracer.stdout + tracer.stderr
        os.set_blocking(target.stdout.fileno(), False)
        got = b""
        deadline = time.monotonic() + 20
        while b"got SIGUSR1\n" not in got and time.monotonic() < deadline:
            got += target.stdout.read() or b""
            time.sleep(0.01)
        assert b"got SIGUSR1\n" in got, "the signal was lost with the tracer"
        assert sig_blocked(target.pid) == 0
        assert target.poll() is None
    finally:
        target.kill()
        target.wait()


# Targets for the death-in-the-middle-of-a-call test: one sleeping in a syscall (pause(),
# restarted on the way back), one computing in user mode.  Both print "tick" lines while
# they run and "got SIGUSR1" from a handler.
TARGETS = {
    "in-syscall": r"""
import os, signal
signal.signal(signal.SIGUSR1, lambda *a: os.write(1, b"got SIGUSR1\n"))
signal.signal(signal.SIGALRM, lambda *a: os.write(1, b"tick\n"))
signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
os.write(1, b"ready\n")
while True:
    signal.pause()
""",
    "user-mode": r"""
import os, signal
signal.signal(signal.SIGUSR1, lambda *a: os.write(1, b"got SIGUSR1\n"))
os.write(1, b"ready\n")
i = 0
while True:
    i += 1
    if i % 300000 == 0:
        os.write(1, b"tick\n")
""",
}

# what the dump does to a stopped thread (put its trampoline in a page of its own, or in the
# vdso's padding, run calls from there), then die at ``moment`` of one more call: its
# registers loaded, at its syscall-entry stop, or at its syscall-exit stop
MID_CALL = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[3])
from lxc_cr.kernel.procfs import Proc
from lxc_cr.kernel.ptrace import (ALL_SIGNALS, O_TRACESYSGOOD, PTRACE_SYSCALL, GuardedRemote,
                                  Tracee, find_syscall_insn, trampoline)
from lxc_cr.dump import _vdso_pad
pid, moment, where = int(sys.argv[1]), sys.argv[2], sys.argv[4]
tr = Tracee.seize(pid, O_TRACESYSGOOD)
tr.interrupt()
regs, mask = tr.getregs(), tr.get_sigmask()
mem = os.open(f"/proc/{pid}/mem", os.O_RDWR)
vdso = [m for m in Proc().maps(pid) if m.path == "[vdso]"][0]
r = GuardedRemote(tr, find_syscall_insn(mem, vdso.start, vdso.end, pid), regs, mem, mask)
if where == "vdso-pad":           # where the dump's first and last calls run from
    at = _vdso_pad(mem, vdso, pid)
    assert at, "no room in the vdso's padding"
else:
    at = r.call("mmap", 0, 8192, 7, 0x22, -1, 0) + 4096
r.write(at, trampoline(regs, mask))
r.ip = at
assert r.call("getpid") > 0
r._load("getppid", ())
tr.set_sigmask(ALL_SIGNALS)
for _ in range({"loaded": 0, "entry": 1, "exit": 2}[moment]):
    tr._resume(PTRACE_SYSCALL)
    assert tr.wait().sig == signal.SIGTRAP | 0x80
print("dying", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _read_until(proc, want: bytes, timeout: float = 20.0) -> bytes:
    os.set_blocking(proc.stdout.fileno(), False)
    got = b""
    deadline = time.monotonic() + timeout
    while want not in got and time.monotonic() < deadline and proc.poll() is None:
        got += proc.stdout.read() or b""
        time.sleep(0.01)
    return got


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("moment", ["loaded", "entry", "exit"])
@pytest.mark.parametrize("where", ["page", "vdso-pad"])
def test_tracer_killed_in_the_middle_of_an_injected_call(target, moment, where):
    proc = subprocess.Popen([sys.executable, "-c", TARGETS[target]], stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout.readline() == b"ready\n"
        _read_until(proc, b"tick\n")
        tracer = subprocess.run([sys.executable, "-c", MID_CALL, str(proc.pid), moment,
                                 str(REPO), where], capture_output=True, text=True, timeout=60)
        assert tracer.returncode == -signal.SIGKILL and "dying" in tracer.stdout, tracer.stderr
        # it runs on: ticks again, its mask is its own, and its handler still works
        _read_until(proc, b"tick\n")
        assert b"tick\n" in _read_until(proc, b"tick\n"), f"{target} stopped ticking"
        assert proc.poll() is None, f"{target} died: {proc.returncode}"
        assert sig_blocked(proc.pid) == 0
        os.kill(proc.pid, signal.SIGUSR1)
        assert b"got SIGUSR1\n" in _read_until(proc, b"got SIGUSR1\n")
    finally:
        proc.kill()
        proc.wait()
