"""Task identity: pids at every pid-namespace level, tree links, state, and the small
per-process attributes (personality, umask, cwd, root, dumpable, ...).

Nested pid namespaces: ``NSpid:`` lists a task's pid in every namespace from the reader's
inwards; TASK.nspids keeps the levels from the tree's own pid namespace inwards (the root
has one).  A task one level deeper than its parent whose innermost pid is 1 is the init of
a nested namespace, restored by clone3(CLONE_NEWPID) with one set_tid entry per level; a
parent whose ``/proc/PID/ns/pid_for_children`` is that init's namespace (it called
unshare(CLONE_NEWPID) and forked) gets it back by setns(pidfd of the init, CLONE_NEWPID),
so its later children join it, as recorded in PID_FOR_CHILDREN; one that called
unshare(CLONE_NEWPID) and has not forked yet (the kernel shows no pid_for_children link)
calls it again.  Both are done once the task's threads exist (clone(CLONE_THREAD) fails
with EINVAL while pid_for_children differs from the task's namespace), and the setns also
right after the init is forked, for the task's later children in it.  A pid_for_children
whose init is gone is refused by check_pidns.

Sources: /proc/PID/stat (``pid (comm) state ppid pgrp session ... exit_signal(38) ...
exit_code(52)``), /proc/PID/status (``NSpid:``, ``NSpgid:``, ``NSsid:``, ``Umask:``),
/proc/PID/personality, /proc/PID/cwd, /proc/PID/root.
"""

import construct as cs

from lxc_cr.errors import OperationFailed, RestoreFailed, TaskGone, Unsupported
from lxc_cr.image.kinds import record_kind
from lxc_cr.resources.records_common import PackedPrefixedArray, Str, U32s

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

PID_FOR_CHILDREN = record_kind(0x0103, "pid_for_children", cs.Struct(
    "pid" / cs.Int32ul,          # a process whose /proc/PID/ns/pid_for_children differs
    "child" / cs.Int32ul,        # its child that is the init (pid 1) of that namespace;
                                 # 0: a namespace no process has entered yet
), doc="a process that unshare(CLONE_NEWPID)'d: later forks go into its child's namespace "
       "(or start a new one)")

