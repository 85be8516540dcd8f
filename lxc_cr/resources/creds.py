"""Credentials: uids, gids, supplementary groups, capability sets, securebits.

Source: /proc/PID/status lines ``Uid:``, ``Gid:`` (real effective saved fs),
``Groups:``, ``CapInh:``, ``CapPrm:``, ``CapEff:``, ``CapBnd:``, ``CapAmb:``; securebits
are read by injecting prctl(PR_GET_SECUREBITS).  Credentials are per thread in Linux; we
record them per thread.
"""

import construct as cs

from lxc_cr.image.kinds import record_kind
from lxc_cr.resources.records_common import U32s

CREDS = record_kind(0x0101, "creds", cs.Struct(
    "pid" / cs.Int32ul,
    "tid" / cs.Int32ul,
    "uids" / cs.Array(4, cs.Int32ul),    # real, effective, saved, fs
    "gids" / cs.Array(4, cs.Int32ul),
    "groups" / U32s,
    "cap_inh" / cs.Int64ul,
    "cap_prm" / cs.Int64ul,
    "cap_eff" / cs.Int64ul,
    "cap_bnd" / cs.Int64ul,
    "cap_amb" / cs.Int64ul,
    "securebits" / cs.Int32ul,
), doc="one per thread")
