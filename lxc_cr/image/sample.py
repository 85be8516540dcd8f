"""A small but complete demo image (tests, docs, trying ``lxc-cr inspect`` without root).

``write_demo_image(path)`` writes a tree of three processes (init, sh with two threads, a
child sleep) with namespaces, mappings, page data, shared fds and one record of every other
registered kind, plus one record of an unknown tag.
"""

from __future__ import annotations

import os
import zlib

from lxc_cr.image import fields, kinds
from lxc_cr.image.writer import ImageWriter

UNKNOWN_TAG = 0x7FF0


def _task(pid, ppid, comm, pgid=None, sid=None):
    return dict(pid=pid, ppid=ppid, pgid=pgid or pid, sid=sid or pid, nspids=[pid],
                host_pid=1000 + pid, comm=comm, state="S", exit_code=0, exit_signal=17,
                personality=0, umask=0o22, dumpable=1, no_new_privs=0, child_subreaper=0,
                pdeath_signal=0, cwd="/", root="/")


def _fd(pid, fd, kind, target, file_id, flags=0o2):
    return dict(pid=pid, fd=fd, kind=kind, flags=flags, cloexec=fd > 2, pos=0,
                target=target, file_id=file_id)


def write_demo_image(path, compress=None, **writer_args) -> None:
    K = kinds.by_name
    args = dict(source_kind="lxc", source_name="demo", xcr0=0x2E7, vdso_size=8192,
                vdso_hash=bytes(range(32)), kernel="6.1.0-demo", arch="x86_64",
                created=1_700_000_000_123_456_789)
    args.update(writer_args)
    with ImageWriter(path, compress=compress, **args) as w:
        for i, (nk, own) in enumerate([("pid", True), ("uts", True), ("ipc", True),
                                       ("net", True), ("mnt", True), ("cgroup", False),
                                       ("user", False)]):
            w.add(K("ns"), dict(kind=nk, ino=4026531836 + i, own=own))
        w.add(K("uts"), dict(hostname="demo", domainname="(none)"))
        w.add(K("net_link"), dict(index=1, name="lo", kind="loopback", flags=0x49,
                                  mtu=65536, address="00:00:00:00:00:00"))
        w.add(K("net_link"), dict(index=2, name="eth0", kind="veth", flags=0x1043, mtu=1500,
                                  address="02:42:ac:11:00:02"))
        procs = [(1, 0, "init", 1), (7, 1, "sh", 2), (9, 7, "sleep", 1)]
        for pid, ppid, comm, nthreads in procs:
            w.add(K("task"), _task(pid, ppid, comm, pgid=1 if pid != 9 else 7, sid=1))
            for t in range(nthreads):
                th = fields.sample(fields.node(K("thread").struct), pid + t)
                th.update(pid=pid, tid=pid + t * 100, nstids=[pid + t * 100], comm=comm)
                w.add(K("thread"), th)
            for j, (start, end, kind, path) in enumerate([
                    (0x400000, 0x402000, "file_private", "/bin/" + comm),
                    (0x7FFFF000, 0x80000000, "stack", "[stack]")]):
                w.add(K("vma"), dict(pid=pid, start=start, end=end, prot=3, shared=False,
                                     kind=kind, pgoff=0, dev=0x801, ino=100 + j, size=8192,
                                     mtime_ns=0, shmem_id=0, madv=0, path=path))
            ref = w.write_block([b"\x90" * 4096, bytes(range(256)) * 16])
            w.add(K("pages"), dict(pid=pid, shmem_id=0, vaddr=0x400000, npages=2, block=ref))
            data = bytes((pid * 7 + i) & 0xFF for i in range(4096))
            off = w.reserve_block(len(data))
            os.pwrite(w.fileno(), data, off)
            ref = w.finish_block(off, len(data), zlib.crc32(data))
            w.add(K("pages"), dict(pid=pid, shmem_id=0, vaddr=0x7FFFF000, npages=1,
                                   block=ref))
            w.add(K("fd"), _fd(pid, 0, "null", "/dev/null", 1))
            w.add(K("fd"), _fd(pid, 1, "pipe", "pipe:[5555]", 2, flags=0o1))
        w.add(K("fd"), _fd(7, 3, "reg", "/var/log/demo.log", 3, flags=0o2102))
        w.add(K("fd"), _fd(9, 4, "reg", "/var/log/demo.log", 3, flags=0o2102))
        done = {"ns", "uts", "net_link", "task", "thread", "vma", "pages", "fd"}
        for i, kind in enumerate(kinds.all_kinds()):
            if kind.name not in done:
                w.add(kind, fields.sample(fields.node(kind.struct), i))
        w.add_raw(UNKNOWN_TAG, b"a record from a newer lxc-cr")
