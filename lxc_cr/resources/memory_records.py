"""Record declarations of the memory resource (see memory.py).

``/proc/PID/maps``: ``start-end perms offset major:minor inode path``;
``struct prctl_mm_map`` (start_code end_code start_data end_data start_brk brk start_stack
arg_start arg_end env_start env_end auxv auxv_size exe_fd).
"""

import construct as cs

from lxc_cr.image.kinds import record_kind
from lxc_cr.resources.records_common import BlockRef, Str, U64s

VmaKind = cs.Enum(cs.Int8ul, anon=0, file_private=1, file_shared=2, shmem=3,
                  heap=4, stack=5, vdso=6, vvar=7, vvar_vclock=8, sysv_shm=9)

MM = record_kind(0x0200, "mm", cs.Struct(
    "pid" / cs.Int32ul,
    "start_code" / cs.Int64ul, "end_code" / cs.Int64ul,
    "start_data" / cs.Int64ul, "end_data" / cs.Int64ul,
    "start_brk" / cs.Int64ul, "brk" / cs.Int64ul,
    "start_stack" / cs.Int64ul,
    "arg_start" / cs.Int64ul, "arg_end" / cs.Int64ul,
    "env_start" / cs.Int64ul, "env_end" / cs.Int64ul,
    "auxv" / U64s,
    "exe" / Str,
    "exe_dev" / cs.Int64ul, "exe_ino" / cs.Int64ul,
), doc="one per process: the mm fields restored with PR_SET_MM_MAP")

VMA = record_kind(0x0201, "vma", cs.Struct(
    "pid" / cs.Int32ul,
    "start" / cs.Int64ul,
    "end" / cs.Int64ul,
    "prot" / cs.Int8ul,          # PROT_READ|PROT_WRITE|PROT_EXEC
    "shared" / cs.Flag,          # 's' in maps
    "kind" / VmaKind,
    "pgoff" / cs.Int64ul,        # file offset in bytes
    "dev" / cs.Int64ul,          # st_dev of the backing file (makedev)
    "ino" / cs.Int64ul,
    "size" / cs.Int64ul,         # file size at dump time (0 for anon)
    "mtime_ns" / cs.Int64ul,
    "shmem_id" / cs.Int32ul,     # for kind shmem: the shmem object, else 0
    "madv" / cs.Int32ul,         # VmFlags bits worth restoring (see memory.py)
    "path" / Str,
), doc="one per mapping; [vsyscall] is never recorded")

PAGES = record_kind(0x0202, "pages", cs.Struct(
    "pid" / cs.Int32ul,          # 0 for a shmem object's pages
    "shmem_id" / cs.Int32ul,     # shmem object, else 0
    "vaddr" / cs.Int64ul,        # first page (or byte offset within the shmem object)
    "npages" / cs.Int64ul,
    "block" / BlockRef,
), doc="a run of adjacent dumped pages and the data block that holds them")

SHMEM = record_kind(0x0203, "shmem", cs.Struct(
    "shmem_id" / cs.Int32ul,
    "size" / cs.Int64ul,
    "ino" / cs.Int64ul,
), doc="a shared anonymous memory object, dumped once for all its sharers")
