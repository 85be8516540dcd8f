"""ImageWriter hands written blocks to writeback while the dump goes on (sync_file_range),
so that commit's fsync has little left to do.  Checked on the real page cache with
cachestat(2): how many of the file's cached pages are still dirty."""

from __future__ import annotations

import ctypes
import errno
import os
import time

import pytest

from lxc_cr.errors import KernelError
from lxc_cr.image import kinds
from lxc_cr.image import writer as W
from lxc_cr.image.reader import ImageReader
from lxc_cr.image.writer import ImageWriter
from lxc_cr.kernel import sys as ksys

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
NR_CACHESTAT = 451          # x86_64, Linux 6.5+


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Stat(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in
                ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")]


def dirty_pages(fd: int) -> int:
    rng, st = _Range(0, 0), _Stat()
    if _libc.syscall(ctypes.c_long(NR_CACHESTAT), ctypes.c_long(fd), ctypes.byref(rng),
                     ctypes.byref(st), ctypes.c_long(0)) != 0:
        pytest.skip(f"cachestat: {os.strerror(ctypes.get_errno())}")
    return st.nr_dirty + st.nr_writeback


def wait_clean(fd: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while (left := dirty_pages(fd)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


BLOCK = os.urandom(4 << 20)
N = 2 * W._WRITEBACK_AT // len(BLOCK)


def test_start_writeback_is_the_real_syscall(tmp_path):
    r, w = os.pipe()
    try:
        with pytest.raises(KernelError) as ei:
            ksys.start_writeback(w, 0, 4096)
        assert ei.value.errno == errno.ESPIPE
    finally:
        os.close(r)
        os.close(w)


def test_blocks_go_to_disk_before_commit(tmp_path):
    path = tmp_path / "img"
    w = ImageWriter(path, source_name="wb")
    w.open()
    try:
        for _ in range(N):                       # two hints
            w.write_block(BLOCK)
        assert w._wb_from >= 2 * W._WRITEBACK_AT
        # nobody fsynced: only the hints can have cleaned the pages
        assert wait_clean(w.fileno()) < 64         # at most the last few pages of records
    finally:
        w.abort()


def test_without_hints_the_pages_stay_dirty(tmp_path, monkeypatch):
    """The control for the test above: the same writes with the hint turned off."""
    monkeypatch.setattr(W, "_WRITEBACK_AT", 1 << 40)
    w = ImageWriter(tmp_path / "img", source_name="wb")
    w.open()
    try:
        for _ in range(N):
            w.write_block(BLOCK)
        assert dirty_pages(w.fileno()) >= N * 1000  # 4 MiB = 1024 pages each, in memory
    finally:
        w.abort()


def test_encrypted_image_plain_bytes_get_no_hint(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ksys, "start_writeback", lambda *a: calls.append(a))
    w = ImageWriter(tmp_path / "img", source_name="wb", key=b"k" * 32)
    w.open()
    try:
        for _ in range(N):
            w.write_block(BLOCK)
    finally:
        w.abort()
    assert calls == []


def test_a_failing_hint_is_dropped_and_the_image_is_whole(tmp_path, monkeypatch):
    calls = []

    def fail(*a):
        calls.append(a)
        raise KernelError("sync_file_range", errno.EINVAL)
    monkeypatch.setattr(ksys, "start_writeback", fail)
    path = tmp_path / "img"
    with ImageWriter(path, source_name="wb") as w:
        refs = [w.write_block(BLOCK) for _ in range(N)]
        for i, ref in enumerate(refs):
            w.add(kinds.by_name("pages"), dict(pid=1, shmem_id=0, npages=len(BLOCK) // 4096,
                                               vaddr=0x400000 + i * len(BLOCK), block=ref))
    assert len(calls) == 1                         # tried once, then no more hints
    with ImageReader(path) as r:
        r.verify()
        assert all(r.read_block(ref) == BLOCK for ref in refs)
