"""Task identity: pids at every pid-namespace level, tree links, state, and the small
per-process attributes (personality, umask, cwd, root, dumpable, ...).

Sources: /proc/PID/stat (``pid (comm) state ppid pgrp session ... exit_signal(38) ...
exit_code(52)``), /proc/PID/status (``NSpid:``, ``NSpgid:``, ``NSsid:``, ``Umask:``),
/proc/PID/personality, /proc/PID/cwd, /proc/PID/root.
"""

import construct as cs

from lxc_cr.image.kinds import record_kind
from lxc_cr.resources.records_common import Str, U32s

TASK = record_kind(0x0100, "task", cs.Struct(
    "pid" / cs.Int32ul,          # pid in the tree's own pid namespace
    "ppid" / cs.Int32ul,         # 0 for the root
    "pgid" / cs.Int32ul,
    "sid" / cs.Int32ul,
    "nspids" / U32s,             # pid at each level, from the tree's pid ns inwards
    "host_pid" / cs.Int32ul,     # pid as seen by the dumper (informational)
    "comm" / Str,
    "state" / cs.PaddedString(1, "ascii"),   # R S D T t Z ...
    "exit_code" / cs.Int32sl,    # wait status of a zombie, else 0
    "exit_signal" / cs.Int32sl,
    "personality" / cs.Int32ul,
    "umask" / cs.Int32ul,
    "dumpable" / cs.Int8ul,
    "no_new_privs" / cs.Int8ul,
    "child_subreaper" / cs.Int8ul,
    "pdeath_signal" / cs.Int32ul,
    "cwd" / Str,
    "root" / Str,
), doc="one per process (thread-group leader), parents before children")

RLIMITS = record_kind(0x0102, "rlimits", cs.Struct(
    "pid" / cs.Int32ul,
    "limits" / cs.PrefixedArray(cs.VarInt, cs.Struct(
        "resource" / cs.Int8ul, "cur" / cs.Int64ul, "max" / cs.Int64ul)),
), doc="rlimits read from /proc/PID/limits (RLIM_INFINITY = 2**64-1)")


# --- dump / restore -----------------------------------------------------------------------
import struct  # noqa: E402

PR_SET_PDEATHSIG, PR_GET_PDEATHSIG = 1, 2
PR_GET_DUMPABLE, PR_SET_DUMPABLE = 3, 4
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 36, 37
AT_FDCWD = -100
RLIM_INFINITY = (1 << 64) - 1


def dump(ctx, task, remote) -> None:
    """TASK and RLIMITS of a live (stopped) process; zombies go through dump_zombie."""
    hp = task.host_pid
    buf = ctx.scratch_for(task)
    remote.call("prctl", PR_GET_PDEATHSIG, buf, 0, 0, 0)
    pdeath = struct.unpack("<i", remote.read(buf, 4))[0]
    remote.call("prctl", PR_GET_CHILD_SUBREAPER, buf, 0, 0, 0)
    subreaper = struct.unpack("<i", remote.read(buf, 4))[0]
    dumpable = remote.call("prctl", PR_GET_DUMPABLE, 0, 0, 0, 0)
    _add_task(ctx, task, personality=ctx.proc.personality(hp),
              umask=task.creds.umask or 0, dumpable=dumpable,
              no_new_privs=task.creds.no_new_privs, child_subreaper=subreaper,
              pdeath_signal=pdeath, cwd=ctx.proc.readlink(hp, "cwd"),
              root=ctx.proc.readlink(hp, "root"))
    limits = [dict(resource=lim.resource, cur=lim.soft, max=lim.hard)
              for lim in ctx.proc.limits(hp)]
    ctx.writer.add(RLIMITS, dict(pid=task.pid, limits=limits))


def dump_zombie(ctx, task) -> None:
    _add_task(ctx, task, personality=0, umask=0, dumpable=0, no_new_privs=0,
              child_subreaper=0, pdeath_signal=0, cwd="", root="")


def _add_task(ctx, task, **attrs) -> None:
    st = task.stat
    ctx.writer.add(TASK, dict(pid=task.pid, ppid=task.ppid, pgid=task.pgid, sid=task.sid,
                              nspids=task.nspids, host_pid=task.host_pid, comm=st.comm,
                              state=task.state0 or st.state, exit_code=st.exit_code,
                              exit_signal=st.exit_signal, **attrs))


def restore(ctx, rec, remote) -> None:
    """Process-wide attributes, run inside the task (rlimits too: prlimit on a task of
    another uid needs CAP_SYS_RESOURCE, which root lacks here; the task may lower its own)."""
    buf = ctx.scratch + 256
    if rec.root and rec.root != "/":
        remote.write(buf, rec.root.encode() + b"\0")
        remote.call("chroot", buf)
    if rec.cwd:
        remote.write(buf, rec.cwd.encode() + b"\0")
        remote.call("chdir", buf)
    remote.call("umask", rec.umask)
    remote.call("personality", rec.personality)
    if rec.child_subreaper:
        remote.call("prctl", PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    for lim in ctx.one("rlimits", rec.pid).limits:
        remote.write(buf, struct.pack("<QQ", lim.cur, lim.max))
        remote.call("prlimit64", 0, lim.resource, buf, 0)


def restore_late(ctx, rec, remote) -> None:
    """After the credentials: what a uid change resets."""
    remote.call("prctl", PR_SET_DUMPABLE, rec.dumpable, 0, 0, 0)
    if rec.pdeath_signal:
        remote.call("prctl", PR_SET_PDEATHSIG, rec.pdeath_signal, 0, 0, 0)
    if rec.no_new_privs:
        remote.call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
