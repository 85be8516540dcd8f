"""kinds.when_hot: a record kind used HOT times in one process is built (and, in the dump's
check of its own image, parsed) by construct's compiled code.  That code must give the
very bytes and values the declaration gives, for every kind; and an image read from disk
is never parsed by it, since a compiled parser trusts counts (an edited PrefixedArray
count of 2**60 allocates before anything is read)."""

from __future__ import annotations

import struct

import construct as cs
import pytest

from lxc_cr.errors import ImageError
from lxc_cr.image import fields, kinds
from lxc_cr.image.reader import ImageReader, _strict
from lxc_cr.image.writer import ImageWriter

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def fresh_hot_table():
    kinds._HOT.clear()
    yield
    kinds._HOT.clear()


def all_kinds():
    kinds.load_all()
    return kinds.all_kinds()


@pytest.mark.parametrize("kind", all_kinds(), ids=lambda k: k.name)
def test_compiled_builds_and_parses_as_the_declaration(kind):
    compiled = kind.struct.compile()
    strict = _strict(kind)
    strict_compiled = strict.compile()
    for i in range(12):
        obj = fields.sample(fields.node(kind.struct), i)
        payload = kind.struct.build(obj)
        assert compiled.build(obj) == payload
        assert strict_compiled.parse(payload) == strict.parse(payload)
    with pytest.raises(cs.ConstructError):          # strict: nothing may follow
        strict_compiled.parse(payload + b"\0")


def test_a_kind_is_compiled_once_hot():
    k = kinds.by_name("sigpending")
    obj = dict(pid=7, tid=0, siginfo=[bytes(range(128))])
    for _ in range(kinds.HOT - 1):
        k.build(obj)
    assert kinds._HOT[("build", k.tag)][2] is None
    k.build(obj)
    assert kinds._HOT[("build", k.tag)][2] is not None
    assert k.build(obj) == k.struct.build(obj)


def test_a_declaration_that_cannot_compile_stays_interpreted():
    odd = cs.Struct("a" / cs.Int8ul, "b" / cs.Computed(lambda this: this.a + 1))  # a lambda
    for _ in range(kinds.HOT + 2):
        assert kinds.when_hot("odd", odd) is odd
    assert odd.build(dict(a=1)) == b"\x01"


def test_images_from_disk_are_parsed_by_the_declaration(tmp_path):
    """Hundreds of records of one kind, read back: plain reading and verify() never use
    compiled code; a count edited to 2**60 (its record's checksum made right again) is
    a one-line image error, not an allocation."""
    k = kinds.by_name("sigpending")
    p = tmp_path / "img"
    with ImageWriter(p) as w:
        for i in range(3 * kinds.HOT):
            w.add(k, dict(pid=i + 1, tid=0, siginfo=[bytes(128)]))
        huge = struct.pack("<II", 1, 0) + b"\xff" * 8 + b"\x01" + bytes(256)  # varint 2**63-ish
        w.add_raw(k.tag, huge)
    with ImageReader(p) as r:
        with pytest.raises(ImageError, match="bad sigpending record"):
            r.verify()
        with pytest.raises(ImageError, match="bad sigpending record"):
            r.verify(canonical=False)
    assert not [key for key in kinds._HOT if key[0] == "parse"]


def test_the_dumps_own_check_parses_hot_kinds_compiled(tmp_path):
    k = kinds.by_name("sigpending")
    p = tmp_path / "img"
    with ImageWriter(p) as w:
        for i in range(3 * kinds.HOT):
            w.add(k, dict(pid=i + 1, tid=0, siginfo=[bytes([i]) * 128]))
    with ImageReader(p) as r:
        own = r.verify(blocks=False, canonical=False, own=True)
        assert kinds._HOT[("parse", k.tag)][2] is not None
        assert own == r.verify()
