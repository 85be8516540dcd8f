"""ImageWriter / ImageReader: records, blocks, commit, crash safety, refusal of bad images."""

import os
import stat
import zlib

import pytest

from lxc_cr.errors import ImageError
from lxc_cr.image import fields, format as F, kinds
from lxc_cr.image.reader import ImageReader, RawRecord
from lxc_cr.image.writer import ImageWriter

pytestmark = pytest.mark.unit


def sample_record(kind, seed=1):
    return fields.sample(fields.node(kind.struct), seed)


def write_sample(path, compress=None):
    """An image with one record of every kind, a few blocks and an unknown record."""
    pages = kinds.by_name("pages")
    with ImageWriter(path, source_kind="lxc", source_name="ct1", compress=compress,
                     xcr0=0x2e7, vdso_size=8192, vdso_hash=bytes(range(32))) as w:
        for i, kind in enumerate(kinds.all_kinds()):
            if kind is pages:
                continue
            w.add(kind, sample_record(kind, i))
        blocks = [
            w.write_block(b"\x11" * 4096),
            w.write_block([b"a" * 100, bytearray(b"b" * 5000), memoryview(b"c" * 7)]),
            w.write_block(os.urandom(3000)),
        ]
        data = os.urandom(8192)
        off = w.reserve_block(len(data))
        os.pwritev(w.fileno(), [data[:100], data[100:]], off)
        blocks.append(w.finish_block(off, len(data), zlib.crc32(data)))
        for i, ref in enumerate(blocks):
            w.add(pages, dict(pid=1, shmem_id=0, vaddr=0x400000 + i * 0x10000,
                              npages=(ref["length"] + 4095) // 4096, block=ref))
        w.add_raw(0x7FF0, b"future record")
    return blocks


@pytest.mark.parametrize("compress", [None, "zstd"])
def test_roundtrip_records_and_blocks(tmp_path, compress):
    p = tmp_path / "img"
    blocks = write_sample(p, compress)
    with ImageReader(p) as r:
        h = r.header
        assert (h.version, h.flags, h.source_kind, h.source_name) == \
            (F.CURRENT_VERSION, 0, "lxc", "ct1")
        assert (h.xcr0, h.vdso_size, h.vdso_hash) == (0x2E7, 8192, bytes(range(32)))
        assert h.kernel == os.uname().release and h.arch == os.uname().machine
        r.verify()
        got = list(r.records())
        names = [k.name if k else None for k, _ in got]
        expected = [k.name for k in kinds.all_kinds() if k.name != "pages"]
        assert names == expected + ["pages"] * 4 + [None]
        want = [sample_record(k, i) for i, k in enumerate(kinds.all_kinds())
                if k.name != "pages"]
        assert [obj for _, obj in got[:len(want)]] == want
        unknown = got[-1][1]
        assert isinstance(unknown, RawRecord) and unknown.tag == 0x7FF0
        assert unknown == b"future record"
        refs = [obj.block for _, obj in r.records(kinds.by_name("pages"))]
        assert [dict(ref, _io=None) for ref in refs] == [dict(b, _io=None) for b in blocks]
        assert [o.vaddr for _, o in r.records("pages")][:2] == [0x400000, 0x410000]
        for ref in refs:
            data = r.read_block(ref)
            assert len(data) == ref.length
            buf = bytearray(ref.length + 10)
            assert r.read_block_into(ref, buf) == ref.length
            assert bytes(buf[:ref.length]) == data
            assert ref.offset % F.BLOCK_ALIGN == 0
        assert r.read_block(refs[0]) == b"\x11" * 4096
        assert r.read_block(refs[1]) == b"a" * 100 + b"b" * 5000 + b"c" * 7
        if compress:
            assert F.codec_kind(refs[0].codec) == F.CODEC_ZSTD and refs[0].stored < 4096
            assert F.codec_kind(refs[2].codec) == F.CODEC_RAW   # random data: stored raw
        # write_block's checksums are CRC-32C (flagged), over the stored bytes
        import crc32c
        for ref in refs[:3]:
            assert ref.codec & F.CODEC_CRC32C
            stored = r.pread(ref.stored, ref.offset)
            assert ref.crc32 == crc32c.crc32c(stored) != zlib.crc32(stored)


def test_crc32c_block_checked(tmp_path):
    """A flagged block whose bytes changed is refused on read, like a CRC-32 one."""
    p = tmp_path / "img"
    with ImageWriter(str(p), source_kind="tree") as w:
        ref = w.write_block(b"\x5a" * 8192)
        w.add(kinds.by_name("pages"), dict(pid=1, shmem_id=0, vaddr=0x400000, npages=2,
                                           block=ref))
    assert ref["codec"] == F.CODEC_RAW | F.CODEC_CRC32C
    with open(p, "r+b") as f:
        f.seek(ref["offset"] + 100)
        f.write(b"\x00")
    with ImageReader(str(p)) as r:
        with pytest.raises(ImageError, match="checksum"):
            r.read_block(ref)
        with pytest.raises(ImageError, match="checksum"):
            r.verify()


def test_mode_0600_and_no_temp_left(tmp_path):
    old = os.umask(0)
    try:
        write_sample(tmp_path / "img")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "img").st_mode) == 0o600
    assert os.listdir(tmp_path) == ["img"]


