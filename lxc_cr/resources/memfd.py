"""memfd files held as fds: name, contents, size and seals.

``/proc/PID/fd/N`` reads ``/memfd:NAME (deleted)``.  Dump, once per inode: contents read
through ``/proc/PID/fd/N`` into a data block, ``F_GET_SEALS`` (``memfd``), and one
``memfd_fd`` record per open file description.  Restore (files.prepare, in the restorer):
``memfd_create(NAME, MFD_ALLOW_SEALING)``, contents, ``ftruncate``, each description
reopened through ``/proc/self/fd/N`` with its flags and offset, then ``F_ADD_SEALS`` (last,
so the seals cannot stop the refill).  A memfd that is also mapped by the same process is
refused (memory.py restores the mapping as a separate object).
"""

from __future__ import annotations

import fcntl
import os

import construct as cs

from lxc_cr.errors import Unsupported
from lxc_cr.image.kinds import record_kind
from lxc_cr.resources.records_common import BlockRef, Str

KINDS = ("memfd",)
F_ADD_SEALS, F_GET_SEALS = 1033, 1034
F_SEAL_SEAL = 1
MFD_CLOEXEC, MFD_ALLOW_SEALING = 1, 2
O_CREAT, O_TRUNC, O_EXCL, O_CLOEXEC = 0o100, 0o1000, 0o200, 0o2000000

MEMFD = record_kind(0x0314, "memfd", cs.Struct(
    "memfd_id" / cs.Int32ul,
    "ino" / cs.Int64ul,
    "name" / Str,                # NAME of /memfd:NAME
    "size" / cs.Int64ul,
    "seals" / cs.Int32ul,        # F_GET_SEALS (F_SEAL_SEAL 1, SHRINK 2, GROW 4, WRITE 8, ...)
    "block" / BlockRef,
), doc="a memfd held as an fd: contents and seals (once per inode)")

MEMFD_FD = record_kind(0x0315, "memfd_fd", cs.Struct(
    "file_id" / cs.Int32ul,
    "memfd_id" / cs.Int32ul,
), doc="an open file description of a memfd")


def _name(target: str) -> str:
    name = target[len("/memfd:"):]
    return name[:-len(" (deleted)")] if name.endswith(" (deleted)") else name


def check(ctx, task, d) -> list:
    if any(m.inode == d.ino and m.path.startswith("/memfd:") for m in (task.maps or ())):
        return [Unsupported(task.host_pid, task.stat.comm, "memfd both mapped and open",
                            fd=d.fd)]
    return []


def dump(ctx, task, d, file_id) -> None:
    from lxc_cr.resources import files
    ids = ctx.__dict__.setdefault("_memfd_ids", {})
    if d.ino not in ids:
        ids[d.ino] = len(ids) + 1
        chunks, (st, seals) = files.read_contents(
            task.host_pid, d.fd, extra=lambda f: fcntl.fcntl(f, F_GET_SEALS))
        size = st.st_size
        ctx.writer.add(MEMFD, dict(memfd_id=ids[d.ino], ino=d.ino, name=_name(d.target),
                                   size=size, seals=seals, block=ctx.writer.write_block(chunks)))
    if files.once(ctx, "memfd_fd", file_id):
        ctx.writer.add(MEMFD_FD, dict(file_id=file_id, memfd_id=ids[d.ino]))


def prepare(ctx) -> None:
    from lxc_cr.resources import files
    by_file = {m.file_id: m.memfd_id for m in ctx.records["memfd_fd"]}
    descs: dict[int, dict[int, object]] = {}
    for r in ctx.records["fd"]:
        if r.kind == "memfd" and r.file_id in by_file:
            descs.setdefault(by_file[r.file_id], {}).setdefault(r.file_id, r)
    for m in ctx.records["memfd"]:
        if m.memfd_id not in descs:
            continue
        base = os.memfd_create(m.name, MFD_CLOEXEC | MFD_ALLOW_SEALING)
        try:
            data = ctx.reader.read_block(m.block)
            off = 0
            while off < len(data):
                off += os.pwrite(base, data[off:], off)
            os.ftruncate(base, m.size)
            for file_id, r in descs[m.memfd_id].items():
                fd = os.open(f"/proc/self/fd/{base}",
                             r.flags & ~(O_CREAT | O_TRUNC | O_EXCL) | O_CLOEXEC)
                if r.pos:
                    os.lseek(fd, r.pos, os.SEEK_SET)
                files.inherit(ctx, file_id, fd)
            if m.seals:
                fcntl.fcntl(base, F_ADD_SEALS, m.seals)
        finally:
            os.close(base)
