"""Format versions: the current reader loads v1 and v2 images (written here by test-only
writers that use plain ``struct``, not the package's declarations), ``convert`` rewrites
them as the current version with identical records and blocks, newer versions are
refused."""

import random
import struct
import zlib
from argparse import Namespace

import pytest

from lxc_cr.errors import ImageError
from lxc_cr.image import convert, format as F, kinds
from lxc_cr.image.reader import ImageReader, RawRecord

pytestmark = pytest.mark.unit

MAGIC, END = b"LXCCRIMG", b"LXCCREND"


def _pstr(s: str, width: str) -> bytes:
    b = s.encode()
    return struct.pack("<" + width, len(b)) + b


class V1Writer:
    """Writes the v1 layout of docs/image-format.md by hand (test only).

    v1 differs from v2: the header has no xcr0/vdso_size/vdso_hash; index entries are
    (tag u16, offset u64) without the record length.
    """

    def __init__(self, created=1_600_000_000_000_000_000, kernel="5.10.0-old",
                 arch="x86_64", source_kind=1, source_name="oldct"):
        self.hdr = (created, kernel, arch, source_kind, source_name)
        self.buf = bytearray(512)
        self.index = []

    def record(self, tag: int, payload: bytes) -> None:
        body = struct.pack("<HI", tag, len(payload)) + payload
        self.index.append((tag, len(self.buf)))
        self.buf += body + struct.pack("<I", zlib.crc32(body))

    def block(self, data: bytes) -> dict:
        off = (len(self.buf) + 4095) // 4096 * 4096
        self.buf += bytes(off - len(self.buf)) + data
        return dict(offset=off, length=len(data), stored=len(data), codec=0,
                    crc32=zlib.crc32(data))

    def finish(self, flags=0, version=1) -> bytes:
        ioff = len(self.buf)
        entries = struct.pack("<I", len(self.index)) + b"".join(
            struct.pack("<HQ", t, o) for t, o in self.index)
        index = entries + struct.pack("<I", zlib.crc32(entries))
        tr = struct.pack("<QQ", ioff, len(index))
        trailer = tr + struct.pack("<I", zlib.crc32(tr)) + END
        created, kernel, arch, skind, sname = self.hdr
        h = (MAGIC + struct.pack("<HIQ", version, flags, created) + _pstr(kernel, "B") +
             _pstr(arch, "B") + struct.pack("<B", skind) + _pstr(sname, "H") +
             struct.pack("<Q", ioff))
        h = h.ljust(508, b"\0")
        out = bytearray(self.buf)
        out[:512] = h + struct.pack("<I", zlib.crc32(h))
        return bytes(out + index + trailer)


class V2Writer(V1Writer):
    """The v2 layout by hand: the v1 one, with xcr0, vdso_size and vdso_hash in the header
    (after arch) and the frame length in each index entry (tag u16, offset u64, length
    u32)."""

    xcr0, vdso_size, vdso_hash = 0x2E7, 8192, bytes(range(32))

    def record(self, tag: int, payload: bytes) -> None:
        super().record(tag, payload)
        self.index[-1] += (len(payload) + 10,)

    def finish(self, flags=0, version=2) -> bytes:
        ioff = len(self.buf)
        entries = struct.pack("<I", len(self.index)) + b"".join(
            struct.pack("<HQI", t, o, n) for t, o, n in self.index)
        index = entries + struct.pack("<I", zlib.crc32(entries))
        tr = struct.pack("<QQ", ioff, len(index))
        trailer = tr + struct.pack("<I", zlib.crc32(tr)) + END
        created, kernel, arch, skind, sname = self.hdr
        h = (MAGIC + struct.pack("<HIQ", version, flags, created) + _pstr(kernel, "B") +
             _pstr(arch, "B") + struct.pack("<QQ", self.xcr0, self.vdso_size) +
             self.vdso_hash + struct.pack("<B", skind) + _pstr(sname, "H") +
             struct.pack("<Q", ioff))
        h = h.ljust(508, b"\0")
        out = bytearray(self.buf)
        out[:512] = h + struct.pack("<I", zlib.crc32(h))
        return bytes(out + index + trailer)


def v1_image(path, writer=V1Writer):
    """A v1 image (or v2, with V2Writer): every kind's sample record, two pages records
    with blocks, one unknown."""
    from lxc_cr.image import fields
    w = writer()
    recs = []
    for i, kind in enumerate(kinds.all_kinds()):
        if kind.name == "pages":
            continue
        v = fields.sample(fields.node(kind.struct), i)
        w.record(kind.tag, kind.build(v))
        recs.append((kind, v))
    pages = kinds.by_name("pages")
    blocks = [b"\x42" * 5000, bytes(range(256)) * 16]
    for i, data in enumerate(blocks):
        v = dict(pid=1, shmem_id=0, vaddr=0x1000 * (i + 1), npages=2, block=w.block(data))
        w.record(pages.tag, pages.build(v))
        recs.append((pages, v))
    w.record(0x7FF0, b"opaque")
    recs.append((None, b"opaque"))
    path.write_bytes(w.finish())
    return recs, blocks


