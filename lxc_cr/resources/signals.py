"""Signal dispositions (per process) and pending signals.

``struct kernel_sigaction { void *handler; unsigned long flags; void *restorer; u64 mask; }``
as rt_sigaction(2) takes it on x86_64; pending ``siginfo_t`` (128 bytes) from
PTRACE_PEEKSIGINFO (shared queue with PTRACE_PEEKSIGINFO_SHARED).
"""

import construct as cs

from lxc_cr.image.kinds import record_kind

SigAction = cs.Struct(
    "handler" / cs.Int64ul,
    "flags" / cs.Int64ul,
    "restorer" / cs.Int64ul,
    "mask" / cs.Int64ul,
)

SIGACTIONS = record_kind(0x0104, "sigactions", cs.Struct(
    "pid" / cs.Int32ul,
    "actions" / cs.Array(64, SigAction),     # index i is signal i+1
), doc="one per process")

SIGPENDING = record_kind(0x0105, "sigpending", cs.Struct(
    "pid" / cs.Int32ul,
    "tid" / cs.Int32ul,                      # 0: the process-wide (shared) queue
    "siginfo" / cs.PrefixedArray(cs.VarInt, cs.Bytes(128)),
), doc="queued signals, re-queued with rt_tgsigqueueinfo / rt_sigqueueinfo")
