"""Which pages of a mapping hold data: the PAGEMAP_SCAN ioctl, or /proc/PID/pagemap.

PAGEMAP_SCAN (Linux 6.7, fs/proc/task_mmu.c) walks the page tables in the kernel and returns
runs of pages whose categories match, so selecting the pages of a 64 GiB mapping with 1 %
touched costs one ioctl instead of 16 M pagemap entries::

    struct pm_scan_arg {            /* _IOWR('f', 16, struct pm_scan_arg), 96 bytes */
        __u64 size, flags, start, end, walk_end, vec, vec_len, max_pages;
        __u64 category_inverted, category_mask, category_anyof_mask, return_mask;
    };
    struct page_region { __u64 start, end, categories; };

A page matches when ``((categories ^ inverted) & mask) == mask`` and, if ``anyof`` is
set, ``(categories ^ inverted) & anyof != 0``.  Kernels without the ioctl (ENOTTY/EINVAL)
fall back to reading 8-byte pagemap entries and grouping them with array slicing.
"""

from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import os

PAGE = 4096

PAGE_IS_WPALLOWED, PAGE_IS_WRITTEN, PAGE_IS_FILE = 1 << 0, 1 << 1, 1 << 2
PAGE_IS_PRESENT, PAGE_IS_SWAPPED, PAGE_IS_PFNZERO = 1 << 3, 1 << 4, 1 << 5
PAGEMAP_SCAN = 0xC0606610          # _IOWR('f', 16, 96-byte struct pm_scan_arg)

PM_PRESENT, PM_SWAP, PM_FILE = 1 << 63, 1 << 62, 1 << 61
PM_PFN_MASK = (1 << 55) - 1

_VEC = 1024                        # regions per ioctl


class _ScanArg(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages",
        "category_inverted", "category_mask", "category_anyof_mask", "return_mask")]


class _Region(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64),
                ("categories", ctypes.c_uint64)]


_scan_ok: bool | None = None       # probed on first use


def data_runs(pagemap_fd: int, start: int, end: int, private_file: bool) -> tuple[list, int]:
    """[(first page index from ``start``, count)] of the pages to dump in [start, end), and
    the number of pages scanned.  Anonymous memory: present or swapped pages that are not
    the shared zero page.  Private file mappings (``private_file``): only the task's own
    copies (not file pages)."""
    global _scan_ok
    if _scan_ok is not False:
        try:
            runs = _scan(pagemap_fd, start, end, private_file)
            _scan_ok = True
            return runs, (end - start) // PAGE
        except OSError as e:
            if e.errno not in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP) or _scan_ok:
                raise
            _scan_ok = False
    return _entries_runs(pagemap_fd, start, end, private_file), (end - start) // PAGE


def _scan(fd: int, start: int, end: int, private_file: bool) -> list[tuple[int, int]]:
    vec = (_Region * _VEC)()
    arg = _ScanArg(size=ctypes.sizeof(_ScanArg), start=start, end=end,
                   vec=ctypes.addressof(vec), vec_len=_VEC,
                   category_inverted=PAGE_IS_PFNZERO | (PAGE_IS_FILE if private_file else 0),
                   category_mask=PAGE_IS_PFNZERO | (PAGE_IS_FILE if private_file else 0),
                   category_anyof_mask=PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                   return_mask=PAGE_IS_PRESENT | PAGE_IS_SWAPPED)
    runs: list[tuple[int, int]] = []
    while arg.start < end:
        n = fcntl.ioctl(fd, PAGEMAP_SCAN, arg)
        for r in vec[:n]:
            first, count = (r.start - start) // PAGE, (r.end - r.start) // PAGE
            if runs and runs[-1][0] + runs[-1][1] == first:
                runs[-1] = (runs[-1][0], runs[-1][1] + count)
            else:
                runs.append((first, count))
        if arg.walk_end <= arg.start or arg.walk_end >= end:
            break
        arg.start = arg.walk_end
    return runs


def _entries_runs(fd: int, start: int, end: int, private_file: bool) -> list[tuple[int, int]]:
    """The same selection from raw pagemap entries, 64 MiB of address space at a time."""
    runs: list[tuple[int, int]] = []
    step = 16384
    for base in range(start, end, step * PAGE):
        n = min(step, (end - base) // PAGE)
        a = array.array("Q")
        a.frombytes(os.pread(fd, n * 8, (base // PAGE) * 8))
        off = (base - start) // PAGE
        i = 0
        for first, count in _group(a, private_file):
            i = off + first
            if runs and runs[-1][0] + runs[-1][1] == i:
                runs[-1] = (runs[-1][0], runs[-1][1] + count)
            else:
                runs.append((i, count))
    return runs


def _group(a: array.array, private_file: bool):
    """Runs of wanted entries; the common all-empty chunk costs one comparison."""
    if not any(a):
        return
    start = None
    for i, e in enumerate(a):
        want = (e & (PM_PRESENT | PM_SWAP)) and not (private_file and e & PM_FILE)
        if want and start is None:
            start = i
        elif not want and start is not None:
            yield start, i - start
            start = None
    if start is not None:
        yield start, len(a) - start
