"""Threads: general registers, xsave state, signal mask, rseq, robust list, tid address,
sigaltstack, thread name.

``struct user_regs_struct`` (27 x u64: r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx
rsi rdi orig_rax rip cs eflags rsp ss fs_base gs_base ds es fs gs); xsave area from
PTRACE_GETREGSET NT_X86_XSTATE; rseq from PTRACE_GET_RSEQ_CONFIGURATION.
"""

import construct as cs

from lxc_cr.image.kinds import record_kind
from lxc_cr.resources.records_common import Blob, PackedArray, Str, U32s

THREAD = record_kind(0x0110, "thread", cs.Struct(
    "pid" / cs.Int32ul,          # thread-group leader, tree pid ns
    "tid" / cs.Int32ul,          # tree pid ns
    "nstids" / U32s,
    "comm" / Str,
    "regs" / PackedArray(27, cs.Int64ul),
    "xstate" / Blob,
    "sigmask" / cs.Int64ul,
    "rseq_addr" / cs.Int64ul,
    "rseq_len" / cs.Int32ul,
    "rseq_sig" / cs.Int32ul,
    "rseq_flags" / cs.Int32ul,
    "robust_list" / cs.Int64ul,
    "robust_len" / cs.Int64ul,
    "clear_tid" / cs.Int64ul,
    "ss_sp" / cs.Int64ul,
    "ss_flags" / cs.Int32sl,
    "ss_size" / cs.Int64ul,
), doc="one per thread, the leader first")


# --- dump / restore -----------------------------------------------------------------------
import ctypes  # noqa: E402
import struct  # noqa: E402

from lxc_cr.kernel.ptrace import Regs  # noqa: E402
from lxc_cr.kernel.sys import syscall  # noqa: E402

ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK = 512, 513, 514, 516
EINTR = 4
PR_GET_TID_ADDRESS = 40
PR_SET_NAME = 15
RSEQ_FLAG_UNREGISTER = 1
SS_ONSTACK = 1


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def normalize_regs(r: Regs) -> Regs:
    """Registers as they must be restored: a syscall interrupted by our stop is rewound so
    it runs again (or returns EINTR when it needs in-kernel restart state), and orig_rax is
    cleared so nothing depends on the kernel's restart bookkeeping (as CRIU does)."""
    r = r.copy()
    if _signed(r.orig_rax) >= 0:
        err = -_signed(r.rax)
        if err in (ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND):
            r.rax = r.orig_rax
            r.rip -= 2
        elif err == ERESTART_RESTARTBLOCK:
            r.rax = (-EINTR) & 0xFFFFFFFFFFFFFFFF
    r.orig_rax = 0xFFFFFFFFFFFFFFFF
    return r


def get_robust_list(tid: int) -> tuple[int, int]:
    head = ctypes.c_uint64()
    length = ctypes.c_size_t()
    syscall("get_robust_list", tid, ctypes.byref(head), ctypes.byref(length), pid=tid)
    return head.value, length.value


def dump(ctx, task, th, tracee, remote) -> dict:
    """The THREAD record of one stopped thread (``th`` has tid, nstids, comm, regs, sigmask)."""
    rseq_addr, rseq_len, rseq_sig, rseq_flags = tracee.get_rseq()
    robust, robust_len = get_robust_list(th.host_tid)
    buf = ctx.scratch_for(task)
    remote.call("prctl", PR_GET_TID_ADDRESS, buf, 0, 0, 0)
    clear_tid = struct.unpack("<Q", remote.read(buf, 8))[0]
    remote.call("sigaltstack", 0, buf)
    ss_sp, ss_flags, ss_size = struct.unpack("<Qi4xQ", remote.read(buf, 24))
    rec = dict(pid=task.pid, tid=th.tid, nstids=th.nstids, comm=th.comm,
               regs=normalize_regs(th.regs).as_list(), xstate=tracee.get_xstate(),
               sigmask=th.sigmask, rseq_addr=rseq_addr, rseq_len=rseq_len, rseq_sig=rseq_sig,
               rseq_flags=rseq_flags, robust_list=robust, robust_len=robust_len,
               clear_tid=clear_tid, ss_sp=ss_sp, ss_flags=ss_flags, ss_size=ss_size)
    ctx.writer.add(THREAD, rec)
    return rec


def unregister_rseq(tracee, remote) -> None:
    """Drop an rseq registration inherited from the restorer (before memory changes)."""
    addr, length, sig, _ = tracee.get_rseq()
    if addr:
        remote.call("rseq", addr, length, RSEQ_FLAG_UNREGISTER, sig)


def restore(ctx, task, rec, tracee, remote) -> None:
    """Per-thread state except registers and signal mask (set at release)."""
    buf = ctx.scratch + 256
    remote.call("set_robust_list", rec.robust_list, rec.robust_len or 24)
    remote.call("set_tid_address", rec.clear_tid)
    if rec.rseq_addr:
        remote.call("rseq", rec.rseq_addr, rec.rseq_len, 0, rec.rseq_sig)
    if rec.ss_sp or rec.ss_size or rec.ss_flags & ~SS_ONSTACK:
        remote.write(buf, struct.pack("<Qi4xQ", rec.ss_sp, rec.ss_flags & ~SS_ONSTACK,
                                      rec.ss_size))
        remote.call("sigaltstack", buf, 0)
    remote.write(buf, rec.comm.encode()[:15] + b"\0")
    remote.call("prctl", PR_SET_NAME, buf, 0, 0, 0)
    if rec.xstate:
        tracee.set_xstate(bytes(rec.xstate))


def final_regs(rec) -> Regs:
    return Regs.from_list(rec.regs)
