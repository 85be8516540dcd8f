"""Memory: the mappings of a process, their dumped pages and the mm fields.

Dump (kernel-facts "Memory"):
  * ``/proc/PID/maps`` lines ``start-end perms offset major:minor inode path``;
  * pages selected with the PAGEMAP_SCAN ioctl (kernel/pagemap.py; /proc/PID/pagemap on
    older kernels): private anonymous memory: present or swapped pages, except the shared
    zero page.  Private file mappings: only the task's own copies (not file pages).
    Shared file mappings: nothing.
  * shared anonymous memory (``/dev/zero (deleted)``, ``/memfd:...``) is one object per
    inode, read once through ``/proc/PID/map_files/START-END`` with SEEK_DATA/SEEK_HOLE;
  * pages are read with large preadv on ``/proc/PID/mem`` in runs of adjacent pages;
  * SysV shm attachments (``/SYSV%08x``, the inode field is the shm id) record the id and
    no pages: the segment is dumped once by sysv_ipc and re-attached with shmat().

Restore, executed by the task itself through injected syscalls: unmap what the task had,
move [vvar_vclock]/[vvar]/[vdso] to the recorded addresses, mmap every recorded mapping,
write the dumped pages with pwritev on ``/proc/PID/mem``, then PR_SET_MM_MAP.
"""

from __future__ import annotations

import mmap
import os
import time
import struct

from lxc_cr.errors import ImageError, IncompatibleImage, RestoreFailed, Unsupported
from lxc_cr import progress
from lxc_cr.kernel import pagemap
from lxc_cr.lightimport import sha256
from lxc_cr.resources.memory_records import MM, PAGES, SHMEM, VMA

PAGE = 4096
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x01, 0x02, 0x10, 0x20
MAP_GROWSDOWN, MAP_NORESERVE, MAP_FIXED_NOREPLACE = 0x100, 0x4000, 0x100000
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2
PR_SET_MM, PR_SET_MM_MAP, PR_SET_MM_MAP_SIZE = 35, 14, 15
O_RDONLY, O_RDWR, O_CLOEXEC = 0, 2, 0o2000000
AT_FDCWD = -100
SHM_RDONLY, SHM_REMAP, SHM_EXEC = 0o10000, 0o40000, 0o100000

SPECIAL = {"[vdso]": "vdso", "[vvar]": "vvar", "[vvar_vclock]": "vvar_vclock"}
# VmFlags (smaps) tokens kept in the vma record's ``madv`` bits, and how to restore them.
MADV_BITS = {"gd": 1, "dc": 2, "wf": 4, "hg": 8, "nh": 16, "dd": 32, "mg": 64}
MADVISE = {2: 10, 4: 18, 8: 14, 16: 15, 32: 16, 64: 12}   # bit -> MADV_* (DONTFORK ...)
TASK_SIZE = 0x7FFFFFFFF000  # x86_64, 4-level page tables
MAX_RUN = 16 << 20          # bytes per data block (and per reused read buffer)


def classify(m) -> str | None:
    """The vma kind of a maps entry; None for what is never recorded ([vsyscall])."""
    if m.path == "[vsyscall]":
        return None
    if m.path in SPECIAL:
        return SPECIAL[m.path]
    if m.path == "[heap]":
        return "heap"
    if m.path == "[stack]":
        return "stack"
    if m.path.startswith("/SYSV"):
        return "sysv_shm"
    if m.shared and (m.path.startswith("/dev/zero") or m.path.startswith("/memfd:")):
        return "shmem"
    if m.inode == 0 or m.path == "" or m.path.startswith("[anon"):
        return "shmem" if m.shared else "anon"
    return "file_shared" if m.shared else "file_private"


