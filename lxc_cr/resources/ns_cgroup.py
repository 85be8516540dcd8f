"""Cgroups: where each task of the tree sits, relative to the root task's cgroup (the
"container root"), the sub-cgroups below it and their limits.

Sources: /proc/PID/cgroup, one line per hierarchy, ``hierarchy-id:controllers:path``
(``4:memory:/lxc.payload.c1/sub``, ``0::/`` for the v2 unified hierarchy; paths as the
dumper's cgroup namespace sees them), the hierarchies' mounts in /proc/self/mountinfo
(``cgroup`` with the controllers, or ``name=...``, among its super options; ``cgroup2``),
and the limit files of each cgroup directory (LIMIT_FILES; v1 and v2 names).  A hierarchy
is named by its controllers as /proc/PID/cgroup lists them (``memory``, ``name=systemd``,
``""`` for v2).

Recorded, per hierarchy:
  * CGROUP_TASK: each process not in the root's cgroup, with its path below it (a task
    whose cgroup is not below the root's, or a thread in another cgroup than its process,
    is refused by check);
  * CGROUP_LIMIT: each limit file of the root's cgroup ("") and of every cgroup below it
    that holds a task of the tree, with their parents; when the tree owns its root cgroup
    (it differs from the dumper's), every cgroup below it, empty ones included.

Restore: the restored tree's root cgroup is the one its init is in: for ``tree restore``
the restorer's own cgroup (run the restore inside a cgroup made for the tree, e.g.
``echo $$ > DIR/cgroup.procs``), for LXC and libvirt the container's cgroup its manager
made.  The recorded sub-cgroups are created below it, top-down (an existing directory is
reused; those made are removed again if the restore fails), each recorded limit that
differs from the fresh directory's value is written (cgroup.subtree_control and
cpuset.cpus/mems first), and every process is moved into its cgroup (its pid into
cgroup.procs) once rebuilt, before it is released.  The root cgroup's
own limits are the restorer's or the manager's and are left alone; nothing is created in
a hierarchy's top-level cgroup, and the host's cgroup mounts are only read.
"""

from __future__ import annotations

import os

import construct as cs

from lxc_cr.errors import RestoreFailed, TaskGone, Unsupported
from lxc_cr.image.kinds import record_kind
from lxc_cr.resources.records_common import Str

CGROUP_TASK = record_kind(0x0460, "cgroup_task", cs.Struct(
    "pid" / cs.Int32ul,
    "cgroups" / cs.PrefixedArray(cs.VarInt, cs.Struct(
        "hierarchy" / Str,       # controllers as in /proc/PID/cgroup; "" for v2
        "path" / Str,            # below the root's cgroup, without a leading /
    )),
), doc="a process's cgroups that differ from the root task's (relative paths)")

CGROUP_LIMIT = record_kind(0x0461, "cgroup_limit", cs.Struct(
    "hierarchy" / Str,
    "path" / Str,                # below the root's cgroup; "" for the root's own
    "file" / Str,                # memory.max, pids.max, cgroup.subtree_control, ...
    "value" / Str,               # as read, without the trailing newline
), doc="a cgroup below (or at) the tree's root cgroup and one of its limit files")

# written in this order; a file absent from a directory is skipped
LIMIT_FILES = (
    "cgroup.subtree_control", "cpuset.cpus", "cpuset.mems",
    "memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.soft_limit_in_bytes",
    "memory.max", "memory.high", "memory.low", "memory.min", "memory.swap.max",
    "pids.max", "cpu.shares", "cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.max",
    "cpu.weight", "blkio.weight", "io.max", "io.weight",
)


def hierarchies(text: str) -> dict[str, str]:
    """{controllers: path} of a /proc/PID/cgroup text."""
    out = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out[parts[1]] = parts[2]
    return out


def mounts(mountinfo: str, keys) -> dict[str, str]:
    """{hierarchy: mount point} of those of ``keys`` mounted at their root: ``cgroup2``
    for "", else the ``cgroup`` mount whose super options hold all its controllers."""
    out = {}
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if len(f) < 5 or len(r) < 3 or f[3] != "/" or r[0] not in ("cgroup", "cgroup2"):
            continue
        opts = set(r[2].split(","))
        for h in keys:
            if h not in out and (r[0] == "cgroup2") == (h == "") and \
                    (h == "" or set(h.split(",")) <= opts):
                out[h] = f[4]
    return out


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _host_mounts(keys) -> dict[str, str]:
    return mounts(_read("/proc/self/mountinfo"), keys)


def _cgroups(pid: int, tid: int | None = None) -> dict[str, str]:
    path = f"/proc/{pid}/task/{tid}/cgroup" if tid else f"/proc/{pid}/cgroup"
    try:
        return hierarchies(_read(path))
    except FileNotFoundError:
        raise TaskGone(pid) from None


def _below(path: str, root: str) -> str | None:
    """path relative to root ("" for root itself), None if it is not below root."""
    if path == root:
        return ""
    prefix = root.rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else None


# --- check / dump -------------------------------------------------------------------------