def test_exception_leaves_nothing(tmp_path):
    p = tmp_path / "img"
    with pytest.raises(RuntimeError):
        with ImageWriter(p) as w:
            assert stat.S_IMODE(os.fstat(w.fileno()).st_mode) == 0o600
            w.add(kinds.by_name("uts"), dict(hostname="h", domainname="d"))
            w.write_block(b"x" * 10000)
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_exception_keeps_existing_file(tmp_path):
    p = tmp_path / "img"
    p.write_bytes(b"old contents")
    with pytest.raises(KeyError):
        with ImageWriter(p) as w:
            w.add(kinds.by_name("uts"), dict(hostname="h", domainname="d"))
            raise KeyError("x")
    assert p.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["img"]


def test_incomplete_image_refused(tmp_path):
    """Until commit the file has blocks but no record pack or footer."""
    p = tmp_path / "img"
    with ImageWriter(p) as w:
        w.add(kinds.by_name("uts"), dict(hostname="h", domainname="d"))
        w.write_block(b"\x11" * 8192)
        with pytest.raises(ImageError) as ei:
            ImageReader(w.tmp_path)
        assert "incomplete" in str(ei.value) and ei.value.offset is not None
    ImageReader(p).close()


def test_footer_flags_and_version_refused(tmp_path):
    """A footer with a flag bit no reader knows, a version that has no footer (1, 2), a
    pack that does not end at the footer, an implausible or wrong decompressed length or
    the wrong crc32 (each with the footer's own crc32 right) is refused; so is an intact
    image cut before its footer's start."""
    p = tmp_path / "img"
    write_sample(p)
    raw = p.read_bytes()
    foot = F.Footer.parse(raw[-F.FOOTER_SIZE:])
    body = raw[:-F.FOOTER_SIZE]
    fields_ = dict(foot.fields.value)
    stored = fields_["pack_stored"]
    for name, value, what in (("flags", 4, "unknown footer flags 0x4"),
                              ("version", 2, "unknown format version 2 in the footer"),
                              ("pack_offset", 0, "does not end at the footer"),
                              ("pack_length", stored * 65537, "implausible"),
                              ("pack_length", fields_["pack_length"] - 1,
                               "record pack holds .* bytes, the footer says"),
                              ("pack_crc32", fields_["pack_crc32"] ^ 1,
                               "record pack checksum mismatch")):
        f = dict(fields_)
        version = foot.version
        if name == "version":
            version = value
        else:
            f[name] = value
        p.write_bytes(body + F.Footer.build(dict(fields=dict(value=f), version=version)))
        with pytest.raises(ImageError, match=what):
            ImageReader(p)
    p.write_bytes(raw[-F.FOOTER_END_SIZE:])
    with pytest.raises(ImageError, match="truncated footer"):
        ImageReader(p)


