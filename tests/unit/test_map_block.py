"""ImageReader.map_block: a raw block of a plain image mapped from the page cache (the
restore writes pages from it without a copy), checksum checked; None where the bytes must
be decoded first."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from lxc_cr.errors import ImageError
from lxc_cr.image import kinds
from lxc_cr.image.reader import ImageReader
from lxc_cr.image.writer import ImageWriter
from lxc_cr.resources import memory

PAGES = kinds.by_name("pages")


def write(path, data, **kw):
    with ImageWriter(path, source_name="m", **kw) as w:
        ref = w.write_block(data)
        w.add(PAGES, dict(pid=1, shmem_id=0, vaddr=0x400000, npages=len(data) // 4096,
                          block=ref))
    return ref


def test_raw_block_is_mapped_and_checked(tmp_path):
    data = os.urandom(3 * 4096)
    ref = write(tmp_path / "img", data)
    with ImageReader(tmp_path / "img") as r:
        with r.map_block(ref) as m:
            assert m.view.readonly and bytes(m.view) == data
        assert m._map is None                      # closed by the with block


def test_changed_block_is_refused(tmp_path):
    p = tmp_path / "img"
    ref = write(p, os.urandom(2 * 4096))
    with open(p, "r+b") as f:
        f.seek(ref["offset"] + 5000)
        f.write(b"\x00\x01")
    with ImageReader(p) as r:
        with pytest.raises(ImageError, match="block checksum mismatch"):
            r.map_block(ref)
        assert r.map_block(ref, check=False) is not None


def test_compressed_or_encrypted_blocks_are_not_mapped(tmp_path):
    ref = write(tmp_path / "z", b"\x07" * 8192, compress="zstd")
    with ImageReader(tmp_path / "z") as r:
        assert r.map_block(ref) is None
    key = os.urandom(32)
    ref = write(tmp_path / "e", os.urandom(8192), key=key)
    with ImageReader(tmp_path / "e", key=key) as r:
        assert r.map_block(ref) is None


def test_pages_record_must_match_its_block(tmp_path):
    """An image whose PAGES record claims more pages than its block holds is refused before
    anything is written into a task (the buffer's stale bytes would fill the rest)."""
    ref = write(tmp_path / "img", os.urandom(4096))
    with ImageReader(tmp_path / "img") as r:
        ctx = SimpleNamespace(reader=r)
        blk = SimpleNamespace(**ref)
        good = SimpleNamespace(pid=1, vaddr=0x400000, npages=1, block=blk)
        assert memory._page_bytes(ctx, good) == 4096
        for n in (0, 2, 1 << 40):
            bad = SimpleNamespace(pid=1, vaddr=0x400000, npages=n, block=blk)
            with pytest.raises(ImageError, match=f"{n} pages, but a block of 4096 bytes"):
                memory._page_bytes(ctx, bad)


def test_a_file_that_cannot_be_mapped_is_read_instead(tmp_path, monkeypatch):
    from lxc_cr.image import reader as R
    data = os.urandom(4096)
    ref = write(tmp_path / "img", data)

    def no_mmap(*a, **k):
        raise OSError(19, "No such device")          # ENODEV: mmap not supported
    monkeypatch.setattr(R.mmap, "mmap", no_mmap)
    with ImageReader(tmp_path / "img") as r:
        assert r.map_block(ref) is None
        buf = bytearray(4096)
        r.read_block_into(ref, buf)
        assert bytes(buf) == data