def check(proc, tasks) -> list[Unsupported]:
    out = []
    root = _cgroups(tasks[0].host_pid)
    for t in tasks:
        if t.zombie:
            continue
        try:
            mine = _cgroups(t.host_pid)
            for h, path in mine.items():
                if h in root and _below(path, root[h]) is None:
                    if proc.exiting(t.host_pid):
                        # cgroup_exit() has already put it back in the root of every v1
                        # hierarchy (a container's short-lived sleep): the freeze finds it
                        # gone or a zombie
                        break
                    out.append(Unsupported(t.host_pid, t.stat.comm, f"cgroup {h or 'v2'}",
                                           reason=f"{path} is not below the root's cgroup "
                                                  f"{root[h]}: not supported"))
            for tid in proc.tids(t.host_pid):
                if tid != t.host_pid and _cgroups(t.host_pid, tid) != mine:
                    out.append(Unsupported(t.host_pid, t.stat.comm, "cgroup",
                                           reason=f"thread {tid} is in other cgroups than "
                                                  f"its process: not supported"))
        except (TaskGone, OSError):
            continue
    return out


def dump(ctx, tasks) -> None:
    root = _cgroups(tasks[0].host_pid)
    me = _cgroups(os.getpid())
    where = _host_mounts(root)
    dirs: dict[str, set[str]] = {h: {""} for h in root}
    for t in tasks:
        if t.zombie:
            continue
        rel = []
        for h, path in _cgroups(t.host_pid).items():
            sub = _below(path, root.get(h, "/"))
            if sub:
                rel.append(dict(hierarchy=h, path=sub))
                parts = sub.split("/")
                dirs[h].update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
        if rel:
            ctx.writer.add(CGROUP_TASK, dict(pid=t.pid, cgroups=rel))
    for h, base in sorted(root.items()):
        mnt = where.get(h)
        if mnt is None:
            continue
        top = f"{mnt}{base.rstrip('/')}"
        if base not in ("/", me.get(h)):            # the tree's own cgroup: all below it
            for d, subdirs, _files in os.walk(top):
                dirs[h].update(os.path.relpath(os.path.join(d, s), top) for s in subdirs)
        for sub in sorted(dirs[h], key=lambda p: (p.count("/"), p)):
            d = f"{top}/{sub}" if sub else top
            for name in LIMIT_FILES:
                try:
                    value = _read(f"{d}/{name}").rstrip("\n")
                except OSError:
                    continue
                ctx.writer.add(CGROUP_LIMIT, dict(hierarchy=h, path=sub, file=name,
                                                  value=value))


# --- restore ------------------------------------------------------------------------------

def _base(records, init_pid: int) -> dict[str, str]:
    """{hierarchy: directory of the init's cgroup} for every hierarchy the image needs."""
    need = {c.hierarchy for r in records.get("cgroup_task", ()) for c in r.cgroups}
    need |= {r.hierarchy for r in records.get("cgroup_limit", ()) if r.path}
    if not need:
        return {}
    init = _cgroups(init_pid)
    where = _host_mounts(need)
    out = {}
    for h in sorted(need):
        if h not in init or h not in where:
            raise RestoreFailed(f"cgroup {h or 'v2'}: the image places tasks in sub-cgroups "
                                f"of a hierarchy this host does not mount")
        if init[h] == "/":
            raise RestoreFailed(f"cgroup {h or 'v2'}: the restored tree would be in the "
                                f"top-level cgroup; run the restore inside a cgroup for the "
                                f"tree (its sub-cgroups are created below it)")
        out[h] = f"{where[h]}{init[h].rstrip('/')}"
    return out


def prepare(ctx, init_pid: int) -> None:
    """Create the recorded sub-cgroups below the init's cgroup and set their limits,
    before any task is forked."""
    ctx.cgroup_base = _base(ctx.records, init_pid)
    ctx.cgroup_made = []                 # directories created here, for cleanup()
    limits = [r for r in ctx.records.get("cgroup_limit", ()) if r.path]
    paths = {(c.hierarchy, c.path) for r in ctx.records.get("cgroup_task", ())
             for c in r.cgroups} | {(r.hierarchy, r.path) for r in limits}
    for h, sub in sorted(paths, key=lambda p: (p[1].count("/"), p)):
        d = f"{ctx.cgroup_base[h]}/{sub}"
        try:
            if not os.path.isdir(d):
                os.mkdir(d)
                ctx.cgroup_made.append(d)
        except OSError as e:
            raise RestoreFailed(f"cgroup {h or 'v2'}: cannot create {d}: "
                                f"{e.strerror}") from None
        for r in limits:
            if (r.hierarchy, r.path) == (h, sub):
                _set_limit(d, r.file, r.value)


def cleanup(ctx) -> None:
    """After a failed restore (its processes killed and reaped): remove the directories
    prepare() created, deepest first; one still in use stays."""
    for d in reversed(getattr(ctx, "cgroup_made", [])):
        try:
            os.rmdir(d)
        except OSError:
            pass


def _set_limit(d: str, name: str, value: str) -> None:
    path = f"{d}/{name}"
    try:
        if _read(path).rstrip("\n") == value:
            return
        if name == "cgroup.subtree_control":
            value = " ".join(f"+{c}" for c in value.split())
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise RestoreFailed(f"cgroup limit {path} = {value!r}: {e.strerror}") from None


def place(ctx, lives) -> None:
    """Move each rebuilt process into its recorded cgroups (all its threads follow)."""
    base = getattr(ctx, "cgroup_base", {})
    for live in lives:
        if live.rec is None or live.rec.state == "Z" or not live.threads:
            continue
        for r in ctx.by_pid("cgroup_task", live.pid):
            for c in r.cgroups:
                path = f"{base[c.hierarchy]}/{c.path}/cgroup.procs"
                try:
                    with open(path, "w") as f:
                        f.write(str(live.host_pid))
                except OSError as e:
                    raise RestoreFailed(f"pid {live.pid}: moving it to {path}: "
                                        f"{e.strerror}") from None
