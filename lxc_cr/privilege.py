"""``--max-privilege SPEC``: refuse an image whose recorded credentials exceed a policy.

A restore recreates exactly the credentials recorded in the image's ``creds`` records (one
per thread).  The image is only as trustworthy as whoever could write it: its checksums
prove it is intact, not that nobody edited it and re-encoded it.  ``--max-privilege`` is
checked after the image is verified and before any process is created, against every
thread of every live (non-zombie) process.

SPEC is a list of terms separated by spaces, ``;`` or ``,``:

* ``unprivileged``: ``uid>=1 gid>=1 caps=none``;
* ``uid>=N``: every uid of every thread (real, effective, saved, fs) is at least N;
* ``gid>=N``: likewise every gid, and every supplementary group;
* ``caps=CAP_A,CAP_B`` (or ``caps=none``): no capability outside that set in any thread's
  effective, permitted, inheritable or ambient set.  Names as in capabilities(7), with or
  without ``CAP_``, any case; a number is accepted too.

The bounding set and securebits are not checked: they only limit what a process can gain
(an unprivileged process with a full bounding set has no capability).  A refusal is one
line naming the process, the thread, the field and its value, e.g.
``pid 12 (wl_creds): euid 0 exceeds --max-privilege uid>=1000``; it is bad input (exit 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lxc_cr.errors import BadInput, UsageError

# capabilities(7), by number (linux/capability.h)
CAP_NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
CAP_BY_NAME = {n: i for i, n in enumerate(CAP_NAMES)}

ID_FIELDS = ("r", "e", "s", "fs")                      # order of the creds record arrays
CAP_FIELDS = ("cap_eff", "cap_prm", "cap_inh", "cap_amb")


def cap_names(mask: int) -> str:
    """``CAP_A,CAP_B`` for a capability mask (unknown bits as numbers)."""
    out = []
    bit = 0
    while mask >> bit:
        if mask >> bit & 1:
            out.append(CAP_NAMES[bit] if bit < len(CAP_NAMES) else str(bit))
        bit += 1
    return ",".join(out)


def _cap_bit(word: str, spec: str) -> int:
    w = word.strip().upper()
    if w.isdigit():
        return int(w)
    if not w.startswith("CAP_"):
        w = "CAP_" + w
    if w not in CAP_BY_NAME:
        raise UsageError(f"--max-privilege {spec!r}: unknown capability {word!r}")
    return CAP_BY_NAME[w]


@dataclass(frozen=True)
class Limit:
    """The parsed SPEC.  ``caps`` is the allowed mask, None for "any"."""
    spec: str
    min_uid: int = 0
    min_gid: int = 0
    caps: int | None = None


def parse(spec: str) -> Limit:
    """SPEC -> Limit; a malformed SPEC is a usage error (exit 2)."""
    text = spec.strip()
    if not text:
        raise UsageError("--max-privilege: empty SPEC")
    # split terms at spaces/';' and at the commas that start a new term (caps lists keep theirs)
    terms = [t for t in re.split(r"[\s;]+|,(?=\s*(?:uid|gid|caps|unprivileged)\b)", text) if t]
    min_uid = min_gid = 0
    caps: int | None = None
    for term in terms:
        t = term.strip().rstrip(",")
        m = re.fullmatch(r"(uid|gid)\s*>=\s*(\d+)", t)
        if t == "unprivileged":
            min_uid, min_gid = max(min_uid, 1), max(min_gid, 1)
            caps = 0 if caps is None else caps & 0
        elif m:
            n = int(m.group(2))
            if m.group(1) == "uid":
                min_uid = max(min_uid, n)
            else:
                min_gid = max(min_gid, n)
        elif t.startswith("caps="):
            words = [w for w in t[5:].split(",") if w.strip()]
            mask = 0
            if words != ["none"]:
                for w in words:
                    mask |= 1 << _cap_bit(w, spec)
            caps = mask if caps is None else caps & mask
        else:
            raise UsageError(f"--max-privilege {spec!r}: unknown term {t!r} (expected "
                             "unprivileged, uid>=N, gid>=N or caps=CAP_A,CAP_B)")
    return Limit(text, min_uid, min_gid, caps)


def limit_of(spec: str | None) -> Limit | None:
    """The Limit of a ``--max-privilege`` option (None when not given)."""
    return parse(spec) if spec else None


def security_options(args, key_option: str = "key") -> dict:
    """``key=`` and ``max_privilege=`` for restore_tree/dump_tree from the command line:
    the key in the file named by ``args.<key_option>`` (``--encrypt``/``--key KEYFILE``)
    and the Limit of ``--max-privilege``."""
    path = getattr(args, key_option, None)
    if path:
        from lxc_cr.image.envelope import load_key   # construct: only when a key is given
    return {"key": load_key(path) if path else None,
            "max_privilege": limit_of(getattr(args, "max_privilege", None))}


class PrivilegeExceeded(BadInput):
    """An image records credentials above --max-privilege."""


def check(records, limit: Limit, path: str = "") -> None:
    """Raise PrivilegeExceeded for the first thread whose recorded credentials exceed
    ``limit``.  ``records``: {kind name: [parsed records]} as RestoreCtx.records holds."""
    comm = {t.pid: t.comm for t in records.get("task", [])}
    live = {t.pid for t in records.get("task", []) if t.state != "Z"}
    for c in records.get("creds", []):
        if c.pid not in live:
            continue
        problem = _exceeds(c, limit)
        if problem:
            where = f"pid {c.pid} ({comm.get(c.pid, '?')})"
            if c.tid != c.pid:
                where += f" thread {c.tid}"
            pre = f"{path}: " if path else ""
            raise PrivilegeExceeded(f"{pre}{where}: {problem} exceeds --max-privilege "
                                    f"{limit.spec}", pid=c.pid, tid=c.tid)
    if live and not records.get("creds"):
        raise PrivilegeExceeded(f"{path}: the image records no credentials: cannot check "
                                f"--max-privilege {limit.spec}")


def check_recorded(records, path: str) -> None:
    """Every thread of every live process has exactly one creds record.  A thread without
    one would keep the restorer's own credentials (root, every capability): an image
    missing one was edited, and is refused whatever --max-privilege says (exit 2)."""
    from collections import Counter
    comm = {t.pid: t.comm for t in records.get("task", []) if t.state != "Z"}
    have = Counter((c.pid, c.tid) for c in records.get("creds", []))
    for th in records.get("thread", []):
        if th.pid in comm and have[(th.pid, th.tid)] != 1:
            where = f"pid {th.pid} ({comm[th.pid]})"
            if th.tid != th.pid:
                where += f" thread {th.tid}"
            raise PrivilegeExceeded(f"{path}: {where}: {have[(th.pid, th.tid)]} creds records "
                                    f"instead of one: the image was edited", pid=th.pid,
                                    tid=th.tid)


def _exceeds(c, limit: Limit) -> str | None:
    for prefix, values, least in (("uid", c.uids, limit.min_uid), ("gid", c.gids, limit.min_gid)):
        for name, value in zip(ID_FIELDS, values):
            if value < least:
                return f"{name}{prefix} {value}"
    for g in c.groups:
        if g < limit.min_gid:
            return f"supplementary group {g}"
    if limit.caps is not None:
        for name in CAP_FIELDS:
            extra = getattr(c, name) & ~limit.caps
            if extra:
                return f"{name} {cap_names(extra)}"
    return None