def test_bad_writer_arguments(tmp_path):
    with pytest.raises(ImageError):
        ImageWriter(tmp_path / "x", source_kind="docker")
    with pytest.raises(ImageError, match="header fields do not fit"):
        ImageWriter(tmp_path / "x", source_name="n" * 70000)     # u16 length prefix
    with pytest.raises(ImageError, match="header fields do not fit"):
        ImageWriter(tmp_path / "x", kernel="k" * 300)            # u8 length prefix
    with pytest.raises(ImageError):
        ImageWriter(tmp_path / "x", compress="lz4")


def test_many_buffers_and_empty_block(tmp_path):
    p = tmp_path / "img"
    bufs = [bytes([i % 256]) * 17 for i in range(3000)]     # more than IOV_MAX
    with ImageWriter(p) as w:
        ref = w.write_block(bufs)
        empty = w.write_block(b"")
        w.add(kinds.by_name("pages"), dict(pid=1, shmem_id=0, vaddr=0, npages=13, block=ref))
        w.add(kinds.by_name("pages"), dict(pid=1, shmem_id=0, vaddr=0, npages=0, block=empty))
    with ImageReader(p) as r:
        r.verify()
        refs = [o.block for _, o in r.records("pages")]
        assert r.read_block(refs[0]) == b"".join(bufs)
        assert r.read_block(refs[1]) == b""


def test_corrupt_block_detected_by_verify(tmp_path):
    p = tmp_path / "img"
    blocks = write_sample(p)
    raw = bytearray(p.read_bytes())
    raw[blocks[2]["offset"] + 5] ^= 1
    p.write_bytes(raw)
    with ImageReader(p) as r:
        with pytest.raises(ImageError, match="block checksum") as ei:
            r.verify()
        assert ei.value.offset == blocks[2]["offset"]


def test_block_ref_outside_file(tmp_path):
    p = tmp_path / "img"
    write_sample(p)
    with ImageReader(p) as r:
        bad = dict(offset=1 << 40, length=1 << 40, stored=1 << 40, codec=0, crc32=0)
        with pytest.raises(ImageError, match="outside"):
            r.read_block(bad)
        with pytest.raises(ImageError, match="codec"):
            r.read_block(dict(bad, offset=4096, codec=7))
        with pytest.raises(ImageError, match="implausible"):
            r.read_block(dict(offset=4096, length=1 << 50, stored=10, codec=1, crc32=0))


def test_bad_record_value_is_a_typed_error(tmp_path):
    from lxc_cr.errors import OperationFailed
    with pytest.raises(OperationFailed, match="cannot encode a uts record") as ei:
        with ImageWriter(tmp_path / "img") as w:
            w.add(kinds.by_name("uts"), dict(hostname=5, domainname=""))
    assert ei.value.section == "uts"
    assert os.listdir(tmp_path) == []


def test_non_canonical_record_refused_by_verify(tmp_path):
    """A Flag byte of 2 parses as True but re-encodes as 1: verify refuses it, so every
    verified image recodes to identical bytes."""
    p = tmp_path / "img"
    ns = kinds.by_name("ns")
    payload = bytearray(ns.build(dict(kind="net", ino=5, own=True)))
    payload[-1] = 2
    with ImageWriter(p) as w:
        w.add_raw(ns.tag, bytes(payload))
    with ImageReader(p) as r:
        (k, obj), = r.records()
        assert obj.own is True
        with pytest.raises(ImageError, match="not canonically encoded"):
            r.verify()
        # the dump's own check of what it has just encoded decodes without re-encoding
        (k, obj), = r.verify(canonical=False)
        assert k is ns and obj.own is True