def check(proc, pid: int, comm: str, maps) -> list[Unsupported]:
    """Everything in this address space that the memory module cannot dump."""
    out = []
    prev = None
    for prev, m in zip([None] + list(maps), maps):
        kind = classify(m)
        if kind == "sysv_shm":
            if m.pgoff and not (prev is not None and classify(prev) == "sysv_shm"
                                and prev.inode == m.inode and prev.end == m.start):
                out.append(Unsupported(pid, comm, "partial SysV shared memory attachment",
                                       where=f"mapping {m.start:#x} shmid {m.inode}"))
        elif kind in ("file_private", "file_shared") and m.deleted:
            out.append(Unsupported(pid, comm, "mapping of a deleted file",
                                   where=f"mapping {m.start:#x} {m.path}"))
        elif kind == "file_shared" and m.path.startswith("/memfd:"):
            pass
        elif kind == "anon" and m.shared:
            out.append(Unsupported(pid, comm, "shared anonymous mapping without inode",
                                   where=f"mapping {m.start:#x}"))
    return out


def vdso_fingerprint(mem_fd: int, maps, pid: int) -> tuple[int, bytes]:
    """(size, sha256) of the [vdso] mapping, to refuse a restore on a different vdso."""
    for m in maps:
        if m.path == "[vdso]":
            size = m.end - m.start
            return size, sha256(os.pread(mem_fd, size, m.start)).digest()
    return 0, b"\0" * 32


# --- dump ---------------------------------------------------------------------------------