RLIMITS = record_kind(0x0102, "rlimits", cs.Struct(
    "pid" / cs.Int32ul,
    "limits" / PackedPrefixedArray(cs.VarInt, cs.Struct(
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
    dump_pidns(ctx, task)


def dump_zombie(ctx, task) -> None:
    """A zombie now, whatever state it had when the dump found it: one that exited since
    (a task already in do_exit() is not held by the freezer) is recorded as the zombie it
    is, not as a process without memory."""
    _add_task(ctx, task, state="Z", personality=0, umask=0, dumpable=0, no_new_privs=0,
              child_subreaper=0, pdeath_signal=0, cwd="", root="")


def _add_task(ctx, task, state: str = "", **attrs) -> None:
    st = task.stat
    ctx.writer.add(TASK, dict(pid=task.pid, ppid=task.ppid, pgid=task.pgid, sid=task.sid,
                              nspids=task.nspids, host_pid=task.host_pid, comm=st.comm,
                              state=state or task.state0 or st.state, exit_code=st.exit_code,
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
    # only the limits that differ from the process's own now (/proc/PID/limits): most are
    # what it inherited, and each one set is an injected call
    have = {lim.resource: (lim.soft, lim.hard) for lim in ctx.proc.limits(remote.t.pid)}
    for lim in ctx.one("rlimits", rec.pid).limits:
        if have.get(lim.resource) == (lim.cur, lim.max):
            continue
        remote.write(buf, struct.pack("<QQ", lim.cur, lim.max))
        remote.call("prlimit64", 0, lim.resource, buf, 0)


def restore_late(ctx, rec, remote) -> None:
    """After the credentials: what a uid change resets."""
    remote.call("prctl", PR_SET_DUMPABLE, rec.dumpable, 0, 0, 0)
    if rec.pdeath_signal:
        remote.call("prctl", PR_SET_PDEATHSIG, rec.pdeath_signal, 0, 0, 0)
    if rec.no_new_privs:
        remote.call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


# --- nested pid namespaces ----------------------------------------------------------------

def _pidns(proc, host_pid: int) -> tuple[int, int]:
    """(pid ns, pid_for_children ns) inodes; the latter is -1 for a namespace no process
    has entered yet (the kernel shows no link for it: unshare(CLONE_NEWPID), no fork)."""
    own = proc.ns(host_pid, "pid")
    try:
        return own, proc.ns(host_pid, "pid_for_children")
    except OperationFailed:
        proc.stat(host_pid)                   # TaskGone if that is why
        return own, -1


def check_pidns(proc, tasks) -> list[Unsupported]:
    """Nested pid namespaces the restore can rebuild: each task is at its parent's level or
    one deeper (then it is that namespace's init, or its parent's pid_for_children is that
    namespace); a pid_for_children other than the task's own namespace must hold one of
    its children."""
    out = []
    depth = {t.host_pid: len(t.nspids) for t in tasks}
    ns = {}
    for t in tasks:
        if t.zombie:
            continue
        try:
            ns[t.host_pid] = _pidns(proc, t.host_pid)
        except (TaskGone, OSError):
            continue
    for t in tasks[1:]:
        parent = t.stat.ppid
        d, pd = len(t.nspids), depth.get(parent, 1)
        comm = t.stat.comm
        if d > pd + 1 or d < pd:
            out.append(Unsupported(t.host_pid, comm, "pid namespace",
                                   reason=f"{d} levels below the tree's, its parent {pd}: "
                                          f"not supported"))
        elif d == pd + 1 and t.nspids[-1] != 1 and t.host_pid in ns and parent in ns \
                and ns[parent][1] != ns[t.host_pid][0]:
            out.append(Unsupported(t.host_pid, comm, "pid namespace",
                                   reason="a nested namespace its parent no longer forks "
                                          "into: not supported"))
    for t in tasks:
        own = ns.get(t.host_pid)
        if own is None or own[0] == own[1] or own[1] == -1:
            continue
        if not any(ns.get(c, (0,))[0] == own[1] for c in t.children):
            out.append(Unsupported(t.host_pid, t.stat.comm, "pid namespace for children",
                                   reason="differs from its own and its init is gone: "
                                          "not supported"))
    return out


def dump_pidns(ctx, task) -> None:
    """PID_FOR_CHILDREN of a task that unshare(CLONE_NEWPID)'d and forked its init."""
    own, kids = _pidns(ctx.proc, task.host_pid)
    if own == kids:
        return
    if kids == -1:
        ctx.writer.add(PID_FOR_CHILDREN, dict(pid=task.pid, child=0))
        return
    level = len(task.creds.nspid) - len(task.nspids)
    for c in task.children:
        cr = ctx.proc.creds(c)
        if ctx.proc.ns(c, "pid") == kids and cr.nspid[-1] == 1:
            ctx.writer.add(PID_FOR_CHILDREN, dict(pid=task.pid, child=cr.nspid[level]))
            return


def fork_flags(ctx, parent_rec, rec) -> tuple[int, int]:
    """(clone flags, pid clone3 returns in the parent's namespace) for forking ``rec``
    from ``parent_rec`` (None: the restorer's reaper init, at the tree's level)."""
    CLONE_NEWPID = 0x20000000
    pd = len(parent_rec.nspids) if parent_rec is not None else 1
    d = len(rec.nspids)
    if d == pd:
        return 0, rec.nspids[pd - 1]
    if d != pd + 1:
        raise RestoreFailed(f"pid {rec.pid}: {d} pid namespace levels, its parent "
                            f"{rec.ppid} {pd}: not supported")
    if rec.nspids[-1] == 1:
        return CLONE_NEWPID, rec.nspids[pd - 1]
    if ctx.pidns_target.get(rec.ppid) is None:
        raise RestoreFailed(f"pid {rec.pid}: in a nested pid namespace of its parent "
                            f"{rec.ppid} whose init is not restored before it")
    return 0, rec.nspids[pd - 1]


def after_fork(ctx, parent_remote, rec, host_pid: int, got: int) -> None:
    """Check every pid level of a just-forked nested task, and give its parent back the
    recorded pid_for_children: setns(pidfd_open(init), CLONE_NEWPID) injected there."""
    if len(rec.nspids) > 1:
        have = tuple(ctx.proc.creds(host_pid).nspid[-len(rec.nspids):])
        if have != tuple(rec.nspids):
            raise RestoreFailed(f"pid {rec.pid}: pids {list(have)} at its namespace levels, "
                                f"recorded {list(rec.nspids)}")
    for p in ctx.records.get("pid_for_children", ()):
        if p.pid == rec.ppid and p.child == rec.pid:
            _setns_pid(parent_remote, got)
            ctx.pidns_target[rec.ppid] = got


def _setns_pid(remote, pid: int) -> None:
    """pid_for_children := the pid namespace of ``pid`` (as the task sees it)."""
    pidfd = remote.call("pidfd_open", pid, 0)
    try:
        remote.call("setns", pidfd, 0x20000000)
    finally:
        remote.call("close", pidfd)


def before_threads(ctx, rec, remote) -> None:
    """Back to its own pid namespace for children while its threads are created."""
    if rec.pid in ctx.pidns_target:
        _setns_pid(remote, rec.nspids[-1])


def after_threads(ctx, rec, remote) -> None:
    """The recorded pid_for_children, once the task's threads exist."""
    for p in ctx.records.get("pid_for_children", ()):
        if p.pid != rec.pid:
            continue
        if p.child == 0:
            remote.call("unshare", 0x20000000)
        elif rec.pid in ctx.pidns_target:
            _setns_pid(remote, ctx.pidns_target[rec.pid])


def session_nested(ctx, rec, host_pid: int, remote) -> None:
    """setsid()/setpgid() of a task in a nested pid namespace, compared at the tree's level
    (getsid()/getpgid() inside it see only that namespace; 0 for a leader outside)."""
    st = ctx.proc.creds(host_pid)
    i = len(st.nspid) - len(rec.nspids)
    level = lambda vals: vals[i] if len(vals) > i else 0      # noqa: E731
    if rec.sid != level(st.nssid):
        if rec.sid != rec.pid:
            raise RestoreFailed(f"pid {rec.pid}: session {rec.sid} is neither its own nor "
                                f"its parent's: not supported")
        remote.call("setsid")
        st = ctx.proc.creds(host_pid)
    if rec.pgid == level(st.nspgid):
        return
    if rec.pgid == rec.pid:
        remote.call("setpgid", 0, 0)
        return
    d = len(rec.nspids)
    leader = next((t for t in ctx.records["task"] if t.pid == rec.pgid), None)
    if leader is None or len(leader.nspids) < d:
        raise RestoreFailed(f"pid {rec.pid}: process group {rec.pgid} is not visible in its "
                            f"pid namespace: not supported")
    remote.call("setpgid", 0, leader.nspids[d - 1])
