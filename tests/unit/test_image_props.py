"""Property tests: every registered record kind round-trips through the writer and reader,
images recode to identical bytes (as CRIU's crit recode test), and the lossless JSON form of
inspect inverts exactly.

The hypothesis strategies are built straight from the construct declarations by
``strategy()`` below, independently of lxc_cr.image.fields, so the two check each other.
"""

import struct

import construct as cs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lxc_cr.image import fields, kinds
from lxc_cr.image.convert import recode, writer_for
from lxc_cr.image.reader import ImageReader, iter_block_refs
from lxc_cr.image.sample import write_demo_image
from lxc_cr.image.writer import ImageWriter
from lxc_cr.resources.records_common import BlockRef

pytestmark = pytest.mark.unit

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def _ints(sc):
    fmt = sc.fmtstr
    bits = 8 * struct.calcsize(fmt)
    if fmt[-1].islower():
        return st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    return st.integers(0, (1 << bits) - 1)


def _text(encoding, max_bytes=None):
    alphabet = st.characters(max_codepoint=0x7F if encoding == "ascii" else 0x10FFFF,
                             blacklist_categories=("Cs",))
    s = st.text(alphabet, max_size=40)
    if max_bytes is not None:    # PaddedString: NUL padded, so no NULs; fits the field
        s = st.text(st.characters(max_codepoint=0x7F if encoding == "ascii" else 0x10FFFF,
                                  blacklist_categories=("Cs",), blacklist_characters="\0"),
                    max_size=max_bytes).filter(lambda t: len(t.encode(encoding)) <= max_bytes)
    return s


def strategy(sc):
    """A hypothesis strategy of values that ``sc.build`` accepts, for the construct types
    the record declarations use."""
    if isinstance(sc, cs.Renamed):
        return strategy(sc.subcon)
    if sc is BlockRef:          # outside pages (which this test writes itself): the empty block
        return st.just(dict(offset=0, length=0, stored=0, codec=0, crc32=0))
    if isinstance(sc, cs.FormatField):
        return _ints(sc)
    if isinstance(sc, type(cs.VarInt)):
        return st.integers(0, 2 ** 64 - 1)
    if isinstance(sc, type(cs.Flag)):
        return st.booleans()
    if isinstance(sc, cs.Enum):
        names = sorted(sc.encmapping)
        known = set(sc.encmapping.values())
        return st.one_of(st.sampled_from(names),
                         strategy(sc.subcon).filter(lambda v: v not in known))
    if isinstance(sc, cs.StringEncoded):
        inner = sc.subcon
        if isinstance(inner, cs.FixedSized):                # PaddedString
            return _text(sc.encoding, inner.length)
        return _text(sc.encoding)                           # PascalString
    if isinstance(sc, cs.Prefixed):                         # Prefixed(..., GreedyBytes)
        return st.binary(max_size=64)
    if isinstance(sc, cs.Bytes):
        return st.binary(min_size=sc.length, max_size=sc.length)
    if isinstance(sc, cs.Array):
        return st.lists(strategy(sc.subcon), min_size=sc.count, max_size=sc.count)
    if isinstance(sc, cs.FocusedSeq):                       # PrefixedArray
        items = sc.subcons[1].subcon
        return st.lists(strategy(items.subcon), max_size=5)
    if isinstance(sc, cs.Struct):
        return st.fixed_dictionaries({s.name: strategy(s) for s in sc.subcons if s.name})
    raise TypeError(f"no strategy for {sc!r}")


ALL_KINDS = kinds.all_kinds()
KIND_IDS = [k.name for k in ALL_KINDS]


def test_every_kind_has_a_strategy():
    for kind in ALL_KINDS:
        strategy(kind.struct)
        fields.node(kind.struct)


@pytest.mark.parametrize("kind", ALL_KINDS, ids=KIND_IDS)
@SETTINGS
@given(data=st.data())
def test_struct_build_parse(kind, data):
    value = data.draw(strategy(kind.struct))
    raw = kind.build(value)
    parsed = kind.parse(raw)
    assert parsed == value
    assert kind.build(parsed) == raw
    # the lossless JSON form of inspect inverts exactly
    node = fields.node(kind.struct)
    j = fields.to_json(node, parsed)
    assert kind.build(fields.from_json(node, j)) == raw


@pytest.mark.parametrize("kind", ALL_KINDS, ids=KIND_IDS)
@SETTINGS
@given(data=st.data())
def test_kind_through_image(kind, data, tmp_path_factory):
    values = data.draw(st.lists(strategy(kind.struct), min_size=1, max_size=4))
    p = tmp_path_factory.mktemp("k") / "img"
    with ImageWriter(p) as w:
        for v in values:
            w.add(kind, v)
    with ImageReader(p) as r:
        if not any(True for v in values for _ in iter_block_refs(v)):
            r.verify()      # (random BlockRefs point nowhere: verify rightly refuses them)
        got = list(r.records())
        assert [k for k, _ in got] == [kind] * len(values)
        assert [o for _, o in got] == values
        assert [o for _, o in r.records(kind)] == values


def _records():
    return st.lists(st.sampled_from(ALL_KINDS).flatmap(
        lambda k: st.tuples(st.just(k), strategy(k.struct))), max_size=12)


@SETTINGS
@given(recs=_records(),
       blocks=st.lists(st.binary(max_size=9000), max_size=4),
       compress=st.sampled_from([None, "zstd"]))
def test_image_recode_identical(recs, blocks, compress, tmp_path_factory):
    """write -> read -> write again gives the same bytes; records and blocks survive."""
    d = tmp_path_factory.mktemp("recode")
    pages = kinds.by_name("pages")
    with ImageWriter(d / "a", compress=compress) as w:
        for k, v in recs:
            if k is pages:
                continue
            w.add(k, v)
        for i, b in enumerate(blocks):
            ref = w.write_block([b[:100], b[100:]])
            w.add(pages, dict(pid=i, shmem_id=0, vaddr=0, npages=1, block=ref))
    assert_recodes(d / "a", d / "b")
    with ImageReader(d / "a") as r:
        got = [(k, o) for k, o in r.records() if k is not pages]
        assert got == [(k, v) for k, v in recs if k is not pages]
        assert [r.read_block(o.block) for _, o in r.records(pages)] == blocks


def assert_recodes(src, dst):
    with ImageReader(src) as r:
        with writer_for(r, dst) as w:
            recode(r, w)
    assert dst.read_bytes() == src.read_bytes()


@pytest.mark.parametrize("compress", [None, "zstd"])
def test_demo_image_recodes(tmp_path, compress):
    write_demo_image(tmp_path / "demo", compress=compress)
    assert_recodes(tmp_path / "demo", tmp_path / "again")


def test_recode_reserved_block_after_record(tmp_path):
    """A block written after the record that refers to it still converts (not identical:
    the copy goes before its record)."""
    import os
    import zlib
    p = tmp_path / "a"
    pages = kinds.by_name("pages")
    with ImageWriter(p) as w:
        off = w.reserve_block(4096)
        data = os.urandom(4096)
        ref = w.finish_block(off, 4096, zlib.crc32(data))
        w.add(pages, dict(pid=1, shmem_id=0, vaddr=0, npages=1, block=ref))
        os.pwrite(w.fileno(), data, off)
    with ImageReader(p) as r, writer_for(r, tmp_path / "b") as w2:
        recode(r, w2)
    with ImageReader(tmp_path / "b") as r:
        r.verify()
        (_, o), = r.records()
        assert r.read_block(o.block) == data
