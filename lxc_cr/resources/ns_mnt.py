"""Mount namespace: the full mount table, tmpfs contents, and its re-creation.

Recorded from ``/proc/ROOT/mountinfo`` (fs/proc_namespace.c show_mountinfo)::

    36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    id parent major:minor root mount_point per-mount-options [optional...] - fstype source super

Each mount is classified at dump time against the dumper's own table:
  * ``host``   the same superblock and root at the same place in the dumper's table: the
               restorer's copy of its own table already has it;
  * ``create`` a new superblock of a kind lxc-cr can make (tmpfs, ramfs, proc, sysfs,
               mqueue, devpts, cgroup, cgroup2); tmpfs/ramfs contents are saved as a tar
               stream (GNU tar: modes, owners, xattrs, ACLs, sparse files) read through
               /proc/ROOT/root/MOUNTPOINT;
  * ``bind``   another view of a superblock that is mounted elsewhere (in the tree's table
               or in the dumper's): bind-mounted from there on restore.
Anything else (fuse, a bind whose source is gone, an overmounted tmpfs) is refused by
``check()``.  Restore runs in the restored init right after unshare(CLONE_NEWNS): mounts
of the copied table that the tree did not have are detached, the others are created in the
recorded order (parents and lower mounts first), then the result is compared with the
recorded table.  Propagation: shared and unbindable are re-applied; a mount the tree shared
with the host as a slave (``master:N``, e.g. ``unshare --propagation slave``) is made a
slave of the peer group the restorer's mount there is in (same place; its group id may
differ after a reboot); it stays private if that mount is no longer shared.  Slave
relations between the tree's own mounts are not recreated (they are private).
"""

from __future__ import annotations

import os
import subprocess

import construct as cs

from lxc_cr.errors import KernelError, OperationFailed, RestoreFailed, Unsupported
from lxc_cr.image.kinds import record_kind
from lxc_cr.kernel import sys as ksys
from lxc_cr.kernel.procfs import parse_mountinfo
from lxc_cr.resources.records_common import BlockRef, Str

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 0x20, 0x400, 0x800, 0x1000
MS_REC, MS_UNBINDABLE, MS_PRIVATE, MS_SHARED = 0x4000, 0x20000, 0x40000, 0x100000
MS_RELATIME, MS_STRICTATIME, MS_SLAVE = 0x200000, 0x1000000, 0x80000
MNT_DETACH = 2
_OPT_FLAGS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
              "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}
CREATE = ("tmpfs", "ramfs", "proc", "sysfs", "mqueue", "devpts", "cgroup", "cgroup2")
CONTENTS = ("tmpfs", "ramfs")
TAR = "tar"
TAR_OPTS = ["--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner"]

MountHow = cs.Enum(cs.Int8ul, host=0, create=1, bind=2)

MOUNT = record_kind(0x0420, "mount", cs.Struct(
    "mount_id" / cs.Int32ul,
    "parent_id" / cs.Int32ul,
    "major" / cs.Int32ul,
    "minor" / cs.Int32ul,
    "root" / Str,                # path of the mount's root inside its filesystem
    "mount_point" / Str,
    "options" / Str,             # per-mount options
    "optional" / cs.PrefixedArray(cs.VarInt, Str),   # shared:N, master:N, unbindable
    "fstype" / Str,
    "source" / Str,
    "super_options" / Str,
    "how" / MountHow,            # host: already in the restorer's table; create; bind
    "bind_source" / Str,         # how == bind: path to bind from (restorer's view)
), doc="one line of the tree's mountinfo, in mount order")

MOUNT_DATA = record_kind(0x0421, "mount_data", cs.Struct(
    "mount_id" / cs.Int32ul,
    "format" / Str,              # "tar" (GNU tar, --xattrs --acls --sparse --numeric-owner)
    "block" / BlockRef,
), doc="contents of a tmpfs/ramfs mount")


# --- classification (dump side) -----------------------------------------------------------

def _key(m) -> tuple:
    return (m.mount_point, m.major, m.minor, m.root, m.fstype)


def _under(root: str, base: str) -> str | None:
    """``root`` relative to ``base`` if it is inside it."""
    if base == "/":
        return root.lstrip("/")
    if root == base:
        return ""
    if root.startswith(base.rstrip("/") + "/"):
        return root[len(base.rstrip("/")) + 1:]
    return None


