"""The worker process of ``lxc-cr host``: one checkpoint or restore of one container.

``lxc-cr host shutdown|boot`` runs each checkpoint and restore as
``python -m lxc_cr.host_worker RESULT OP KIND NAME WHERE IMAGE COMPRESS``, so that a
per-container timeout can interrupt it (SIGINT: the dump resumes the container and removes
its image, a restore stops what it started) and a crash in one never takes the others or
the host command down.  The worker writes one JSON object to RESULT: ``{"ok": true,
"stats": {...}}`` or ``{"ok": false, "class": ..., "message": ..., "transient": bool,
"exit_code": 1|2}``.  :func:`attempt` runs it, retrying (tenacity, bounded) while it
reports a transient error: the container's lock is held by another lxc-cr, the container is
starting or stopping, the freezer answers EBUSY.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING

from lxc_cr import atomicfile
from lxc_cr.errors import Busy, KernelError, LxcCrError, OperationFailed

if TYPE_CHECKING:
    from lxc_cr.host import Target

# container states LXC / libvirt pass through briefly: wait and retry, do not fall back
LXC_TRANSITIONS = ("STARTING", "STOPPING", "ABORTING", "FREEZING")
RETRY_ATTEMPTS = 4
RETRY_BUDGET = 30.0          # seconds, at most, spent waiting between attempts
KILL_GRACE = 20.0            # after SIGINT to a timed-out worker, before SIGKILL


class InTransition(OperationFailed):
    """The container is starting, stopping or freezing: try again shortly."""


class _Transient(Exception):
    def __init__(self, result: dict):
        super().__init__(result.get("message", "transient error"))
        self.result = result


def _run_worker(op: str, t: Target, image: str, timeout: float) -> dict:
    """Run one checkpoint/restore of T (a host.Target) in a worker; its result."""
    with tempfile.TemporaryDirectory(prefix="lxc-cr-host-") as tmp:
        out = os.path.join(tmp, "result.json")
        with open(os.path.join(tmp, "stderr"), "w+") as err:
            argv = [sys.executable, "-m", "lxc_cr.host_worker", out, op, t.kind, t.name,
                    t.where, image, "zstd" if t.settings.compress else "-"]
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                 start_new_session=True)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGINT)          # the dump/restore unwinds cleanly
                try:
                    p.wait(timeout=KILL_GRACE)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
                return {"ok": False, "message": f"timed out after {timeout:g} s"}
            try:
                with open(out) as f:
                    return json.load(f)
            except (OSError, ValueError):
                err.seek(0)
                lines = [x for x in err.read().splitlines() if x.strip()]
                why = lines[-1] if lines else f"exit status {p.returncode}"
                return {"ok": False, "message": f"worker failed: {why}"}


def attempt(op: str, t: Target, image: str) -> dict:
    """The worker, retried (bounded) while it reports a transient error."""
    import tenacity

    def once() -> dict:
        res = _run_worker(op, t, image, t.settings.timeout)
        if not res.get("ok") and res.get("transient"):
            raise _Transient(res)
        return res

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(_Transient),
        stop=tenacity.stop_after_attempt(RETRY_ATTEMPTS) | tenacity.stop_after_delay(RETRY_BUDGET),
        wait=tenacity.wait_exponential(multiplier=0.25, max=4), reraise=True)
    try:
        return retrying(once)
    except _Transient as e:
        res = dict(e.result)
        res["message"] = f"{res.get('message')} (still after {RETRY_ATTEMPTS} attempts)"
        return res


def _transient(e: BaseException) -> bool:
    if isinstance(e, (Busy, InTransition)):
        return True
    if isinstance(e, KernelError) and getattr(e, "errno", None) in (errno.EBUSY, errno.EAGAIN,
                                                                    errno.EINTR):
        return True
    return isinstance(e, OperationFailed) and "did not freeze within" in str(e)


def _worker_op(op: str, kind: str, name: str, where: str, image: str, compress: str | None):
    from lxc_cr.commands_check import preflight_pid
    if kind == "lxc":
        from lxc_cr.runtime import lxc as lxc_rt
        if op == "checkpoint":
            state = lxc_rt.container(name, where).state
            if state in LXC_TRANSITIONS:
                raise InTransition(f"{name}: container is {state}")
            _refuse(preflight_pid(lxc_rt.init_pid(name, where), True, image)[0])
            return lxc_rt.checkpoint(name, image, stop=True, lxcpath=where, compress=compress)
        return lxc_rt.restore(name, image, lxcpath=where)
    from lxc_cr.runtime import libvirt as virt
    if op == "checkpoint":
        lv = virt._libvirt()
        dom = virt.lookup(virt.connect(where), name)
        state = dom.state()[0]
        if state in (lv.VIR_DOMAIN_SHUTDOWN, lv.VIR_DOMAIN_NOSTATE):
            raise InTransition(f"domain '{name}' is shutting down or starting")
        _refuse(preflight_pid(virt.init_pid(name, where), True, os.path.dirname(image))[0])
        return virt.managedsave(name, uri=where)
    return virt.restore(image, uri=where)


def _refuse(problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise OperationFailed(f"preflight: {problems[0]}{more}")


def _worker_main(argv: list[str]) -> int:
    out, op, kind, name, where, image, compress = argv

    me = os.getpid()

    def interrupted(signum, frame):
        # forked helpers (pyroute2's netns child) inherit this handler and are ended with
        # SIGTERM: they must die, not unwind the dump (which would remove its image)
        if os.getpid() != me:
            os._exit(128 + signum)
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupted)
    try:
        stats = _worker_op(op, kind, name, where, image, None if compress == "-" else compress)
        res = {"ok": True, "stats": stats if isinstance(stats, dict) else {}}
    except LxcCrError as e:
        res = {"ok": False, "class": type(e).__name__, "message": str(e),
               "transient": _transient(e), "exit_code": e.exit_code}
    except KeyboardInterrupt:
        res = {"ok": False, "class": "Interrupted", "message": "interrupted"}
    except Exception as e:  # noqa: BLE001 - a bug: still one line for the log
        res = {"ok": False, "class": type(e).__name__,
               "message": f"internal error: {type(e).__name__}: {e}"}
    atomicfile.write_json(out, res, default=str)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
