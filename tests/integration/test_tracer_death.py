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