def _dump_runs(writer, mem_fd, pid, shmem_id, base, runs, record_base=None, stats=None):
    """Read each run of pages from mem_fd (at base + page*4096) and write PAGES records.
    Runs are cut into pieces of at most MAX_RUN bytes (see _pipelined).  ``stats``: a
    dict whose "memwrite_time" (microseconds) grows by the time spent writing blocks."""
    rb = base if record_base is None else record_base
    pieces = []
    for first, count in runs:
        while count:
            n = min(count, MAX_RUN // PAGE)
            pieces.append((first, n))
            first += n
            count -= n

    def read(piece, view):
        first, _n = piece
        got = os.preadv(mem_fd, [view], base + first * PAGE)
        if got != len(view):
            raise RestoreFailed(f"pid {pid}: short read of {len(view)} bytes at "
                                f"{base + first * PAGE:#x}", pid=pid)

    def write(piece, view):
        first, n = piece
        t0 = time.monotonic()
        ref = writer.write_block(view)
        writer.add(PAGES, dict(pid=pid, shmem_id=shmem_id, vaddr=rb + first * PAGE,
                               npages=n, block=ref))
        if stats is not None:
            stats["memwrite_time"] = stats.get("memwrite_time", 0) + \
                int((time.monotonic() - t0) * 1e6)

    _pipelined(pieces, [n * PAGE for _, n in pieces], read, write)


def _pipelined(items, sizes, read, write) -> None:
    """read(item, view) then write(item, view) for every item, in order.  Reading the next
    item (preadv on /proc/PID/mem, or on the image) overlaps writing the current one
    (crc32 + pwritev): both release the GIL.  Two buffers are reused for the whole run, so
    nothing is allocated or zeroed per item and there is no per-page Python work.  read may
    instead return a MappedBlock (the image's bytes mapped, ImageReader.map_block): write
    then gets its view, and it is closed after.  Without a reader thread (see start_reader)
    the same work runs in turn, as it does for at most _OVERLAP_FROM bytes in all."""
    if not items:
        return
    bufs = _buffers(max(sizes))
    views = [bufs[i % 2][:size] for i, size in enumerate(sizes)]

    def step(i, got):
        try:
            write(items[i], views[i] if got is None else got.view)
        finally:
            if got is not None:
                got.close()
        progress.advance(sizes[i])

    # a handoff to the reader thread and back costs more than reading a few pages: a
    # mapping with little data (most of a process's) is read in turn
    pool = _reader_pool() if sum(sizes) > _OVERLAP_FROM else None
    if pool is None:
        for i, item in enumerate(items):
            step(i, read(item, views[i]))
        return
    pending = pool.submit(read, items[0], views[0])
    for i in range(len(items)):
        got = pending.result()
        if i + 1 < len(items):
            pending = pool.submit(read, items[i + 1], views[i + 1])
        try:
            step(i, got)
        except BaseException:
            if i + 1 < len(items):
                try:                          # let the read in flight finish first
                    late = pending.result()
                except BaseException:
                    late = None
                if late is not None:
                    late.close()
            raise


_pool = None
_bufs: list[memoryview] = []
_OVERLAP_FROM = 1 << 20          # bytes of one mapping (or shmem object) worth a reader thread


def _reader_pool():
    """The reader thread, or None if no thread can be started: once the restorer has
    unshared its pid namespace, clone(CLONE_THREAD) fails with EINVAL (pid_for_children
    differs), so restore starts it first (start_reader)."""
    global _pool
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lxc-cr-pages")
        try:
            pool.submit(_unpinned).result()        # start the thread now
        except RuntimeError:
            return None
        _pool = pool
    return _pool


def _unpinned() -> None:
    """The reader runs beside the tracer, not on the CPU a Colocation pinned it to."""
    from lxc_cr.kernel.ptrace import free_affinity
    try:
        os.sched_setaffinity(0, free_affinity())
    except OSError:
        pass


def start_reader() -> None:
    _reader_pool()


def _buffers(size: int) -> list[memoryview]:
    """Two page buffers of at least ``size`` bytes, kept for the life of the process:
    anonymous mappings, so that only the pages used are ever touched (a bytearray is
    zeroed whole: 7 ms per 16 MiB)."""
    global _bufs
    if not _bufs or _bufs[0].nbytes < size:
        _bufs = [memoryview(mmap.mmap(-1, size)), memoryview(mmap.mmap(-1, size))]
    return _bufs


def dump(ctx, task, remote) -> None:
    """Write the MM, VMA and PAGES records of ``task`` (stopped, ``remote`` on its leader)."""
    pid = task.pid
    hp = task.host_pid
    st = task.stat
    brk = remote.call("brk", 0)
    auxv = ctx.proc.auxv(hp)
    exe = ctx.proc.readlink(hp, "exe")
    try:
        est = os.stat(f"/proc/{hp}/exe")
        exe_dev, exe_ino = est.st_dev, est.st_ino
    except OSError:
        exe_dev = exe_ino = 0
    ctx.writer.add(MM, dict(
        pid=pid, start_code=st.start_code, end_code=st.end_code, start_data=st.start_data,
        end_data=st.end_data, start_brk=st.start_brk, brk=brk, start_stack=st.start_stack,
        arg_start=st.arg_start, arg_end=st.arg_end, env_start=st.env_start,
        env_end=st.env_end, auxv=auxv, exe=exe, exe_dev=exe_dev, exe_ino=exe_ino))
    vmflags = ctx.proc_vmflags(hp)
    pagemap_fd = os.open(f"/proc/{hp}/pagemap", os.O_RDONLY)
    t0 = time.monotonic()
    try:
        for m in task.maps:
            kind = classify(m)
            if kind is None or m.start == task.scratch:
                continue
            madv = 0
            for tok in vmflags.get(m.start, ()):
                madv |= MADV_BITS.get(tok, 0)
            dev = ino = size = mtime = 0
            shmem_id = 0
            if kind in ("file_private", "file_shared"):
                try:
                    fst = os.stat(f"/proc/{hp}/map_files/{m.start:x}-{m.end:x}")
                except OSError:
                    fst = os.stat(f"/proc/{hp}/root{m.path}")
                dev, ino, size, mtime = fst.st_dev, fst.st_ino, fst.st_size, fst.st_mtime_ns
            if kind == "shmem":
                shmem_id = _dump_shmem(ctx, hp, m)
            elif kind == "sysv_shm":
                ino = m.inode        # the shm id; contents are dumped by sysv_ipc
            ctx.writer.add(VMA, dict(pid=pid, start=m.start, end=m.end, prot=m.prot,
                                     shared=m.shared, kind=kind, pgoff=m.pgoff, dev=dev,
                                     ino=ino, size=size, mtime_ns=mtime, shmem_id=shmem_id,
                                     madv=madv, path=m.path))
            if kind not in ("anon", "heap", "stack", "file_private"):
                continue
            runs, scanned = pagemap.data_runs(pagemap_fd, m.start, m.end,
                                              private_file=kind == "file_private")
            ctx.stats["pages_scanned"] += scanned
            ctx.stats["pages_written"] += sum(c for _, c in runs)
            _dump_runs(ctx.writer, task.mem_fd, pid, 0, m.start, runs, stats=ctx.stats)
    finally:
        os.close(pagemap_fd)
        ctx.stats["memdump_time"] = ctx.stats.get("memdump_time", 0) + \
            int((time.monotonic() - t0) * 1e6)


def _dump_shmem(ctx, host_pid: int, m) -> int:
    """Dump a shared anonymous object once; return its id."""
    if m.inode in ctx.shmem_ids:
        return ctx.shmem_ids[m.inode]
    sid = len(ctx.shmem_ids) + 1
    ctx.shmem_ids[m.inode] = sid
    fd = os.open(f"/proc/{host_pid}/map_files/{m.start:x}-{m.end:x}", os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        ctx.writer.add(SHMEM, dict(shmem_id=sid, size=size, ino=m.inode))
        runs = []
        off = 0
        while off < size:
            try:
                data = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            first = data // PAGE
            last = (min(hole, size) + PAGE - 1) // PAGE
            runs.append((first, last - first))
            off = last * PAGE
        _dump_runs(ctx.writer, fd, 0, sid, 0, runs, stats=ctx.stats)
    finally:
        os.close(fd)
    return sid


# --- restore ------------------------------------------------------------------------------

def prepare_shmem(ctx, init_remote, init_pid: int) -> dict[int, int]:
    """One memfd per shmem object, created inside the init by an injected memfd_create and
    filled through /proc/INIT/fd/N; every process forked from the init inherits it.
    Returns {shmem_id: fd number in the tasks}."""
    fds = {}
    for obj in ctx.records["shmem"]:
        name = ctx.scratch + 2048
        init_remote.write(name, f"lxc-cr-shmem-{obj.shmem_id}".encode() + b"\0")
        fd = ctx.inherit_fd(init_remote.call("memfd_create", name, 0))
        init_remote.call("ftruncate", fd, obj.size)
        fds[obj.shmem_id] = fd
        with open(f"/proc/{init_pid}/fd/{fd}", "r+b", buffering=0) as f:
            for p in ctx.records["pages"]:
                if p.shmem_id == obj.shmem_id:
                    buf = bytearray(p.npages * PAGE)
                    ctx.reader.read_block_into(p.block, buf, check=True)
                    os.pwrite(f.fileno(), buf, p.vaddr)
    return fds


def free_address(ranges: list[tuple[int, int]], size: int,
                 top: int = 0x7E0000000000, floor: int = 0x10000000000) -> int:
    """A page-aligned address where [addr, addr+size) overlaps none of ``ranges``."""
    addr = top
    step = 1 << 30
    while addr > floor:
        if all(addr + size <= s or addr >= e for s, e in ranges):
            return addr
        addr -= step
    raise RestoreFailed("no free address range for the restore scratch page")


def restore(ctx, task, remote) -> None:
    """Rebuild the address space of ``task`` (a stopped clone of the restorer)."""
    pid = task.pid
    vmas = ctx.by_pid("vma", pid)
    mm = ctx.one("mm", pid)
    scratch = ctx.scratch
    current = ctx.proc.maps(task.host_pid)
    # 1. unmap everything but the scratch page and the special mappings
    keep = [(m.start, m.end) for m in current if m.path in SPECIAL]
    keep.append((scratch, scratch + PAGE))
    keep.sort()
    cursor = 0
    for s, e in keep + [(TASK_SIZE, TASK_SIZE)]:
        if s > cursor:
            remote.call("munmap", cursor, s - cursor)
        cursor = max(cursor, e)
    # 2. move the special mappings to the recorded addresses
    _move_specials(ctx, remote, current, vmas, scratch)
    # 3. map every recorded mapping
    for v in vmas:
        kind = str(v.kind)
        if kind in SPECIAL.values():
            continue
        length = v.end - v.start
        if kind in ("anon", "heap", "stack"):
            flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE
            if v.madv & MADV_BITS["gd"]:
                flags |= MAP_GROWSDOWN
            addr = remote.call("mmap", v.start, length, v.prot, flags, -1, 0)
        elif kind == "sysv_shm":
            addr = _attach_sysv(remote, v, length)
        elif kind == "shmem":
            fd = ctx.shmem_fds[v.shmem_id]
            addr = remote.call("mmap", v.start, length, v.prot,
                               MAP_SHARED | MAP_FIXED, fd, v.pgoff)
        else:
            fd = _open_checked(ctx, remote, task, v.path, O_RDWR if v.shared and v.prot & PROT_WRITE else O_RDONLY,
                               v.dev, v.ino, v.size, v.mtime_ns)
            try:
                addr = remote.call("mmap", v.start, length, v.prot,
                                   (MAP_SHARED if v.shared else MAP_PRIVATE) | MAP_FIXED, fd, v.pgoff)
            finally:
                remote.call("close", fd)
        if addr != v.start:
            raise RestoreFailed(f"pid {pid}: mmap at {v.start:#x} gave {addr:#x}", pid=pid)
        for bit, advice in MADVISE.items():
            if v.madv & bit:
                try:
                    remote.call("madvise", v.start, length, advice)
                except Exception:
                    pass
    # 4. the dumped pages
    _restore_pages(ctx, task, [p for p in ctx.by_pid("pages", pid) if not p.shmem_id])
    # 5. the mm fields
    _set_mm(ctx, remote, task, mm)


def check_pages(ctx) -> None:
    """Every PAGES record's block holds exactly its pages (restore._validate: before any
    process is created)."""
    for p in ctx.records["pages"]:
        _page_bytes(ctx, p)


def _page_bytes(ctx, p) -> int:
    """The bytes of a PAGES record, which its block must hold exactly."""
    size = p.npages * PAGE
    if not p.npages or p.block.length != size:
        raise ImageError(ctx.reader.path, f"pages of pid {p.pid} at {p.vaddr:#x}: "
                         f"{p.npages} pages, but a block of {p.block.length} bytes",
                         p.block.offset, "block")
    return size


def _restore_pages(ctx, task, pages) -> None:
    """Write the dumped pages into the task through /proc/PID/mem, each block's crc
    checked first.  A raw block of a plain image is written from the image's page cache
    (ImageReader.map_block): one copy, not two (1 GiB: 0.43 s instead of 0.62 s here).
    Each block holds exactly its record's pages (check_pages, before the restore began)."""
    sizes = [p.npages * PAGE for p in pages]

    def read(p, view):
        mapped = ctx.reader.map_block(p.block, check=True)
        if mapped is None:
            ctx.reader.read_block_into(p.block, view, check=True)
        return mapped

    def write(p, view):
        if os.pwritev(task.mem_fd, [view], p.vaddr) != len(view):
            raise RestoreFailed(f"pid {task.pid}: short write of pages at {p.vaddr:#x}",
                                pid=task.pid)
        ctx.stats["pages_restored"] += p.npages

    _pipelined(pages, sizes, read, write)


def _attach_sysv(remote, v, length) -> int:
    """A SysV shm attachment: shmat(shmid, addr) for the mapping at offset 0 (the kernel
    maps the whole segment), then the recorded protection of this piece."""
    if v.pgoff == 0:
        flags = SHM_REMAP | (0 if v.prot & PROT_WRITE else SHM_RDONLY)
        if v.prot & PROT_EXEC:
            flags |= SHM_EXEC
        addr = remote.call("shmat", v.ino, v.start, flags)
        if addr != v.start:
            return addr
    remote.call("mprotect", v.start, length, v.prot)
    return v.start


def _open_checked(ctx, remote, task, path, flags, dev, ino, size, mtime_ns) -> int:
    remote.write(ctx.scratch + 2048, path.encode() + b"\0")
    fd = remote.call("openat", AT_FDCWD, ctx.scratch + 2048, flags | O_CLOEXEC, 0)
    st = os.stat(f"/proc/{task.host_pid}/fd/{fd}")
    if size and (st.st_size != size or st.st_mtime_ns != mtime_ns):
        remote.call("close", fd)
        raise RestoreFailed(f"pid {task.pid}: {path}: file changed since the checkpoint "
                            f"(size {st.st_size} vs {size})", pid=task.pid)
    return fd


def _move_specials(ctx, remote, current, vmas, scratch) -> None:
    cur = {m.path: (m.start, m.end) for m in current if m.path in SPECIAL}
    want = {("[" + str(v.kind) + "]"): (v.start, v.end) for v in vmas
            if str(v.kind) in SPECIAL.values()}
    for name, (s, e) in want.items():
        if name not in cur:
            raise IncompatibleImage(ctx.path, f"this kernel has no {name} mapping")
        if cur[name][1] - cur[name][0] != e - s:
            raise IncompatibleImage(ctx.path, f"{name} is {cur[name][1] - cur[name][0]} bytes "
                                    f"here, {e - s} in the image (different kernel)")
    if all(cur.get(n) == want[n] for n in want):
        return
    # park every special mapping somewhere free first, then move it to its place
    busy = [(s, e) for s, e in cur.values()] + list(want.values()) + [(scratch, scratch + PAGE)]
    busy += [(v.start, v.end) for v in vmas]
    parked = {}
    for name, (s, e) in cur.items():
        tmp = free_address(busy, e - s, top=0x7D0000000000)
        busy.append((tmp, tmp + e - s))
        remote.call("mremap", s, e - s, e - s, MREMAP_MAYMOVE | MREMAP_FIXED, tmp)
        parked[name] = tmp
    for name, (s, e) in want.items():
        remote.call("mremap", parked.pop(name), e - s, e - s, MREMAP_MAYMOVE | MREMAP_FIXED, s)
    for name, tmp in parked.items():      # specials the image did not have
        s, e = cur[name]
        remote.call("munmap", tmp, e - s)


def _same_file(a: str, b: str) -> bool:
    """The kernel refuses to change /proc/PID/exe while the old file is still mapped
    (EBUSY); when the task already runs the recorded executable nothing needs changing."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _set_mm(ctx, remote, task, mm) -> None:
    """prctl(PR_SET_MM, PR_SET_MM_MAP, &struct prctl_mm_map, sizeof) with exe_fd."""
    auxv = list(mm.auxv)
    auxv_addr = ctx.scratch + 1024
    remote.write(auxv_addr, struct.pack(f"<{len(auxv)}Q", *auxv))
    exe_fd = _open_checked(ctx, remote, task, mm.exe, O_RDONLY, mm.exe_dev, mm.exe_ino, 0, 0)
    same = _same_file(f"/proc/{task.host_pid}/exe", f"/proc/{task.host_pid}/fd/{exe_fd}")
    try:
        m = struct.pack("<11QQII", mm.start_code, mm.end_code, mm.start_data, mm.end_data,
                        mm.start_brk, mm.brk, mm.start_stack, mm.arg_start, mm.arg_end,
                        mm.env_start, mm.env_end, auxv_addr, len(auxv) * 8,
                        0xFFFFFFFF if same else exe_fd)
        remote.write(ctx.scratch + 512, m)
        remote.call("prctl", PR_SET_MM, PR_SET_MM_MAP, ctx.scratch + 512, len(m), 0)
    finally:
        remote.call("close", exe_fd)
