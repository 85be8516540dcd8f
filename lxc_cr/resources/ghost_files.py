"""Deleted-but-open regular files ("ghost files", as CRIU calls them).

``/proc/PID/fd/N`` reads ``PATH (deleted)`` and still opens the file.  Dump, once per inode
(st_dev, st_ino): its contents (read through ``/proc/PID/fd/N``) into an image data block,
mode, owner and size (``ghost_file``), and one ``ghost_fd`` record per open file description
naming the inode.  Restore, in the restorer before any task is forked
(files.prepare): the file is created again at PATH as seen from the init's root
(``/proc/INIT/root/PATH``; if that name is taken, ``PATH.lxc-cr-ghost-INO`` in the same
directory), filled, given its mode and owner, each description opened from it with its
recorded flags and offset (passed to every task, files.inherit), then it is unlinked again.
"""

from __future__ import annotations

import os

import construct as cs

from lxc_cr.errors import RestoreFailed
from lxc_cr.image.kinds import record_kind
from lxc_cr.resources.records_common import BlockRef, Str

KINDS = ("deleted file",)
DELETED = " (deleted)"
O_CREAT, O_TRUNC, O_EXCL, O_CLOEXEC, O_NOCTTY = 0o100, 0o1000, 0o200, 0o2000000, 0o400

GHOST = record_kind(0x0312, "ghost_file", cs.Struct(
    "ghost_id" / cs.Int32ul,
    "dev" / cs.Int64ul, "ino" / cs.Int64ul,
    "path" / Str,                # where it was before it was unlinked
    "mode" / cs.Int32ul,         # st_mode
    "uid" / cs.Int32ul, "gid" / cs.Int32ul,
    "size" / cs.Int64ul,
    "block" / BlockRef,          # its contents
), doc="a deleted file still open: contents, mode, owner (once per inode)")

GHOST_FD = record_kind(0x0313, "ghost_fd", cs.Struct(
    "file_id" / cs.Int32ul,      # the fd records' file_id (open file description)
    "ghost_id" / cs.Int32ul,
), doc="an open file description of a deleted file")


def _path(target: str) -> str:
    return target[:-len(DELETED)] if target.endswith(DELETED) else target


def dump(ctx, task, d, file_id) -> None:
    from lxc_cr.resources import files
    ids = ctx.__dict__.setdefault("_ghost_ids", {})
    key = (d.dev, d.ino)
    if key not in ids:
        ids[key] = len(ids) + 1
        chunks, (st, _) = files.read_contents(task.host_pid, d.fd)
        ref = ctx.writer.write_block(chunks)
        ctx.writer.add(GHOST, dict(ghost_id=ids[key], dev=d.dev, ino=d.ino,
                                   path=_path(d.target), mode=st.st_mode, uid=st.st_uid,
                                   gid=st.st_gid, size=sum(map(len, chunks)), block=ref))
    if files.once(ctx, "ghost_fd", file_id):
        ctx.writer.add(GHOST_FD, dict(file_id=file_id, ghost_id=ids[key]))


def prepare(ctx) -> None:
    from lxc_cr.resources import files
    descs: dict[int, dict[int, object]] = {}
    by_file = {g.file_id: g.ghost_id for g in ctx.records["ghost_fd"]}
    for r in ctx.records["fd"]:
        if r.kind == "deleted file" and r.file_id in by_file:
            descs.setdefault(by_file[r.file_id], {}).setdefault(r.file_id, r)
    root = f"/proc/{ctx.init_remote.t.pid}/root"
    for g in ctx.records["ghost_file"]:
        if g.ghost_id not in descs:
            continue
        name, base = _create(root, g)
        try:
            data = ctx.reader.read_block(g.block)
            off = 0
            while off < len(data):
                off += os.pwrite(base, data[off:], off)
            os.fchown(base, g.uid, g.gid)
            os.fchmod(base, g.mode & 0o7777)
            for file_id, r in descs[g.ghost_id].items():
                flags = r.flags & ~(O_CREAT | O_TRUNC | O_EXCL) | O_NOCTTY | O_CLOEXEC
                fd = os.open(f"/proc/self/fd/{base}", flags)
                if r.pos:
                    os.lseek(fd, r.pos, os.SEEK_SET)
                files.inherit(ctx, file_id, fd)
        finally:
            os.unlink(name)
            os.close(base)


def _create(root: str, g) -> tuple[str, int]:
    for name in (g.path, f"{g.path}.lxc-cr-ghost-{g.ino}"):
        try:
            return root + name, os.open(root + name, os.O_RDWR | os.O_CREAT | os.O_EXCL |
                                        O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        except OSError as e:
            raise RestoreFailed(f"deleted file {g.path}: cannot recreate it to reopen it: "
                                f"{os.strerror(e.errno)}") from None
    raise RestoreFailed(f"deleted file {g.path}: both {g.path} and its ghost name exist")
