"""Signal dispositions (per process) and pending signals.

``struct kernel_sigaction { void *handler; unsigned long flags; void *restorer; u64 mask; }``
as rt_sigaction(2) takes it on x86_64; pending ``siginfo_t`` (128 bytes) from
PTRACE_PEEKSIGINFO (shared queue with PTRACE_PEEKSIGINFO_SHARED).
"""

import construct as cs

from lxc_cr.image.kinds import record_kind
from lxc_cr.resources.records_common import PackedArray

SigAction = cs.Struct(
    "handler" / cs.Int64ul,
    "flags" / cs.Int64ul,
    "restorer" / cs.Int64ul,
    "mask" / cs.Int64ul,
)

SIGACTIONS = record_kind(0x0104, "sigactions", cs.Struct(
    "pid" / cs.Int32ul,
    "actions" / PackedArray(64, SigAction),  # index i is signal i+1
), doc="one per process")

SIGPENDING = record_kind(0x0105, "sigpending", cs.Struct(
    "pid" / cs.Int32ul,
    "tid" / cs.Int32ul,                      # 0: the process-wide (shared) queue
    "siginfo" / cs.PrefixedArray(cs.VarInt, cs.Bytes(128)),
), doc="queued signals, re-queued with rt_tgsigqueueinfo / rt_sigqueueinfo")


# --- dump / restore -----------------------------------------------------------------------
import struct  # noqa: E402

SIGKILL, SIGSTOP = 9, 19
SIG_IGN = 1
SA_RESTORER = 0x04000000
_SA = struct.Struct("<QQQQ")


# The dump's query of all 64 actions, run by a helper thread of the stopped task (kernel.
# ptrace.in_new_thread: one clone instead of 64 injected calls of two ptrace stops each):
#     0b xor edi, edi
#     0d inc edi                      ; signal 1..64
#     0f mov eax, 13                  ; rt_sigaction(sig, NULL, r9, 8)
#     14 xor esi, esi
#     16 mov rdx, r9
#     19 mov r10d, 8
#     1f syscall
#     21 test eax, eax
#     23 jnz 30                       ; failed: exit status = that signal
#     25 add r9, 32                   ; the next struct kernel_sigaction
#     29 cmp edi, 64
#     2c jb 0d
#     2e xor edi, edi
#     30 mov eax, 60                  ; exit(edi): this thread only
#     35 syscall
#     37 ud2
_QUERY_LOOP = bytes.fromhex("31ffffc7b80d00000031f64c89ca41ba080000000f0585c0750b4983c120"
                            "83ff4072df31ffb83c0000000f050f0b")
_CODE_OFFSET = 3072          # where in the scratch page the loop goes (the table: 0..2047)


def query(remote, buf: int, batched: bool = False) -> list[tuple[int, int, int, int]]:
    """Every action of the process, (handler, flags, restorer, mask) for signals 1..64,
    written as a table at ``buf`` (64 * 32 bytes of the task's scratch page, which must be
    executable for ``batched``) and read back at once.  ``batched`` (the dump, with a
    GuardedRemote): by a helper thread running _QUERY_LOOP; if no thread can be made (a
    pids limit) or one of its queries failed, by 64 injected rt_sigaction(2) calls, as
    restore always does (a failing call then raises, naming its error)."""
    from lxc_cr.kernel.ptrace import RemoteError, thread_code
    done = False
    if batched:
        at = buf + _CODE_OFFSET
        remote.write(at, thread_code(at, remote.ip + 2, _QUERY_LOOP))
        try:
            done = remote.in_new_thread(at, buf) == 0
        except RemoteError:
            pass
    if not done:
        for sig in range(1, 65):
            remote.call("rt_sigaction", sig, 0, buf + (sig - 1) * _SA.size, 8)
    raw = remote.read(buf, 64 * _SA.size)
    return [_SA.unpack_from(raw, i) for i in range(0, 64 * _SA.size, _SA.size)]


