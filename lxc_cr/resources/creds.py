"""Credentials: uids, gids, supplementary groups, capability sets, securebits.

Source: /proc/PID/status lines ``Uid:``, ``Gid:`` (real effective saved fs),
``Groups:``, ``CapInh:``, ``CapPrm:``, ``CapEff:``, ``CapBnd:``, ``CapAmb:``; securebits
are read by injecting prctl(PR_GET_SECUREBITS).  Credentials are per thread in Linux; we
record them per thread.
"""

import construct as cs

from lxc_cr.image.kinds import record_kind
from lxc_cr.resources.records_common import PackedArray, U32s

CREDS = record_kind(0x0101, "creds", cs.Struct(
    "pid" / cs.Int32ul,
    "tid" / cs.Int32ul,
    "uids" / PackedArray(4, cs.Int32ul),    # real, effective, saved, fs
    "gids" / PackedArray(4, cs.Int32ul),
    "groups" / U32s,
    "cap_inh" / cs.Int64ul,
    "cap_prm" / cs.Int64ul,
    "cap_eff" / cs.Int64ul,
    "cap_bnd" / cs.Int64ul,
    "cap_amb" / cs.Int64ul,
    "securebits" / cs.Int32ul,
), doc="one per thread")


# --- dump / restore -----------------------------------------------------------------------
import struct  # noqa: E402

PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_GET_SECUREBITS, PR_SET_SECUREBITS = 27, 28
PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, PR_CAP_AMBIENT_CLEAR_ALL = 47, 2, 4
SECBIT_KEEP_CAPS = 1 << 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def cap_last_cap() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def dump(ctx, task, th, remote) -> dict:
    c = th.creds
    securebits = remote.call("prctl", PR_GET_SECUREBITS, 0, 0, 0, 0)
    rec = dict(pid=task.pid, tid=th.tid, uids=list(c.uids), gids=list(c.gids),
               groups=list(c.groups), cap_inh=c.cap_inh, cap_prm=c.cap_prm,
               cap_eff=c.cap_eff, cap_bnd=c.cap_bnd, cap_amb=c.cap_amb,
               securebits=securebits)
    ctx.writer.add(CREDS, rec)
    return rec


def restore(ctx, rec, remote) -> None:
    """Switch one thread to the recorded credentials; the restorer's root is never kept
    beyond them.  Order: bounding set and securebits while still privileged, then groups,
    gids, uids (keep-caps on), then the capability sets, then ambient caps."""
    buf = ctx.scratch + 256
    last = cap_last_cap()
    # only what the thread still has (a container's manager dropped some for its init,
    # and every process of the tree inherited that)
    have = int(ctx.proc.status(remote.t.tid).get("CapBnd", "0"), 16)
    for cap in range(last + 1):
        if not rec.cap_bnd & (1 << cap) and have & (1 << cap):
            remote.call("prctl", PR_CAPBSET_DROP, cap, 0, 0, 0)
    remote.call("prctl", PR_SET_SECUREBITS, rec.securebits | SECBIT_KEEP_CAPS, 0, 0, 0)
    groups = list(rec.groups)
    remote.write(buf, struct.pack(f"<{len(groups)}I", *groups) if groups else b"\0")
    remote.call("setgroups", len(groups), buf)
    r, e, s, fs = rec.gids
    remote.call("setresgid", r, e, s)
    remote.call("setfsgid", fs)
    r, e, s, fs = rec.uids
    remote.call("setresuid", r, e, s)
    remote.call("setfsuid", fs)
    hdr = struct.pack("<Ii", _LINUX_CAPABILITY_VERSION_3, 0)
    data = struct.pack("<6I", rec.cap_eff & 0xFFFFFFFF, rec.cap_prm & 0xFFFFFFFF,
                       rec.cap_inh & 0xFFFFFFFF, rec.cap_eff >> 32, rec.cap_prm >> 32,
                       rec.cap_inh >> 32)
    remote.write(buf, hdr + data)
    remote.call("capset", buf, buf + len(hdr))
    remote.call("prctl", PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    for cap in range(last + 1):
        if rec.cap_amb & (1 << cap):
            remote.call("prctl", PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0)
    if not rec.securebits & SECBIT_KEEP_CAPS:       # needs no privilege, unlike securebits
        remote.call("prctl", PR_SET_KEEPCAPS, 0, 0, 0, 0)
