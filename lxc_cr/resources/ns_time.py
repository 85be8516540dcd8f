"""Time namespace: the CLOCK_MONOTONIC and CLOCK_BOOTTIME offsets of the tree's own one.

Source: /proc/PID/timens_offsets, one line per clock (``<clock> <sec> <nsec>``, e.g.
``monotonic       86400         0``), the offsets added to the host's clocks inside the
namespace.  They are recorded, with each clock as the tree saw it at the checkpoint and the
host's boot_id.

Restore: the restorer calls unshare(CLONE_NEWTIME) (its time_for_children becomes a new
namespace no process has entered), writes /proc/self/timens_offsets, then forks the init,
which is created inside it (restore._start_init); the restorer goes back to its own
time_for_children afterwards.  Offsets: on the same boot (same boot_id) the recorded ones,
so the tree's clocks go on as the host's do, counting the time between checkpoint and
restore; after a reboot or on another host, offsets that make each clock go on from its
checkpoint value (the time the tree did not exist is not counted, as CRIU does).
The vdso of a task in a time namespace reads the namespace's page of the vvar mapping
(the kernel swaps it in at fault time, also after the mremap the memory restore does).

A manager's container is taken over after the manager created its init, in the time
namespace it chose.  LXC makes one from ``lxc.time.offset.monotonic`` / ``.boot`` in the
container's config (which travels in the image): a takeover restore checks that the init's
offsets are the recorded ones and fails naming both otherwise.  libvirt's LXC driver has
no time namespaces: an own one there (``container=lxc-libvirt`` in the init's environment)
is refused by check.
"""

from __future__ import annotations

import os
import time

import construct as cs

from lxc_cr.errors import RestoreFailed, Unsupported
from lxc_cr.image.kinds import record_kind
from lxc_cr.kernel import sys as ksys
from lxc_cr.resources.records_common import Str

CLOCKS = {"monotonic": time.CLOCK_MONOTONIC, "boottime": time.CLOCK_BOOTTIME}

TIMENS = record_kind(0x0450, "timens", cs.Struct(
    "clock" / cs.Enum(cs.Int8ul, monotonic=time.CLOCK_MONOTONIC,
                      boottime=time.CLOCK_BOOTTIME),
    "offset_sec" / cs.Int64sl,
    "offset_nsec" / cs.Int32ul,
    "at_dump_ns" / cs.Int64sl,   # the clock inside the namespace at the checkpoint
    "boot_id" / Str,             # /proc/sys/kernel/random/boot_id of the dumping host
), doc="one per clock of the tree's own time namespace (/proc/PID/timens_offsets)")

NS = 1_000_000_000


def parse_offsets(data: str) -> dict[str, tuple[int, int]]:
    """``{clock: (sec, nsec)}`` of /proc/PID/timens_offsets."""
    out = {}
    for line in data.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in CLOCKS:
            out[parts[0]] = (int(parts[1]), int(parts[2]))
    return out


def _boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def _offsets(pid) -> dict[str, tuple[int, int]]:
    with open(f"/proc/{pid}/timens_offsets") as f:
        return parse_offsets(f.read())


def check(root, managed: bool) -> list[Unsupported]:
    if managed and _manager(root.host_pid) == "lxc-libvirt":
        return [Unsupported(root.host_pid, root.stat.comm, "time namespace",
                            reason="not supported in a libvirt container (libvirt "
                                   "creates the init outside it)")]
    return []


def _manager(pid: int) -> str:
    """``container=`` of the init's environment (lxc, lxc-libvirt), "" if unreadable."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return ""
    return next((e[10:].decode(errors="replace") for e in env if e.startswith(b"container=")),
                "")


def dump(ctx, root) -> None:
    boot = _boot_id()
    for name, (sec, nsec) in sorted(_offsets(root.host_pid).items()):
        now = time.clock_gettime_ns(CLOCKS[name]) + sec * NS + nsec
        ctx.writer.add(TIMENS, dict(clock=name, offset_sec=sec, offset_nsec=nsec,
                                    at_dump_ns=now, boot_id=boot))


def offsets_for_restore(records) -> dict[str, tuple[int, int]]:
    """The offsets to set now (see the module docstring)."""
    boot = _boot_id()
    out = {}
    for r in records.get("timens", ()):
        name = str(r.clock)
        if r.boot_id == boot:
            out[name] = (r.offset_sec, r.offset_nsec)
        else:
            off = r.at_dump_ns - time.clock_gettime_ns(CLOCKS[name])
            out[name] = (off // NS, off % NS)
    return out


def enter_for_children(records):
    """unshare(CLONE_NEWTIME) and set its offsets, in the restorer, before it forks the
    init.  Returns an fd of the previous time_for_children for ``leave``, or None when the
    tree has no time namespace of its own."""
    if not any(str(r.kind) == "time" and r.own for r in records.get("ns", ())):
        return None
    old = os.open("/proc/self/ns/time_for_children", os.O_RDONLY | os.O_CLOEXEC)
    try:
        ksys.unshare(ksys.CLONE_NEWTIME)
        text = "".join(f"{CLOCKS[k]} {s} {n}\n" for k, (s, n) in
                       offsets_for_restore(records).items())
        with open("/proc/self/timens_offsets", "w") as f:
            f.write(text)
    except BaseException as e:
        leave(old)
        raise RestoreFailed(f"time namespace: {e}") from None
    return old


def leave(old) -> None:
    """Back to the restorer's own time_for_children once the init is forked."""
    if old is None:
        return
    try:
        ksys.setns(old, ksys.CLONE_NEWTIME)
    except Exception:       # noqa: BLE001 - the restorer only forks helpers after this
        pass
    finally:
        os.close(old)


def check_takeover(records, init_pid: int) -> None:
    """A manager's init restored into: its offsets must already be the recorded ones."""
    want = {str(r.clock): (r.offset_sec, r.offset_nsec) for r in records.get("timens", ())}
    if want and _offsets(init_pid) != want:
        raise RestoreFailed("time namespace: the image records clock offsets "
                            f"{want}, the container's init has {_offsets(init_pid)} (its "
                            "manager's configuration differs): not supported")
