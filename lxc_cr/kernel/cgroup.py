"""The cgroup freezer of a container (v1 ``freezer.state``, or v2 ``cgroup.freeze``).

``/proc/PID/cgroup`` lines are ``hierarchy-id:controllers:path``.  This host mounts the v1
freezer at /sys/fs/cgroup/freezer and v2 at /sys/fs/cgroup/unified (kernel-facts); the
host's mounts are only read, never changed.
"""

from __future__ import annotations

import os
import time

from lxc_cr.errors import OperationFailed

V1_ROOT = "/sys/fs/cgroup/freezer"
V2_ROOTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")


class _NotFrozen(Exception):
    """One try at freezing timed out (the group is thawed again)."""


def parse_cgroup(data: str) -> dict[str, str]:
    """{controller: path}; the v2 entry is keyed by ''."""
    out = {}
    for line in data.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrls, path = parts
        for c in (ctrls.split(",") if ctrls else [""]):
            out[c] = path
    return out


class Freezer:
    """Context manager: frozen inside, thawed on every way out."""

    def __init__(self, host_pid: int, timeout: float = 10.0):
        with open(f"/proc/{host_pid}/cgroup") as f:
            groups = parse_cgroup(f.read())
        self.timeout = timeout
        self.v2 = False
        if "freezer" in groups and os.path.exists(f"{V1_ROOT}{groups['freezer']}/freezer.state"):
            self.dir = f"{V1_ROOT}{groups['freezer']}"
            if groups["freezer"] in ("/", ""):
                raise OperationFailed(f"pid {host_pid} is in the root freezer cgroup: "
                                      "refusing to freeze the host")
        else:
            path = groups.get("", "/")
            root = next((r for r in V2_ROOTS if os.path.exists(f"{r}{path}/cgroup.freeze")), None)
            if root is None or path in ("/", ""):
                raise OperationFailed(f"pid {host_pid}: no freezer cgroup found")
            self.dir = f"{root}{path}"
            self.v2 = True

    def _write(self, value: str) -> None:
        name = "cgroup.freeze" if self.v2 else "freezer.state"
        with open(f"{self.dir}/{name}", "w") as f:
            f.write(value)

    def state(self) -> str:
        if self.v2:
            with open(f"{self.dir}/cgroup.events") as f:
                return "FROZEN" if "frozen 1" in f.read() else "THAWED"
        with open(f"{self.dir}/freezer.state") as f:
            return f.read().strip()

    def freeze(self) -> None:
        """Freeze, retrying (thawed in between) until ``timeout``.  A task can hold a freeze
        off for as long as it waits uninterruptibly on another one that froze first.  A
        libvirt domain's cgroup holds its controller, libvirt_lxc, which serves the FUSE
        files of the domain's /proc, so a reader of one of them would wait for a frozen
        server (a likely cause of a CI run's "did not freeze"; that error did not say).
        Thawing lets such a wait finish; each try is short (ATTEMPT s) for that reason, and
        the final error names the tasks that held the freeze off.

        The first try is made before tenacity is imported: it is the one that succeeds
        almost always, and the import would be 11 ms of a busybox checkpoint."""
        t0 = time.monotonic()
        try:
            self._freeze_once(min(self.ATTEMPT, self.timeout))
            return
        except _NotFrozen as e:
            first = e
        time.sleep(0.05)                # as between the tries below
        left = self.timeout - (time.monotonic() - t0)
        if left <= 0:
            raise OperationFailed(f"{self.dir}: did not freeze within {self.timeout} s"
                                  f"{first}") from None
        from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed
        try:
            for attempt in Retrying(stop=stop_after_delay(left), wait=wait_fixed(0.05),
                                    retry=retry_if_exception_type(_NotFrozen), reraise=True):
                with attempt:
                    self._freeze_once(min(self.ATTEMPT, left))
        except _NotFrozen as e:
            raise OperationFailed(f"{self.dir}: did not freeze within {self.timeout} s"
                                  f"{e}") from None

    ATTEMPT = 2.0

    def _freeze_once(self, timeout: float) -> None:
        self._write("1" if self.v2 else "FROZEN")
        deadline = time.monotonic() + timeout
        delay = 0.0002
        while self.state() != "FROZEN":
            if time.monotonic() > deadline:
                stuck = self._not_frozen()
                self.thaw()
                raise _NotFrozen(f" (not frozen: {', '.join(stuck)})" if stuck else "")
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def _not_frozen(self) -> list[str]:
        """``pid (comm) in wchan`` of the tasks that hold the freeze off: running, or in an
        uninterruptible wait (a task in an interruptible sleep counts as frozen)."""
        out = []
        try:
            with open(f"{self.dir}/cgroup.procs" if self.v2 else f"{self.dir}/tasks") as f:
                tids = f.read().split()
        except OSError:
            return out
        from lxc_cr.kernel.procfs import Proc
        proc = Proc()
        for tid in map(int, tids):
            try:
                st = proc.stat(tid)
                wchan = proc.read(tid, "wchan").decode().strip()
            except OperationFailed:                 # TaskGone too: it went meanwhile
                continue
            if st.state in ("R", "D") and wchan not in ("__refrigerator", "do_freezer_trap"):
                out.append(f"{tid} ({st.comm}) "
                           f"{'running' if st.state == 'R' else 'in ' + wchan}")
        return out

    def thaw(self) -> None:
        self._write("0" if self.v2 else "THAWED")

    def __enter__(self):
        self.freeze()
        return self

    def __exit__(self, *exc):
        self.thaw()
        return False