def classify(tree: list, mine: list) -> list[tuple[object, str, str, str | None]]:
    """(mount, how, bind_source, problem) for each mount of the tree's table."""
    host = {}
    for m in mine:
        host.setdefault(_key(m), m)
    out = []
    seen: list = []                  # earlier mounts of the tree (for binds)
    for i, m in enumerate(tree):
        problem = None
        how, src = "host", ""
        if m.root.endswith("//deleted"):
            how, problem = "bind", "bind mount whose source was deleted"
        elif _key(m) in host:
            how = "host"
        else:
            src = _bind_source(m, seen, tree_only=True)
            if src is not None:
                how = "bind"
            elif m.fstype in CREATE and (m.root == "/" or m.fstype not in CONTENTS):
                how = "create"
            else:
                src = _bind_source(m, mine, tree_only=False)
                if src is not None:
                    how = "bind"
                    if not os.path.lexists(src):
                        problem = f"bind mount of {src}, which no longer exists"
                elif m.fstype in CONTENTS:
                    how, problem = "create", f"{m.fstype} whose root {m.root} is not mounted"
                else:
                    how, problem = "create", f"{m.fstype} mount"
        if how == "create" and m.fstype in CONTENTS and not problem and any(
                later.mount_point == m.mount_point for later in tree[i + 1:]):
            problem = f"overmounted {m.fstype} (contents unreachable)"
        out.append((m, how, src or "", problem))
        seen.append(m)
    return out


def _bind_source(m, mounts, tree_only: bool) -> str | None:
    for o in mounts:
        if (o.major, o.minor) != (m.major, m.minor) or o is m:
            continue
        rel = _under(m.root, o.root)
        if rel is None:
            continue
        return os.path.join(o.mount_point, rel) if rel else o.mount_point
    return None


def check(proc, root) -> list[Unsupported]:
    out = []
    try:
        where = os.readlink(f"/proc/{root.host_pid}/root")
    except OSError:
        where = "/"
    if where != "/":
        out.append(Unsupported(root.host_pid, root.stat.comm, "root directory",
                               where=f"mount {where}",
                               reason="differs from lxc-cr's (chroot/pivot_root): "
                                      "not supported yet"))
        return out
    for m, _how, _src, problem in classify(proc.mountinfo(root.host_pid),
                                           proc.mountinfo(os.getpid())):
        if problem:
            out.append(Unsupported(root.host_pid, root.stat.comm, problem,
                                   where=f"mount {m.mount_point}"))
    return out


def dump(ctx, root) -> None:
    tree = ctx.proc.mountinfo(root.host_pid)
    for m, how, src, problem in classify(tree, ctx.proc.mountinfo(os.getpid())):
        if problem:
            raise Unsupported(root.host_pid, root.stat.comm, problem,
                              where=f"mount {m.mount_point}")
        ctx.writer.add(MOUNT, dict(
            mount_id=m.mount_id, parent_id=m.parent_id, major=m.major, minor=m.minor,
            root=m.root, mount_point=m.mount_point, options=m.options,
            optional=list(m.optional), fstype=m.fstype, source=m.source,
            super_options=m.super_options, how=how, bind_source=src))
        if how == "create" and m.fstype in CONTENTS:
            data = _tar_create(f"/proc/{root.host_pid}/root{m.mount_point}")
            ref = ctx.writer.write_block(data)
            ctx.writer.add(MOUNT_DATA, dict(mount_id=m.mount_id, format="tar", block=ref))


def _tar_create(path: str) -> bytes:
    r = subprocess.run([TAR, "-C", path, "--one-file-system", "--sparse", *TAR_OPTS,
                        "-cf", "-", "."], stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=600)
    if r.returncode not in (0, 1):          # 1: "some files differ" (changed while read)
        raise OperationFailed(f"tar of {path}: {r.stderr.decode(errors='replace')[:300]}")
    return r.stdout


# --- restore (in the restored init, right after unshare(CLONE_NEWNS)) -----------------------

def _mount(src, target, fstype, flags, data=None) -> None:
    enc = lambda s: None if s is None else os.fsencode(s)
    ksys.syscall("mount", enc(src), enc(target), enc(fstype), flags, enc(data))


def mount_flags(options: str) -> int:
    opts = options.split(",")
    flags = 0
    for o in opts:
        flags |= _OPT_FLAGS.get(o, 0)
    if not flags & (MS_RELATIME | MS_NOATIME):
        flags |= MS_STRICTATIME
    return flags


def _data(super_options: str) -> str:
    return ",".join(o for o in super_options.split(",") if o not in ("rw", "ro"))


