"""Where the writer puts things (format v3): data blocks from offset 0, one after another
without padding; then the record pack, compressed; then the footer.  The metadata of a
small container costs about as much as its records compress to (issue #11: image <=
anonymous memory + 2 %)."""

from __future__ import annotations

import os

from lxc_cr.image import format as F
from lxc_cr.image import kinds
from lxc_cr.image.reader import ImageReader
from lxc_cr.image.writer import ImageWriter

PAGES = kinds.by_name("pages")
SIGACTIONS = kinds.by_name("sigactions")


def test_blocks_from_offset_0_then_the_pack_and_footer(tmp_path):
    p = tmp_path / "img"
    data = [os.urandom(4096 * (i + 1)) for i in range(20)]
    with ImageWriter(p, source_name="layout") as w:
        refs = []
        for i, d in enumerate(data):
            ref = w.write_block(d)
            refs.append(ref)
            w.add(PAGES, dict(pid=i + 1, shmem_id=0, vaddr=0x400000, npages=len(d) // 4096,
                              block=ref))
        stats = w.stats
    assert refs[0]["offset"] == 0
    for a, b in zip(refs, refs[1:]):
        assert b["offset"] == a["offset"] + a["stored"]          # no padding page between
    blocks = sum(len(d) for d in data)
    with ImageReader(p) as r:
        r.verify()
        assert r.pack_offset == blocks                           # the pack follows them
        got = [obj for _kind, obj in r.records(PAGES)]
        assert [g.pid for g in got] == list(range(1, 21))        # in the order added
        assert [r.read_block(g.block) for g in got] == data
    assert os.path.getsize(p) == blocks + stats["pack_bytes"] + F.FOOTER_SIZE


def test_repetitive_records_compress(tmp_path):
    """Records like a process's 64 signal actions (mostly the same defaults) cost a small
    part of their encoded size in the file."""
    p = tmp_path / "img"
    acts = [dict(handler=0, flags=0, restorer=0, mask=0)] * 64
    with ImageWriter(p, source_name="many") as w:
        ref = w.write_block(b"\x07" * 4096)
        for pid in range(1, 101):
            w.add(SIGACTIONS, dict(pid=pid, actions=acts))
            w.add(PAGES, dict(pid=pid, shmem_id=0, vaddr=0x400000, npages=1, block=ref))
        stats = w.stats
    assert stats["record_bytes"] > 100 * 64 * 8
    assert stats["pack_bytes"] * 20 < stats["record_bytes"]
    assert os.path.getsize(p) == 4096 + stats["pack_bytes"] + F.FOOTER_SIZE
    with ImageReader(p) as r:
        r.verify()
        got = list(r.records())
        assert [k.name for k, _ in got] == ["sigactions", "pages"] * 100
        assert [o.pid for _, o in got] == [pid for pid in range(1, 101) for _ in (0, 1)]


def test_large_pack(tmp_path):
    """Records past 1 MiB (pipe and socket buffers, message queues are records) are packed
    at a faster level; they read back whole."""
    p = tmp_path / "img"
    payloads = [os.urandom(300_000) + bytes(500_000) for _ in range(3)]
    with ImageWriter(p, source_name="big") as w:
        for data in payloads:
            w.add_raw(0x7FF1, data)
        stats = w.stats
    assert stats["record_bytes"] > 2 << 20 and stats["pack_bytes"] < 1 << 20
    with ImageReader(p) as r:
        r.verify()
        assert [bytes(o) for _k, o in r.records()] == payloads