WRITERS = {1: V1Writer, 2: V2Writer}


@pytest.mark.parametrize("version", [1, 2])
def test_old_image_loads(tmp_path, version):
    p = tmp_path / f"v{version}.img"
    recs, blocks = v1_image(p, WRITERS[version])
    with ImageReader(p) as r:
        h = r.header
        assert r.format.version == version and h.version == version
        assert (h.created, h.kernel, h.arch, h.source_kind, h.source_name) == \
            (1_600_000_000_000_000_000, "5.10.0-old", "x86_64", "lxc", "oldct")
        assert (h.xcr0, h.vdso_size, h.vdso_hash) == \
            ((0, 0, b"\0" * 32) if version == 1 else                      # migrated
             (V2Writer.xcr0, V2Writer.vdso_size, V2Writer.vdso_hash))
        assert "index_offset" not in h                                    # v2 -> v3
        r.verify()
        got = list(r.records())
        assert [k for k, _ in got] == [k for k, _ in recs]
        assert [o for _, o in got] == [v for _, v in recs]
        assert isinstance(got[-1][1], RawRecord) and got[-1][1].tag == 0x7FF0
        refs = [o.block for _, o in r.records("pages")]
        assert [r.read_block(ref) for ref in refs] == blocks


@pytest.mark.parametrize("version", [1, 2])
def test_convert_old_to_current(tmp_path, capsys, version):
    src, dst = tmp_path / f"v{version}.img", tmp_path / "current.img"
    recs, blocks = v1_image(src, WRITERS[version])
    assert convert.run(Namespace(src=str(src), dst=str(dst), verbose=True)) == 0
    assert f"format v{version}" in capsys.readouterr().out
    with ImageReader(src) as old, ImageReader(dst) as new:
        assert new.format.version == F.CURRENT_VERSION == new.header.version
        for key in ("created", "kernel", "arch", "source_kind", "source_name", "xcr0",
                    "vdso_size", "vdso_hash"):
            assert new.header[key] == old.header[key]
        new.verify()
        a, b = list(old.records()), list(new.records())
        assert [k for k, _ in a] == [k for k, _ in b]
        for (k, x), (_, y) in zip(a, b):
            if k is None:
                assert x == y and x.tag == y.tag
            elif k.name == "pages":
                assert old.read_block(x.block) == new.read_block(y.block)
                assert {f: x[f] for f in ("pid", "vaddr", "npages")} == \
                    {f: y[f] for f in ("pid", "vaddr", "npages")}
            else:
                assert x == y
    # converting the current version again is the identity
    again = tmp_path / "again.img"
    convert.run(Namespace(src=str(dst), dst=str(again), verbose=False))
    assert again.read_bytes() == dst.read_bytes()


def test_newer_version_refused(tmp_path):
    p = tmp_path / "v3.img"
    w = V1Writer()
    p.write_bytes(w.finish(version=F.CURRENT_VERSION + 1))
    with pytest.raises(ImageError) as ei:
        ImageReader(p)
    assert ei.value.what == f"format version {F.CURRENT_VERSION + 1} is newer than " \
                            f"supported {F.CURRENT_VERSION}"
    assert ei.value.offset == 8


def test_version_zero_refused(tmp_path):
    p = tmp_path / "v0.img"
    p.write_bytes(V1Writer().finish(version=0))
    with pytest.raises(ImageError, match="unknown format version 0"):
        ImageReader(p)


@pytest.mark.parametrize("version", [1, 2])
def test_old_incomplete_refused(tmp_path, version):
    """v1 and v2 writers set the INCOMPLETE header flag until their final header write."""
    p = tmp_path / f"v{version}.img"
    p.write_bytes(WRITERS[version]().finish(flags=1))
    with pytest.raises(ImageError, match="incomplete"):
        ImageReader(p)


@pytest.mark.parametrize("version", [1, 2])
def test_old_mutations_refused(tmp_path, version):
    """The v1 path (index without lengths) and the v2 one are fuzzed too."""
    base_path = tmp_path / "base"
    v1_image(base_path, WRITERS[version])
    base = base_path.read_bytes()
    rng = random.Random(7)
    p = tmp_path / "m"
    for i in range(1500):
        b = bytearray(base)
        if i % 3 == 0:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif i % 3 == 1:
            pos = rng.randrange(len(b) - 40, len(b))       # around the index and trailer
            b[pos] ^= 0xFF
        else:
            at = rng.randrange(len(b))
            del b[at:at + rng.randint(1, 30)]
        if bytes(b) == base:
            continue
        p.write_bytes(b)
        with pytest.raises(ImageError):
            with ImageReader(p) as r:
                r.verify()
                for k, o in r.records():
                    if k is not None and k.name == "pages":
                        r.read_block(o.block)
