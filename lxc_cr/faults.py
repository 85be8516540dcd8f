"""Fault injection for tests (documented in docs/user-guide.md).

``LXC_CR_FAULT=dump:N`` (or ``restore:N``) makes the Nth step of a dump (restore) fail with
an OperationFailed, as a real failure there would.  ``LXC_CR_FAULT_TRACE=FILE`` appends
one line per step reached (``dump 3 frozen``), so a test can learn how many steps there
are and walk every one of them.  ``LXC_CR_FAULT_HOLD=dump:N`` makes the Nth step wait
(up to ``LXC_CR_FAULT_HOLD_SECONDS``, default 300) after its trace line is written, so a
test can kill lxc-cr at exactly that point (tests/integration/test_crash_safety.py).
"""

from __future__ import annotations

import os
import time

from lxc_cr.errors import OperationFailed

_counters: dict[str, int] = {}


class InjectedFault(OperationFailed):
    pass


def reset() -> None:
    _counters.clear()


def step(op: str, name: str) -> None:
    n = _counters.get(op, 0) + 1
    _counters[op] = n
    trace = os.environ.get("LXC_CR_FAULT_TRACE")
    if trace:
        with open(trace, "a") as f:
            f.write(f"{op} {n} {name}\n")
    if os.environ.get("LXC_CR_FAULT_HOLD") == f"{op}:{n}":
        time.sleep(float(os.environ.get("LXC_CR_FAULT_HOLD_SECONDS", "300")))
    want = os.environ.get("LXC_CR_FAULT")
    if want and want == f"{op}:{n}":
        raise InjectedFault(f"injected fault at {op} step {n} ({name})", step=n, op=op)
