"""Threads: general registers, xsave state, signal mask, rseq, robust list, tid address,
sigaltstack, thread name.

``struct user_regs_struct`` (27 x u64: r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx
rsi rdi orig_rax rip cs eflags rsp ss fs_base gs_base ds es fs gs); xsave area from
PTRACE_GETREGSET NT_X86_XSTATE; rseq from PTRACE_GET_RSEQ_CONFIGURATION.
"""

import construct as cs

from lxc_cr.image.kinds import record_kind
from lxc_cr.resources.records_common import Blob, Str

THREAD = record_kind(0x0110, "thread", cs.Struct(
    "pid" / cs.Int32ul,          # thread-group leader, tree pid ns
    "tid" / cs.Int32ul,          # tree pid ns
    "nstids" / cs.PrefixedArray(cs.VarInt, cs.Int32ul),
    "comm" / Str,
    "regs" / cs.Array(27, cs.Int64ul),
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