def restore(records, reader, fresh_proc: bool = True) -> None:
    mounts = list(records.get("mount", ()))
    data = {d.mount_id: d for d in records.get("mount_data", ())}
    _propagation_start(mounts)
    if not mounts:                       # an image without a mount table: /proc only
        if fresh_proc:
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        return
    _drop_extra(mounts)
    created: set[str] = set()
    for m in mounts:
        how = str(m.how)
        if how == "host":
            continue
        target = m.mount_point
        if not os.path.isdir(target) and not os.path.exists(target):
            parent = _covering(os.path.dirname(target))
            if parent not in created:
                raise RestoreFailed(f"mount {target}: mount point missing")
            os.makedirs(target, exist_ok=True)
        flags = mount_flags(m.options)
        try:
            if how == "bind":
                _mount(m.bind_source, target, None, MS_BIND)
                if flags & ~(MS_RELATIME | MS_STRICTATIME):
                    _mount(None, target, None, MS_REMOUNT | MS_BIND | flags)
            else:
                super_ro = "ro" in m.super_options.split(",")
                _mount(m.source, target, m.fstype, flags & ~MS_RDONLY, _data(m.super_options))
                if m.mount_id in data:
                    _tar_extract(target, reader.read_block(data[m.mount_id].block))
                if super_ro:
                    _mount(None, target, None, MS_REMOUNT | MS_RDONLY, _data(m.super_options))
                if flags & MS_RDONLY:
                    _mount(None, target, None, MS_REMOUNT | MS_BIND | flags)
                created.add(target)
        except (OSError, KernelError) as e:
            raise RestoreFailed(f"mount {target} ({m.fstype}): {e}") from None
    for m in mounts:
        for o in m.optional:
            if o.startswith("shared:"):
                _mount(None, m.mount_point, None, MS_SHARED)
            elif o == "unbindable":
                _mount(None, m.mount_point, None, MS_UNBINDABLE)
    diff = compare(mounts, _read_self())
    if diff:
        raise RestoreFailed("mount table differs from the recorded one: " + "; ".join(diff[:5]))


def _propagation_start(mounts) -> None:
    """Cut the copied table off the restorer's: every mount private, except the mounts the
    tree shared with the host as slaves (``master:N``): those become slaves (MS_SLAVE) of
    the peer group the restorer's mount at that place is in, if it still is shared."""
    slaves = {m.mount_point for m in mounts if str(m.how) == "host"
              and any(o.startswith("master:") for o in m.optional)}
    if not slaves:
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        return
    _mount(None, "/", None, MS_REC | MS_SLAVE)     # nothing propagates back to the host
    for m in _read_self():
        if m.mount_point not in slaves:
            try:
                _mount(None, m.mount_point, None, MS_PRIVATE)
            except (OSError, KernelError):
                pass            # hidden under another mount: a slave, sends nothing back


def _read_self() -> list:
    with open("/proc/self/mountinfo", "rb") as f:
        return parse_mountinfo(f.read())


def _covering(path: str) -> str:
    """Mount point of the mount holding ``path``."""
    best = "/"
    for m in _read_self():
        mp = m.mount_point
        if (path == mp or path.startswith(mp.rstrip("/") + "/")) and len(mp) >= len(best):
            best = mp
    return best


def _host_key(m) -> tuple:
    return (m.mount_point, m.fstype, m.source, m.root)


def _drop_extra(mounts) -> None:
    """Detach the mounts of the copied table that the tree's table did not have."""
    want: dict[tuple, int] = {}
    for m in mounts:
        if str(m.how) == "host":
            want[_host_key(m)] = want.get(_host_key(m), 0) + 1
    extra = []
    for m in _read_self():
        k = _host_key(m)
        if want.get(k):
            want[k] -= 1
        else:
            extra.append(m)
    for m in sorted(extra, key=lambda m: -m.mount_id):
        try:
            ksys.syscall("umount2", os.fsencode(m.mount_point), MNT_DETACH)
        except KernelError:
            pass        # gone with a parent detached before it


def _tar_extract(target: str, data: bytes) -> None:
    r = subprocess.run([TAR, "-C", target, "-x", "-p", *TAR_OPTS, "-f", "-"], input=data,
                       capture_output=True, timeout=600)
    if r.returncode != 0:
        raise RestoreFailed(f"mount {target}: extracting its contents: "
                            f"{r.stderr.decode(errors='replace')[:300]}")


# --- comparison -----------------------------------------------------------------------------

_VOLATILE_SUPER = ("size=", "nr_inodes=")     # rounded by the kernel; compared loosely


def normalise(m) -> tuple:
    """What must be equal between the recorded and the restored mount: the place, the
    filesystem, the source, the root, per-mount options, super options, propagation kind."""
    prop = tuple(sorted(o.split(":")[0] for o in m.optional))
    return (m.mount_point, m.fstype, m.source, m.root, m.options, m.super_options, prop)


def compare(recorded, now) -> list[str]:
    """Differences between the recorded table and ``now``, recorded mounts in order.
    Mounts the tree shared with the host are compared by place and filesystem only."""
    pool = [normalise(m) for m in now]
    out = []
    for r in recorded:
        n = normalise(r)
        if str(r.how) == "host":
            hit = next((p for p in pool if p[:4] == n[:4]), None)
        else:
            hit = next((p for p in pool if p == n), None)
            if hit is None:
                near = next((p for p in pool if p[:2] == n[:2]), None)
                out.append(f"{r.mount_point} ({r.fstype}): recorded {n[4]} {n[5]} "
                           f"{'/'.join(n[6])}, " +
                           (f"restored {near[4]} {near[5]} {'/'.join(near[6])}" if near
                            else "missing"))
                continue
        if hit is None:
            out.append(f"{r.mount_point} ({r.fstype}): missing")
            continue
        pool.remove(hit)
    return out
