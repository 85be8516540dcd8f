"""kinds.hot_call: a record kind this process has spent COMPILE_AFTER interpreting is built
(and, in the dump's check of its own image, parsed) by construct's compiled code.  That
code must give the very bytes and values the declaration gives, for every kind; and an
image read from disk is never parsed by it, since a compiled parser trusts counts (an
edited PrefixedArray count of 2**60 allocates before anything is read)."""

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


def test_a_kind_is_compiled_once_hot(monkeypatch):
    k = kinds.by_name("sigpending")
    obj = dict(pid=7, tid=0, siginfo=[bytes(range(128))])
    monkeypatch.setattr(kinds, "COMPILE_AFTER", 3600.0)
    for _ in range(50):
        k.build(obj)
    assert kinds._HOT[("build", k.tag)].compiled is None       # cheap so far: interpreted
    monkeypatch.setattr(kinds, "COMPILE_AFTER", 0.0)
    k.build(obj)
    assert kinds._HOT[("build", k.tag)].compiled is not None
    assert k.build(obj) == k.struct.build(obj)


def test_a_declaration_that_cannot_compile_stays_interpreted(monkeypatch):
    monkeypatch.setattr(kinds, "COMPILE_AFTER", 0.0)
    odd = cs.Struct("a" / cs.Int8ul, "b" / cs.Computed(lambda this: this.a + 1))  # a lambda
    for _ in range(3):
        assert kinds.hot_call("odd", odd, "build", dict(a=1)) == b"\x01"
    assert kinds._HOT["odd"].tried and kinds._HOT["odd"].compiled is None


def test_images_from_disk_are_parsed_by_the_declaration(tmp_path, monkeypatch):
    """A hundred records of one kind, read back: plain reading and verify() never use
    compiled code; a count edited to 2**60 (its record's checksum made right again) is
    a one-line image error, not an allocation."""
    monkeypatch.setattr(kinds, "COMPILE_AFTER", 0.0)
    k = kinds.by_name("sigpending")
    p = tmp_path / "img"
    with ImageWriter(p) as w:
        for i in range(100):
            w.add(k, dict(pid=i + 1, tid=0, siginfo=[bytes(128)]))
        huge = struct.pack("<II", 1, 0) + b"\xff" * 8 + b"\x01" + bytes(256)  # varint 2**63-ish
        w.add_raw(k.tag, huge)
    with ImageReader(p) as r:
        with pytest.raises(ImageError, match="bad sigpending record"):
            r.verify()
        with pytest.raises(ImageError, match="bad sigpending record"):
            r.verify(canonical=False)
    assert not [key for key in kinds._HOT if key[0] == "parse"]


def test_the_dumps_own_check_parses_hot_kinds_compiled(tmp_path, monkeypatch):
    monkeypatch.setattr(kinds, "COMPILE_AFTER", 0.0)
    k = kinds.by_name("sigpending")
    p = tmp_path / "img"
    with ImageWriter(p) as w:
        for i in range(100):
            w.add(k, dict(pid=i + 1, tid=0, siginfo=[bytes([i]) * 128]))
    with ImageReader(p) as r:
        own = r.verify(blocks=False, canonical=False, own=True)
        assert kinds._HOT[("parse", k.tag)].compiled is not None
        assert own == r.verify()