def after_exec(status: dict) -> list[tuple[int, int, int, int]]:
    """The actions of a process stopped right after its execve, as query() would read
    them, from its /proc/PID/status (``status``) instead of 64 injected calls: execve
    resets every handled signal to SIG_DFL and every action's flags, mask and restorer to
    0, and keeps SIG_IGN (flush_signal_handlers), so SigIgn tells them all."""
    ign = int(status.get("SigIgn", "0"), 16)
    return [(SIG_IGN if ign >> (sig - 1) & 1 else 0, 0, 0, 0) for sig in range(1, 65)]


def dump(ctx, task, remote) -> None:
    actions = [dict(zip(("handler", "flags", "restorer", "mask"), a))
               for a in query(remote, ctx.scratch_for(task), batched=True)]
    ctx.writer.add(SIGACTIONS, dict(pid=task.pid, actions=actions))


def dump_pending(ctx, task, leader_tracee, threads) -> None:
    """Shared queue (through the leader) and each thread's own queue, plus any signal that
    our stop dequeued (Tracee.intercepted)."""
    shared = leader_tracee.peek_siginfo(shared=True)
    ctx.writer.add(SIGPENDING, dict(pid=task.pid, tid=0, siginfo=shared))
    for th, tracee in threads:
        own = tracee.peek_siginfo(shared=False) + list(tracee.intercepted)
        if own:
            ctx.writer.add(SIGPENDING, dict(pid=task.pid, tid=th.tid, siginfo=own))


def restore(ctx, task, remote) -> None:
    """Dispositions: the recorded table is written into the scratch page at once and each
    catchable signal whose action differs from the one the process has now is set from
    it.  What it has now is known without asking: ``task.sigactions``, the actions of the
    restore's init (queried once) that every process inherited at its clone3, before any
    was rebuilt (None: unknown, every signal is set).  A signal queued during the restore
    (pending now, in /proc/PID/status) is first set to SIG_IGN, which discards it."""
    rec = ctx.one("sigactions", task.pid)
    want = [(a.handler, a.flags, a.restorer, a.mask) for a in rec.actions]
    have = getattr(task, "sigactions", None)
    table = ctx.scratch + 256
    ign = table + 64 * _SA.size
    remote.write(table, b"".join(_SA.pack(*a) for a in want) + _SA.pack(SIG_IGN, SA_RESTORER, 0, 0))
    pending = set(_pending(ctx, task.host_pid))
    for sig in range(1, 65):
        if sig in (SIGKILL, SIGSTOP):
            continue
        if sig in pending:
            remote.call("rt_sigaction", sig, ign, 0, 8)
        elif have is not None and have[sig - 1] == want[sig - 1]:
            continue
        remote.call("rt_sigaction", sig, table + (sig - 1) * _SA.size, 0, 8)
    task.sigactions = want


def _pending(ctx, host_pid: int) -> list[int]:
    """Signals queued for the process (ShdPnd) or any of its threads (SigPnd)."""
    mask = 0
    for tid in ctx.proc.tids(host_pid):
        st = ctx.proc.status(host_pid, tid)
        mask |= int(st.get("ShdPnd", "0"), 16) | int(st.get("SigPnd", "0"), 16)
    return [sig for sig in range(1, 65) if mask >> (sig - 1) & 1]


def restore_pending(ctx, task, tid_tracees, remote_by_tid) -> None:
    """Re-queue recorded signals from inside the task (allowed for its own pid; its pid and
    tids as it sees them, the innermost level in a nested pid namespace)."""
    own = {th.tid: th.nstids[-1] for th in ctx.by_pid("thread", task.pid)}
    own[task.pid] = task.rec.nspids[-1]
    for p in ctx.by_pid("sigpending", task.pid):
        for info in p.siginfo:
            signo = struct.unpack_from("<i", info)[0]
            if p.tid == 0:
                r = remote_by_tid[task.pid]
                r.write(ctx.scratch + 256, bytes(info))
                r.call("rt_sigqueueinfo", own[task.pid], signo, ctx.scratch + 256)
            else:
                r = remote_by_tid[p.tid]
                r.write(ctx.scratch + 256, bytes(info))
                r.call("rt_tgsigqueueinfo", own[task.pid], own.get(p.tid, p.tid), signo,
                       ctx.scratch + 256)
