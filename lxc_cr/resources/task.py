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