def test_kinds_that_cannot_hold_block_refs_are_skipped_rightly():
    """verify walks only the records whose declaration has a BlockRef somewhere; every
    other kind's records, whatever their values, hold none."""
    from lxc_cr.image.reader import iter_block_refs, may_hold_block_refs
    kinds.load_all()
    holding = {k.name for k in kinds.all_kinds() if may_hold_block_refs(k)}
    assert {"pages", "memfd", "ghost_file", "sysv_shm", "mount_data"} <= holding
    for k in kinds.all_kinds():
        refs = [r for i in range(8)
                for r in iter_block_refs(k.parse(k.build(fields.sample(fields.node(k.struct), i))))]
        assert bool(refs) == (k.name in holding), k.name


def test_frame_functions_are_the_record_frame_declaration():
    """unframe_record does by struct what format.RecordFrame declares (v1/v2 images)."""
    import random

    import construct as cs
    rnd = random.Random(3)
    for n in [0, 1, 5, 300, 70000]:
        tag, payload = rnd.randrange(1 << 16), rnd.randbytes(n)
        frame = F.RecordFrame.build(dict(body=dict(value=dict(tag=tag, payload=payload))))
        parsed = F.RecordFrame.parse(frame + b"more")
        assert F.unframe_record(frame + b"more") == (parsed.body.value.tag,
                                                     parsed.body.value.payload, len(frame))
        for cut in {0, 1, 5, 6, len(frame) - 1}:          # cut short: both a StreamError
            with pytest.raises(cs.StreamError):
                F.RecordFrame.parse(frame[:cut])
            with pytest.raises(cs.StreamError):
                F.unframe_record(frame[:cut])
        for i in range(len(frame)):                          # any flipped bit
            bad = bytearray(frame)
            bad[i] ^= 1 << rnd.randrange(8)
            try:
                want = F.RecordFrame.parse(bytes(bad))
            except cs.ConstructError as e:
                with pytest.raises(type(e)):
                    F.unframe_record(bytes(bad))
            else:       # a longer length field that still fits: parses in both
                assert F.unframe_record(bytes(bad))[:2] == (want.body.value.tag,
                                                            want.body.value.payload)
            if n > 300:
                break


def test_pack_functions_are_the_pack_declaration():
    """pack_record / pack_entries do by struct what format.PackRecord and RecordPack
    declare (v3 images): the same bytes, the same records, an error wherever the
    declaration cannot parse the rest of a pack."""
    import random

    import construct as cs
    rnd = random.Random(5)
    recs = [(rnd.randrange(1 << 16), rnd.randbytes(n)) for n in (0, 1, 5, 300, 70000, 2)]
    packed = b"".join(F.pack_record(t, p) for t, p in recs)
    assert packed == b"".join(F.PackRecord.build(dict(tag=t, payload=p)) for t, p in recs)
    head = F.HeaderFieldsV3.build(dict(created=1, kernel="k", arch="a", xcr0=0, vdso_size=0,
                                       vdso_hash=bytes(32), source_kind="tree",
                                       source_name="n"))
    pack = head + packed
    parsed = F.RecordPack.parse(pack)
    entries = F.pack_entries(pack, F.PackHead.parse(pack).end)
    assert [(r.tag, r.payload) for r in parsed.records] == recs
    assert [(t, pack[o + F.PACK_RECORD_OVERHEAD:o + n]) for t, o, n in entries] == recs
    assert entries[0][1] == len(head) and entries[-1][1] + entries[-1][2] == len(pack)
    for cut in (1, 5, 7, 9, len(packed) - 1):          # none at a record boundary
        with pytest.raises(ValueError, match="cut short|runs past"):
            F.pack_entries(packed[:cut], 0)
        assert len(F.RecordPack.parse(head + packed[:cut]).records) < len(recs)
    with pytest.raises(cs.ConstructError):
        F.pack_record(1 << 16, b"")
