"""Records are placed when the writer flushes them, not when they are added: blocks with
a few records between them follow each other without a page of padding each."""

from __future__ import annotations

import os

from lxc_cr.image import format as F
from lxc_cr.image import kinds
from lxc_cr.image.reader import ImageReader
from lxc_cr.image.writer import ImageWriter

PAGES = kinds.by_name("pages")


def test_blocks_are_contiguous_and_records_follow(tmp_path):
    p = tmp_path / "img"
    data = [os.urandom(4096 * (i + 1)) for i in range(20)]
    with ImageWriter(p, source_name="layout") as w:
        refs = []
        for i, d in enumerate(data):
            ref = w.write_block(d)
            refs.append(ref)
            w.add(PAGES, dict(pid=i + 1, shmem_id=0, vaddr=0x400000, npages=len(d) // 4096,
                              block=ref))
    offs = [r["offset"] for r in refs]
    assert offs[0] == F.align_up(F.HEADER_SIZE)
    for a, b in zip(refs, refs[1:]):
        assert b["offset"] == a["offset"] + a["stored"]          # no padding page between
    with ImageReader(p) as r:
        r.verify()
        assert r.index[0][1] >= offs[-1] + refs[-1]["stored"]   # records after the blocks
        got = [obj for _kind, obj in r.records(PAGES)]
        assert [g.pid for g in got] == list(range(1, 21))
        assert [r.read_block(g.block) for g in got] == data
    blocks = sum(len(d) for d in data)
    assert os.path.getsize(p) < F.align_up(F.HEADER_SIZE) + blocks + 8192


def test_records_flush_in_order_between_large_runs(tmp_path, monkeypatch):
    """More records than one flush holds: several runs, offsets increasing in index order,
    each run after the blocks written before it."""
    from lxc_cr.image import writer as W
    monkeypatch.setattr(W, "_FLUSH_AT", 300)
    p = tmp_path / "img"
    with ImageWriter(p, source_name="layout") as w:
        for i in range(30):
            ref = w.write_block(b"\x01" * 4096)
            w.add(PAGES, dict(pid=i + 1, shmem_id=0, vaddr=0x400000, npages=1, block=ref))
    with ImageReader(p) as r:
        r.verify()
        offs = [e[1] for e in r.index]
        assert offs == sorted(offs) and len(offs) == 30
